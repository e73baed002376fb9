"""The configured hosts: their links, events and resyncs, and where each VM is listed.

Per host, a :class:`~cockpit_api.backends.libvirt.link.Link` (one connection, one owner
thread, a bounded queue: one host's calls never wait behind another's), opened
in the background: start-up never waits on a host. A lost link (the close
callback, which keepalive fires for a frozen daemon; or a call failing on a
dead connection) makes the host ``disconnected`` at once, fails its queued
calls, and starts reconnecting with backoff (``reconnect_min`` doubling up to
``reconnect_max``). A connection attempt that gets no answer is waited for,
never repeated in parallel, so a frozen host holds one thread, not one per try.

Events (one domain) and resyncs (the whole host: every ``resync_seconds``,
after each action and after each migration) are applied by one worker task
per host to that host's snapshot of its domains; :meth:`Hosts.recompute` turns
the snapshots into the one listed :class:`~cockpit_api.backends.base.Vm` per UUID. Reads
never wait on libvirt.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import libvirt

from cockpit_api.backends.base import BackendError, Host, Unavailable, Vm
from cockpit_api.backends.inventory import Inventory
from cockpit_api.backends.libvirt import calls
from cockpit_api.backends.libvirt.calls import Dom
from cockpit_api.backends.libvirt.errors import HOST_DISCONNECTED, translate
from cockpit_api.backends.libvirt.link import (
    CLOSED,
    JOB,
    KEEPALIVE_COUNT,
    KEEPALIVE_INTERVAL,
    Link,
)
from cockpit_api.backends.libvirt.metrics import MetricsStore

log = logging.getLogger("cockpit_api.libvirt")

T = TypeVar("T")


class HostConfigLike(Protocol):
    name: str
    uri: str
    migration_uri: str | None


@dataclass(frozen=True)
class Tuning:
    """Every interval and bound of the backend, in seconds unless named otherwise."""

    resync_seconds: float = 30.0
    sample_seconds: float = 10.0
    call_timeout: float = 30.0
    connect_timeout: float = 15.0
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    progress_seconds: float = 0.5
    cancel_timeout: float = 15.0
    queue_limit: int = 64  # calls waiting per host before it answers 503 host_busy
    keepalive: tuple[int, int] = (KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)


class JobView(Protocol):
    """What placement needs to know of a VM's running migration job."""

    id: str
    source_host_id: str


@dataclass(eq=False)
class HostState:
    id: str
    name: str
    uri: str
    migration_uri: str
    link: Link | None = None  # the open link; None while disconnected
    domains: dict[str, Dom] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    full: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    connector: asyncio.Task[None] | None = None


