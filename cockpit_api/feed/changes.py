"""The change feed: every change of a host, a VM or a migration job, as numbered events.

One :class:`Feed` per backend instance (never a module global): :func:`feed_of`
attaches it, once, as the observer of the backend's
:class:`~cockpit_api.backends.inventory.Inventory` and
:class:`~cockpit_api.backends.inventory.JobTable`,
the one place both backends' changes go through. Each event carries the
resource's JSON exactly as its GET answers it, so a client applies it without a
second request.

Ids are ``<epoch>-<seq>``: ``epoch`` is random per Feed (per process, per
replica), ``seq`` counts up from 1 without gaps. An id of another epoch (another
replica, a restarted server), one this feed never issued, or one older than the
bounded history (:data:`HISTORY` events) cannot be continued exactly: the
subscriber gets one ``reset`` event and must re-list (Kubernetes' 410 Gone).

Migration progress is not an inventory change: while somebody listens, a small
ticker (:meth:`Feed.tick`) publishes the running jobs' progress at most every
:data:`PROGRESS_SECONDS`, and lets the simulator apply what its virtual clock
made due (nobody else would call it). Tests call :meth:`Feed.tick` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from cockpit_api.auth.service import Throttled
from cockpit_api.backends.base import Host, Migration, Vm, simulator_of
from cockpit_api.backends.inventory import Inventory, JobTable
from cockpit_api.shapes import host_json, migration_json, vm_json

if TYPE_CHECKING:
    from cockpit_api.config import Settings
    from cockpit_api.ops.prometheus import Metrics

log = logging.getLogger("cockpit_api.feed.changes")

# 10,000 events: about 30 s of one VM change every 10 ms (a VM change is one `vm` event
# and one `host` event per host it touched), ~5 MB. A client away longer re-lists.
HISTORY = 10_000
PROGRESS_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0
# Under a burst, subscribers are woken at most every (their number x the cost of
# waking one), within these bounds: waking 1,000 subscribers for every change of a
# burst would cost more than a core (bench/feed.py: ~13-25 us per subscriber).
FLUSH_SECONDS = 0.02
_WAKE_COST = 20e-6
_MIN_FLUSH = 0.001
TICKET_SECONDS = 30
EVENT_TYPES = ("host", "vm", "vm_removed", "migration", "reset")
_MAX_TICKETS = 10_000
# Outstanding tickets per user: a dashboard reconnecting every 2 s holds ~15. Past it the
# user's own oldest goes, never another user's.
TICKETS_PER_USER = 100
_MAX_JOB_STATES = 10_000
STREAM_RETRY_AFTER = 5  # seconds a refused stream is told to wait


def _shapes() -> tuple[Callable[[Host], Any], Callable[[Vm], Any], Callable[[Migration], Any]]:
    # The shapes GET answers with (cockpit_api/shapes.py, below the handlers and the feed).
    return host_json, vm_json, migration_json


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: str
    type: str
    data: bytes  # JSON, serialised once for every subscriber
    vm_id: str | None = None
    host_ids: tuple[str, ...] = ()

    def frame(self) -> bytes:
        """The event as Server-Sent Events lines."""
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (self.id.encode(), self.type.encode(),
                                                      self.data)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "data": orjson.Fragment(self.data)}


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a subscriber wants; ``reset`` always passes."""

    types: frozenset[str] | None = None
    vm_id: str | None = None
    host_id: str | None = None

    def matches(self, e: Event) -> bool:
        if e.type == "reset":
            return True
        if self.types is not None and e.type not in self.types:
            return False
        if self.vm_id is not None and e.vm_id != self.vm_id:
            return False
        return self.host_id is None or self.host_id in e.host_ids


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a subscriber continues: after ``seq``, or (``reset``) from now, re-listing."""

    seq: int
    reset: str | None = None  # why the position could not be continued


class TooManyStreams(Throttled):
    """429: a stream, long poll or ticket refused by a cap (``Retry-After`` says when to retry).

    The answer closes its connection: what a cap protects is the server's file descriptors.
    """

    close_connection = True

    def __init__(self, detail: str, retry_after: int = STREAM_RETRY_AFTER,
                 code: str = "too_many_streams") -> None:
        super().__init__(detail, retry_after)
        self.code = code


class Tickets:
    """Short-lived single-use query tokens for browser ``EventSource`` (it sends no headers).

    A ticket stands for the bearer token it was issued against: a stream opened
    with it ends when that token expires or its session logs out. Held in
    memory: a ticket is redeemed on the replica that issued it.

    Bounded per user (:data:`TICKETS_PER_USER`: past it the user's own oldest is
    dropped) and in all (:data:`_MAX_TICKETS`: past it, 429 until the oldest
    expire), so that nobody's tickets are dropped because of somebody else.
    """

    def __init__(self, ttl: int = TICKET_SECONDS, per_user: int = TICKETS_PER_USER,
                 total: int = _MAX_TICKETS) -> None:
        self.ttl = ttl
        self.per_user = per_user
        self.total = total
        # Issue order is expiry order (one ttl): the oldest first.
        self._tickets: OrderedDict[str, tuple[str, float, str]] = OrderedDict()
        self._by_owner: dict[str, OrderedDict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._tickets)

    def _drop(self, ticket: str) -> tuple[str, float, str] | None:
        entry = self._tickets.pop(ticket, None)
        if entry is not None:
            mine = self._by_owner.get(entry[2])
            if mine is not None:
                mine.pop(ticket, None)
                if not mine:
                    del self._by_owner[entry[2]]
        return entry

    def issue(self, token: str, now: float, owner: str = "") -> str:
        """A new ticket for ``token``, held by ``owner`` (the token's user)."""
        while self._tickets and next(iter(self._tickets.values()))[1] <= now:
            self._drop(next(iter(self._tickets)))
        mine = self._by_owner.get(owner)
        while mine and len(mine) >= self.per_user:
            self._drop(next(iter(mine)))
            mine = self._by_owner.get(owner)
        if len(self._tickets) >= self.total:
            oldest = next(iter(self._tickets.values()))[1]
            raise TooManyStreams("too many event-feed tickets are outstanding; retry shortly",
                                 max(1, math.ceil(oldest - now)), "too_many_tickets")
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (token, now + self.ttl, owner)
        self._by_owner.setdefault(owner, OrderedDict())[ticket] = None
        return ticket

    def redeem(self, ticket: str, now: float) -> str | None:
        """The bearer token behind a ticket, once; None if unknown, used or expired."""
        entry = self._drop(ticket)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Caps on event streams and long polls (README "Limits")."""

    per_user: int = 32  # per user of one world (a sandbox's users are its own)
    total: int = 1000  # in all worlds of the server
    fd_headroom: int = 128  # file descriptors kept free for everything else

    @classmethod
    def of(cls, settings: Settings) -> StreamLimits:
        return cls(settings.max_streams_per_user, settings.max_streams,
                   settings.stream_fd_headroom)


def _fd_use() -> tuple[int, int] | None:
    """(file descriptors open, the soft limit), or None where either is unknown."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        # Linux 6.2+ gives the number of open descriptors as the directory's size (~1 us);
        # listing it costs ~0.8 ms at 1,000 descriptors (less the listing's own).
        n = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return None
    return n, soft


class StreamSlot:
    """One admitted stream; :meth:`release` (idempotent) gives its place back."""

    __slots__ = ("_gate", "_key")

    def __init__(self, gate: StreamGate, key: tuple[str | None, str]) -> None:
        self._gate: StreamGate | None = gate
        self._key = key

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release(self._key)

    def __del__(self) -> None:  # a response that was never run still gives its place back
        self.release()


class StreamGate:
    """Admits event streams and long polls, for every world of one server.

    Each holds a connection (a file descriptor) and a subscriber for as long as it
    lasts: without caps one viewer held 1,080 streams under a limit of 1,100 file
    descriptors and nobody else could connect. A new one is refused (429
    ``too_many_streams`` with ``Retry-After``) past ``per_user`` for its user,
    past ``total`` in all, or when fewer than ``fd_headroom`` descriptors below the
    process's ``RLIMIT_NOFILE`` are left for other clients. The gauge
    ``cockpit_feed_subscribers`` counts what is admitted.
    """

    def __init__(self, limits: StreamLimits | None = None, metrics: Metrics | None = None,
                 fd_use: Callable[[], tuple[int, int] | None] = _fd_use) -> None:
        self.limits = limits or StreamLimits()
        self.metrics = metrics
        self._fd_use = fd_use
        self._per_user: dict[tuple[str | None, str], int] = {}
        self.total = 0

    def admit(self, world: str | None, user: str) -> StreamSlot:
        """A slot for one more stream of ``user`` in ``world`` (None: the default world)."""
        lim = self.limits
        key = (world, user)
        if self._per_user.get(key, 0) >= lim.per_user:
            raise TooManyStreams(f"at most {lim.per_user} event streams per user are open at "
                                 "once: close one")
        if self.total >= lim.total:
            raise TooManyStreams(f"the server holds its cap of {lim.total} event streams")
        use = self._fd_use()
        if use is not None and use[0] + lim.fd_headroom >= use[1]:
            log.warning("event stream refused: %d of %d file descriptors in use", *use)
            raise TooManyStreams("the server keeps its remaining connections for other "
                                 "clients")
        self._per_user[key] = self._per_user.get(key, 0) + 1
        self.total += 1
        if self.metrics is not None:
            self.metrics.feed_subscribers.set(self.total)
        return StreamSlot(self, key)

    def _release(self, key: tuple[str | None, str]) -> None:
        n = self._per_user.get(key, 0) - 1
        if n > 0:
            self._per_user[key] = n
        else:
            self._per_user.pop(key, None)
        self.total -= 1
        if self.metrics is not None:
            self.metrics.feed_subscribers.set(self.total)


class Feed:
    """The numbered, bounded history of changes of one backend, and its subscribers."""

    def __init__(self, backend: Any = None, *, history: int = HISTORY,
                 progress_seconds: float = PROGRESS_SECONDS,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 epoch: str | None = None) -> None:
        self.backend = backend
        self.epoch = epoch or secrets.token_hex(4)
        self.progress_seconds = progress_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.session_check_seconds = 2.0
        self.tickets = Tickets()
        self._events: deque[Event] = deque(maxlen=history)
        self._seq = 0
        self._lock = threading.Lock()
        self._jobs_seen: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # Each waiting subscriber's own future (a shared one would be cancelled for all
        # when one waiter is); resolved together on the next event or pulse.
        self._waiters: list[asyncio.Future[None]] = []
        self._chunks: dict[tuple[int, int, Filter], bytes] = {}
        self.pulse_seconds = 1.0
        self.flush_seconds = FLUSH_SECONDS
        self._flush: asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self._subscribers = 0
        self._ticker: asyncio.Task[None] | None = None
        self._shapes = _shapes()
        # Set when the world is gone (a sandbox deleted or expired): every stream and long
        # poll on it ends at its next wake-up, which close() brings at once.
        self.closed = False
        # The server is stopping (close_streams): streams end with a last event, polls answer.
        self.closing = False

    # ------------------------------------------------------------------ positions

    @property
    def seq(self) -> int:
        return self._seq

    def position(self) -> str:
        """The id of the newest event (``<epoch>-0`` before the first)."""
        return f"{self.epoch}-{self._seq}"

    def resume(self, last_id: str | None) -> Resume:
        """Where to continue after ``last_id`` (None: from now)."""
        if last_id is None:
            return Resume(self._seq)
        epoch, _, num = last_id.rpartition("-")
        if epoch != self.epoch:
            return Resume(self._seq, "other_stream")
        try:
            seq = int(num)
        except ValueError:
            return Resume(self._seq, "unknown_id")
        if seq < 0 or seq > self._seq:
            return Resume(self._seq, "unknown_id")
        if seq < self._first_seq() - 1:
            return Resume(self._seq, "too_old")
        return Resume(seq)

    def _first_seq(self) -> int:
        return self._events[0].seq if self._events else self._seq + 1

    def after(self, seq: int, limit: int | None = None) -> list[Event] | None:
        """Events after ``seq``, oldest first (at most ``limit``); None if they were dropped."""
        if seq >= self._seq:
            return []
        if seq < self._first_seq() - 1:
            return None
        out: list[Event] = []
        for e in reversed(self._events):  # the wanted ones are at the end: O(new events)
            if e.seq <= seq:
                break
            out.append(e)
        out.reverse()
        return out if limit is None else out[:limit]

    def reset_event(self, reason: str) -> Event:
        """The one ``reset`` a subscriber gets when its position cannot be continued."""
        data = orjson.dumps({"reason": reason, "position": self.position()})
        return Event(self._seq, self.position(), "reset", data)

    # ------------------------------------------------------------------ publishing

    def _publish(self, type_: str, data: Any, vm_id: str | None = None,
                 host_ids: Iterable[str] = ()) -> None:
        body = orjson.dumps(data)
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._events.append(Event(seq, f"{self.epoch}-{seq}", type_, body, vm_id,
                                      tuple(dict.fromkeys(host_ids))))
        self._notify()

    def _notify(self) -> None:
        """Wake the subscribers: at once, or at most once per ``flush_seconds`` under load
        (less with fewer subscribers).

        Each wake-up costs every subscriber a turn, whatever it carries: a burst of
        changes is delivered in batches instead (a lone change goes out at once).
        """
        loop = self._loop
        if loop is None or not self._waiters:
            return
        if threading.get_ident() != self._loop_thread:
            # A change made off the loop (a test driving the simulator's clock).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notify)
            return
        if self._flush is not None:
            return  # already due
        pace = min(self.flush_seconds, max(_MIN_FLUSH, self._subscribers * _WAKE_COST))
        wait = self._last_flush + pace - loop.time()
        if wait <= 0:
            self._flush_now()
        else:
            self._flush = loop.call_later(wait, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        if self._loop is not None:
            self._last_flush = self._loop.time()
        self.pulse()

    def close(self) -> None:
        """The world is gone: end every stream and long poll on it now."""
        self.closed = True
        self.tickets = Tickets()
        if self._loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.close)
            return
        if self._ticker is not None:
            self._ticker.cancel()  # it holds the world; nobody will listen to it again
        self.pulse()

    def pulse(self) -> None:
        """Wake every waiting subscriber (new events, or time to look at its clock)."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # InventoryObserver / JobObserver: called from inside the backend's update; record only.

    def host_changed(self, host: Host) -> None:
        self._publish("host", self._shapes[0](host), None, (host.id,))

    def vm_changed(self, old: Vm | None, vm: Vm) -> None:
        if old is not None and old.migration_id and old.migration_id != vm.migration_id:
            # The job let go of the VM: it ended. Its final state goes first.
            jobs = self._jobs()
            if jobs is not None:
                jobs.touch(old.migration_id)
        hosts = (old.host_id, vm.host_id) if old is not None else (vm.host_id,)
        self._publish("vm", self._shapes[1](vm), vm.id, hosts)

    def vm_removed(self, vm: Vm) -> None:
        self._publish("vm_removed", {"id": vm.id}, vm.id, (vm.host_id,))

    def job_changed(self, job: Migration) -> None:
        p = job.progress
        state = (job.status, p.data_total_bytes, p.data_processed_bytes,
                 p.data_remaining_bytes, job.error)
        if self._jobs_seen.get(job.id) == state:
            return
        self._jobs_seen[job.id] = state
        self._jobs_seen.move_to_end(job.id)
        while len(self._jobs_seen) > _MAX_JOB_STATES:
            self._jobs_seen.popitem(last=False)
        self._publish("migration", self._shapes[2](job), job.vm_id,
                      (job.source_host_id, job.destination_host_id))

    def state_replaced(self) -> None:
        """The simulator was reset: everything a client holds is stale."""
        self._jobs_seen.clear()
        self._publish("reset", {"reason": "state_replaced"})

    # ------------------------------------------------------------------ the ticker

    def _jobs(self) -> JobTable[Any] | None:
        return _tables(self.backend)[1] if self.backend is not None else None

    def tick(self) -> None:
        """Apply the simulator's due events, publish running jobs' progress (if changed)."""
        sim = simulator_of(self.backend)
        if sim is not None:
            sim.settle()
        jobs = self._jobs()
        if jobs is not None:
            for job in jobs.active():
                self.job_changed(job)

    def _next_tick(self) -> float:
        """Real seconds until the ticker should look again."""
        delay = self.progress_seconds
        sim = simulator_of(self.backend)
        if sim is not None and sim.clock.speed > 0:
            clock = sim.clock
            due = sim.next_due()
            if due is not None:
                delay = min(delay, max(0.0, (due - clock.now()) / clock.speed))
        return max(delay, 0.001)

    async def _run_ticker(self) -> None:
        loop = asyncio.get_running_loop()
        next_pulse = loop.time() + self.pulse_seconds
        while self._subscribers > 0 and not self.closed:
            try:
                self.tick()
            except Exception:  # the ticker must outlive one bad tick
                log.exception("feed tick failed")
            if loop.time() >= next_pulse:
                # One timer for every subscriber's heartbeat and token checks.
                next_pulse = loop.time() + self.pulse_seconds
                self.pulse()
            await asyncio.sleep(min(self._next_tick(), max(0.001, next_pulse - loop.time())))

    # ------------------------------------------------------------------ subscribers

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (tests run several): old waiters are dead
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._waiters, self._flush, self._last_flush = [], None, 0.0
        return loop

    @contextlib.asynccontextmanager
    async def subscribed(self) -> Any:
        """Count a subscriber while it listens; the ticker runs while anybody does."""
        self._bind()
        self._subscribers += 1
        if (self._ticker is None or self._ticker.done()) and not self.closed:
            self._ticker = asyncio.get_running_loop().create_task(self._run_ticker())
        try:
            yield self
        finally:
            self._subscribers -= 1

    @property
    def subscribers(self) -> int:
        return self._subscribers

    def close_streams(self) -> None:
        """The server is stopping: wake every subscriber, to end now (handlers/events.py)."""
        self.closing = True
        self.pulse()

    async def next(self, seq: int) -> None:
        """Until there are events after ``seq``, or the next pulse."""
        loop = self._bind()
        if self._seq > seq or self.closed:
            return
        fut = loop.create_future()
        self._waiters.append(fut)
        await fut

    async def wait(self, seq: int, timeout: float) -> bool:
        """Until there are events after ``seq`` (True) or ``timeout`` seconds passed (False)."""
        loop = self._bind()
        if not math.isfinite(timeout):  # NaN would make the deadline NaN: a busy loop
            timeout = 0.0
        deadline = loop.time() + max(0.0, timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while self._seq <= seq and not self.closed and not self.closing:
                    await self.next(seq)
        return self._seq > seq

    def frames(self, seq: int, flt: Filter) -> tuple[bytes, int] | None:
        """The SSE frames of the events after ``seq`` that pass ``flt``, and the new position.

        Subscribers at the same position with the same filter get the same bytes,
        built once. None when those events were dropped from the history.
        """
        events = self.after(seq)
        if events is None:
            return None
        top = events[-1].seq if events else seq
        key = (seq, top, flt)
        chunk = self._chunks.get(key)
        if chunk is None:
            chunk = b"".join(e.frame() for e in events if flt.matches(e))
            if len(self._chunks) >= 256:
                self._chunks.clear()
            self._chunks[key] = chunk
        return chunk, top


def _tables(backend: Any) -> tuple[Inventory, JobTable[Any]]:
    """The inventory and job table a backend goes through (both backends expose them as
    ``inventory`` and ``jobs``)."""
    return backend.inventory, backend.jobs


def feed_of(backend: Any) -> Feed:
    """The backend's feed, attached on first use (two apps over one backend share it)."""
    inv, jobs = _tables(backend)
    if isinstance(inv.observer, Feed):
        return inv.observer
    feed = Feed(backend)
    inv.observer = feed
    jobs.observer = feed
    return feed

