"""One libvirt connection and the one thread that owns it.

Why an owner thread: libvirt's ``virConnectClose`` drops the connection's
reference at once, and calls that hold no domain (``listAllDomains``,
``getAllDomainStats``, ``isAlive``) hold no reference of their own. The old
backend ran calls, ``isAlive`` checks and the close of a lost connection on a
shared thread pool: with a daemon frozen (SIGSTOP), a resync or a sample sat
blocked inside the remote driver while another pool thread closed the
connection and freed its RPC client; on SIGCONT the reply reached the freed
client and the process died with SIGSEGV in libvirt.so. Here that cannot
happen: a :class:`Link`'s thread opens the connection, wires keepalive and
callbacks, makes every call, and only after the last call has returned
deregisters the callbacks and closes it. Nothing else ever sees the
``virConnect`` (calls are functions of it that return plain data), so no
libvirt object is freed on another thread either.

libvirt's event loop (``virEventRunDefaultImpl``, its own daemon thread)
only *dispatches*: keepalive, the close callback and domain events, each of
which we hand to the asyncio loop and nothing else.

Keepalive: a ping after :data:`KEEPALIVE_INTERVAL` idle seconds, and the
connection is closed by libvirt after :data:`KEEPALIVE_COUNT` unanswered ones,
so a frozen daemon is known gone about ``interval * (count + 1)`` = 6 s after
its last answer (the close callback fires; every call blocked in it fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import libvirt

from cockpit_api.backends.base import Unavailable
from cockpit_api.backends.libvirt.errors import HOST_DISCONNECTED

log = logging.getLogger("cockpit_api.libvirt")

T = TypeVar("T")

KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 2
# The longest a frozen daemon can go unnoticed: keepalive's own bound, plus a ping's slack.
DEAD_AFTER_SECONDS = KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1) + 2

# Event kinds a Link hands to its owner's on_event (on the asyncio loop).
CLOSED, DOMAIN, JOB = "closed", "domain", "job"

# --------------------------------------------------------------------------- the event loop

_event_lock = threading.Lock()
_event_thread: list[threading.Thread] = []  # libvirt's loop is per process: so is its thread


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process.

    It must happen before any connection is opened: keepalive, close callbacks
    and domain events of a connection need it.
    """
    with _event_lock:
        if _event_thread:
            return
        # libvirt-python prints every error to stderr unless a handler is registered.
        libvirt.registerErrorHandler(_quiet, None)
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
        thread.start()
        _event_thread.append(thread)


def _quiet(_ctx: object, _err: object) -> None:
    return None


def _run_events() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            time.sleep(0.1)  # pragma: no cover - only on a broken event loop


# --------------------------------------------------------------------------- the link


@dataclass(eq=False)
class _Call(Generic[T]):
    fn: Callable[[Any], T]
    what: str
    fut: asyncio.Future[T]
    abandoned: bool = False  # the caller stopped waiting before it began: skip it