class Hosts:
    """The hosts' links and snapshots, and the inventory they feed."""

    def __init__(self, hosts: Sequence[HostConfigLike], ids: dict[str, str], inv: Inventory,
                 metrics: MetricsStore, tuning: Tuning,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
                 jobs_by_vm: dict[str, Any]) -> None:
        self.order = [HostState(ids[h.name], h.name, h.uri, h.migration_uri or h.uri)
                      for h in hosts]
        self.by_id = {h.id: h for h in self.order}
        self.inv = inv
        self.metrics = metrics
        self.tuning = tuning
        self.spawn = spawn
        self.jobs_by_vm: dict[str, JobView] = jobs_by_vm
        self.closed = False
        # Hooks the migrations and the sampler set: a host lost; a JOB_COMPLETED event; an
        # incoming migration copy seen with no job for its VM; a host connected.
        self.on_lost: Callable[[HostState], None] = lambda _h: None
        self.on_job_event: Callable[[HostState, str, dict[str, Any]], None] = (
            lambda _h, _u, _s: None)
        self.on_unrecorded: Callable[[str], None] = lambda _u: None
        self.on_connected: Callable[[HostState], None] = lambda _h: None
        self.on_domain_event: Callable[[str], None] = lambda _u: None
        # (call, seconds, ok) after each libvirt call: the app's metrics set it (through
        # LibvirtBackend.call_observer) to time calls by their fixed description.
        self.call_observer: Callable[[str, float, bool], None] | None = None
        t = time.time()
        for h in self.order:
            inv.put_host(Host(h.id, h.name, "disconnected", int(t), 0, 0, 0))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect every host in the background; nothing here waits on one."""
        self.closed = False
        for h in self.order:
            h.lock, h.wake = asyncio.Lock(), asyncio.Event()
            self.spawn(self._worker(h))
            self._start_connecting(h)

    async def close(self) -> None:
        self.closed = True
        for h in self.order:
            h.wake.set()  # workers see `closed` and return
        closing = []
        for h in self.order:
            link, h.link = h.link, None
            if link is not None:
                closing.append(link.close())
                self.inv.set_host_status(h.id, "disconnected", time.time())
        if closing:
            with contextlib.suppress(TimeoutError):  # a frozen daemon: its thread is a daemon
                async with asyncio.timeout(10):
                    await asyncio.gather(*closing, return_exceptions=True)

    # ------------------------------------------------------------ connecting

    def connected(self, h: HostState) -> bool:
        return h.link is not None and self.inv.hosts[h.id].status == "connected"

    @staticmethod
    def fresh(h: HostState) -> bool:
        """Its snapshot is current (a lost host's is from before it went)."""
        return h.link is not None

    def require_connected(self, h: HostState) -> None:
        if not self.connected(h):
            raise Unavailable(f"host {h.name} is disconnected", code=HOST_DISCONNECTED)

    def _start_connecting(self, h: HostState) -> None:
        if self.closed or (h.connector is not None and not h.connector.done()):
            return
        h.connector = self.spawn(self._connect_loop(h))

    async def _connect_loop(self, h: HostState) -> None:
        delay = self.tuning.reconnect_min
        while not self.closed:
            if await self._connect(h):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.tuning.reconnect_max)

    async def _connect(self, h: HostState) -> bool:
        link = Link(h.name, h.uri, asyncio.get_running_loop(),
                    on_event=functools.partial(self._on_event, h),
                    queue_limit=self.tuning.queue_limit, keepalive=self.tuning.keepalive)
        try:
            try:
                async with asyncio.timeout(self.tuning.connect_timeout):
                    info = await asyncio.shield(link.opened)
            except TimeoutError:
                log.warning("host %s: no answer from %s within %g s; still waiting", h.name,
                            h.uri, self.tuning.connect_timeout)
                info = await link.opened  # the same attempt: one thread per frozen host
        except Exception as exc:  # libvirtError mostly; any failure is one failed attempt
            log.info("host %s: cannot connect to %s: %s", h.name, h.uri, translate(exc).detail)
            link.close()
            return False
        except BaseException:
            link.close()
            raise
        if self.closed:
            link.close()
            return False
        h.link = link
        self.inv.put_host(replace(self.inv.hosts[h.id], cpus=int(info[2]),
                                  memory_mib=int(info[1])))
        try:
            await self.resync(h)
        except BackendError as err:
            log.warning("host %s: connected but cannot list domains: %s", h.name, err.detail)
            if h.link is link:
                h.link = None
            link.close()
            return False
        if h.link is not link:
            return False  # lost while listing
        self.inv.set_host_status(h.id, "connected", time.time())
        log.info("host %s connected (%s)", h.name, h.uri)
        self.on_connected(h)
        return True

    def lose(self, h: HostState, why: str) -> None:
        """The host is gone: disconnected now, its calls fail now, reconnect later."""
        link = h.link
        if link is None:
            return
        log.warning("host %s disconnected: %s", h.name, why)
        h.link = None
        link.close()
        self.inv.set_host_status(h.id, "disconnected", time.time())
        self.metrics.forget_host(h.id)
        self.on_lost(h)
        self._start_connecting(h)

    def _on_event(self, h: HostState, link: Link, kind: str, uuid: str, payload: Any) -> None:
        if self.closed or h.link is not link:
            return  # an event of a connection we already dropped
        if kind == CLOSED:
            self.lose(h, f"connection closed by libvirt (reason {payload})")
            return
        if kind == JOB:
            self.on_job_event(h, uuid, payload)
        h.dirty.add(uuid)
        h.wake.set()
        self.on_domain_event(uuid)

    def _check_link_soon(self, h: HostState, link: Link) -> None:
        """After a call failed like a dead connection: ask the link (on its own thread)."""
        if h.link is not link or self.closed:
            return

        async def check() -> None:
            try:
                async with asyncio.timeout(self.tuning.call_timeout):
                    alive = await link.call(calls.is_alive, "is alive")
            except (TimeoutError, libvirt.libvirtError):
                alive = False
            except BackendError:
                return  # closing or busy: the close callback or the next check decides
            if not alive and h.link is link:
                self.lose(h, "the connection is not alive")

        self.spawn(check())

    # ------------------------------------------------------------ calls

    async def run(self, h: HostState, fn: Callable[[Any], T], what: str,
                  timeout: float | None = None, link: Link | None = None) -> T:
        """``fn(conn)`` on the host's link, bounded, with libvirt errors translated."""
        link = link or h.link
        if link is None:
            raise Unavailable(f"host {h.name} is disconnected", code=HOST_DISCONNECTED)
        limit = self.tuning.call_timeout if timeout is None else timeout
        t0, ok = time.perf_counter(), False
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the call's result, and a task then outlives close().
            async with asyncio.timeout(limit):
                result = await link.call(fn, what)
                ok = True
                return result
        except TimeoutError:
            raise Unavailable(f"host {h.name} did not answer ({what}) within {limit:g} s",
                              code="host_busy") from None
        except libvirt.libvirtError as exc:
            err = translate(exc)
            if err.code == HOST_DISCONNECTED:
                self._check_link_soon(h, link)
            raise err from None
        finally:
            self.observe(what, time.perf_counter() - t0, ok)

    def observe(self, what: str, seconds: float, ok: bool) -> None:
        """Tell the call observer (metrics) how long a libvirt call took (queue included)."""
        if self.call_observer is not None:
            self.call_observer(what, seconds, ok)

    async def call(self, h: HostState, fn: Callable[[Any], T], what: str) -> T:
        self.require_connected(h)
        return await self.run(h, fn, what)

    # ------------------------------------------------------------ snapshots

    async def _worker(self, h: HostState) -> None:
        """Applies events (one domain) and resync requests (whole host), one at a time."""
        while not self.closed:
            await h.wake.wait()
            h.wake.clear()
            if self.closed:
                return
            try:
                if h.full:
                    h.full = False
                    h.dirty.clear()
                    await self.resync(h)
                while h.dirty and not h.full:
                    await self.refresh(h, h.dirty.pop())
            except BackendError as err:
                log.debug("host %s: refresh failed: %s", h.name, err.detail)
            except Exception:  # the worker must outlive any one bad refresh
                log.exception("host %s: refresh failed", h.name)

    async def resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tuning.resync_seconds)
            self.resync_all_soon()

    def resync_soon(self, h: HostState) -> None:
        if h.link is not None:
            h.full = True
            h.wake.set()

    def resync_all_soon(self) -> None:
        for h in self.order:
            self.resync_soon(h)

    async def resync(self, h: HostState) -> None:
        async with h.lock:
            link = h.link
            if link is None:
                return
            snapshot = await self.run(h, calls.read_all, "list domains", link=link)
            if h.link is not link:
                return
            old, h.domains = h.domains, snapshot
            for uuid in old.keys() | snapshot.keys():
                if old.get(uuid) != snapshot.get(uuid):
                    self.recompute(uuid)

    async def resync_connected(self) -> None:
        await asyncio.gather(*(self.resync(h) for h in self.order if h.link is not None),
                             return_exceptions=True)

    async def refresh(self, h: HostState, uuid: str) -> None:
        async with h.lock:
            link = h.link
            if link is None:
                return
            dom = await self.run(h, functools.partial(calls.read_one, uuid=uuid),
                                 "read domain", link=link)
            if h.link is not link:
                return
            old = h.domains.get(uuid)
            if dom is None:
                h.domains.pop(uuid, None)
            else:
                h.domains[uuid] = dom
            if old != dom:
                self.recompute(uuid)

    def recompute(self, uuid: str) -> None:
        """The one Vm record for a UUID, from what every host reports about it.

        An incoming migration copy is never the VM: it is listed under its source (which
        owns it until libvirt moves it), and with no job recorded for it the migrations
        are told, so that a migration started elsewhere is shown as a job.
        """
        t = time.time()
        copies = [(h, h.domains[uuid]) for h in self.order if uuid in h.domains]
        job = self.jobs_by_vm.get(uuid)
        if job is None and any(d.migration == "in" and self.fresh(h) for h, d in copies):
            self.on_unrecorded(uuid)
            job = self.jobs_by_vm.get(uuid)
        copies = [c for c in copies if c[1].migration != "in"]
        old = self.inv.vms.get(uuid)
        if not copies:
            self.inv.remove_vm(uuid, t)
            return
        active = [c for c in copies if c[1].active]
        candidates = active or copies
        primary = candidates[0]
        if len(candidates) > 1:
            # During a migration the source stays primary until it lets go; otherwise the
            # VM stays where it was listed.
            prefer = job.source_host_id if job is not None else (old.host_id if old else None)
            primary = next((c for c in candidates if c[0].id == prefer), primary)
        h, d = primary
        also = tuple(sorted(o.id for o, od in copies if o is not h and not od.active))
        vm = Vm(uuid, d.name, h.id, d.status, d.vcpus, d.memory_mib, d.persistent, also,
                job.id if job is not None else None)
        if old is not None and old.name != vm.name:
            self.inv.remove_vm(uuid, t)  # the inventory keys VMs by name: re-add a rename
        self.inv.put_vm(vm, t)

    def listed_on(self, h: HostState) -> list[Vm]:
        """The VMs the inventory lists under ``h`` (each has a copy on ``h``)."""
        vms = (self.inv.vms.get(uuid) for uuid in h.domains)
        return [vm for vm in vms if vm is not None and vm.host_id == h.id]