@dataclass(eq=False)
class Link:
    """A connection to ``uri`` whose every call runs on its own thread, in order.

    Made on the asyncio loop; :meth:`call` queues a function of the connection
    (at most ``queue_limit`` waiting: beyond that the host is busy, 503 at once)
    and answers its result as an awaitable. :meth:`close` fails whatever still
    waits and has the thread close the connection after its current call.
    ``on_event(link, kind, uuid, payload)`` runs on the asyncio loop.
    """

    name: str
    uri: str
    loop: asyncio.AbstractEventLoop
    on_event: Callable[[Link, str, str, Any], None] | None = None
    queue_limit: int = 64
    keepalive: tuple[int, int] = (KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
    opened: asyncio.Future[list[Any]] = field(init=False)  # the node's getInfo()
    finished: asyncio.Future[None] = field(init=False)  # the connection is closed
    _queue: deque[_Call[Any]] = field(default_factory=deque, init=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False)
    _closing: bool = field(default=False, init=False)
    _busy_since: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.opened = self.loop.create_future()
        self.finished = self.loop.create_future()
        threading.Thread(target=self._main, name=f"libvirt-{self.name}", daemon=True).start()

    # ------------------------------------------------------------ asyncio side

    @property
    def closing(self) -> bool:
        return self._closing

    def pending(self) -> int:
        return len(self._queue)

    def call(self, fn: Callable[[Any], T], what: str) -> asyncio.Future[T]:
        """Queue ``fn(conn)`` on the owner thread; its result (or exception) as a future."""
        fut: asyncio.Future[T] = self.loop.create_future()
        with self._cond:
            if self._closing:
                raise Unavailable(f"host {self.name} is disconnected", code=HOST_DISCONNECTED)
            if len(self._queue) >= self.queue_limit:
                raise Unavailable(f"host {self.name} has {len(self._queue)} calls waiting; "
                                  "try again shortly", code="host_busy")
            item = _Call(fn, what, fut)
            self._queue.append(item)
            self._cond.notify()
        fut.add_done_callback(functools.partial(_abandon_if_cancelled, item))
        return fut

    def close(self) -> asyncio.Future[None]:
        """Stop taking calls, fail the waiting ones, close the connection on its thread."""
        with self._cond:
            drained = [] if self._closing else list(self._queue)
            self._queue.clear()
            self._closing = True
            self._cond.notify()
        for item in drained:
            if not item.fut.done():
                item.fut.set_exception(Unavailable(f"host {self.name} is disconnected",
                                                   code=HOST_DISCONNECTED))
        return self.finished

    def stuck_for(self) -> float:
        """How long the current call has been running (0 when idle)."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    # ------------------------------------------------------------ the owner thread

    def _main(self) -> None:
        conn: Any = None
        ids: list[int] = []
        try:
            try:
                conn = libvirt.open(self.uri)
                ids = self._wire(conn)
                info = conn.getInfo()
            except BaseException as exc:
                self._settle(self.opened, None, exc)
                return
            self._settle(self.opened, info, None)
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        break  # closing, and nothing was queued before it
                    item = self._queue.popleft()
                if item.abandoned:
                    continue
                self._busy_since = time.monotonic()
                try:
                    result = item.fn(conn)
                except BaseException as exc:
                    self._settle(item.fut, None, exc)
                else:
                    self._settle(item.fut, result, None)
                finally:
                    self._busy_since = None
        finally:
            if conn is not None:
                _close_connection(conn, ids)
            with self._cond:
                self._closing = True
                left = list(self._queue)
                self._queue.clear()
            gone = Unavailable(f"host {self.name} is disconnected", code=HOST_DISCONNECTED)
            for item in left:
                self._settle(item.fut, None, gone)
            self._settle(self.finished, None, None)

    def _wire(self, conn: Any) -> list[int]:
        with contextlib.suppress(libvirt.libvirtError):  # local drivers have no keepalive
            conn.setKeepAlive(*self.keepalive)
        if self.on_event is None:
            return []
        post = self._post
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(lambda _c, reason, _o: post(CLOSED, "", reason), None)
        return [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _c, dom, _ev, _detail, _o: post(DOMAIN, dom.UUIDString(), None), None),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                lambda _c, dom, _o: post(DOMAIN, dom.UUIDString(), None), None),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                lambda _c, dom, stats, _o: post(JOB, dom.UUIDString(), dict(stats)), None),
        ]

    def _post(self, kind: str, uuid: str, payload: Any) -> None:
        """On libvirt's event thread: hand the event to the asyncio loop, nothing else."""
        on_event = self.on_event
        if on_event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(on_event, self, kind, uuid, payload)

    def _settle(self, fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(settle)


def _abandon_if_cancelled(item: _Call[Any], fut: asyncio.Future[Any]) -> None:
    if fut.cancelled():
        item.abandoned = True  # read by the owner thread before it begins the call


def _close_connection(conn: Any, callback_ids: list[int]) -> None:
    """On the owner thread, after its last call: deregister, then close."""
    for cid in callback_ids:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(cid)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()

