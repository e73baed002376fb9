"""The libvirt backend: a cluster of real libvirt hosts, one connection each.

It answers with the semantics of :mod:`backends.sim` (the executable document
of how a Cockpit cluster behaves) wherever libvirt lets it; the places where a
real hypervisor differs are listed in the final section below.

Connections (like Nova's ``host.py`` and virt-manager)
    ``virEventRegisterDefaultImpl()`` once per process, before any connection,
    and a daemon thread running ``virEventRunDefaultImpl()``. Per host:
    ``libvirt.open``, ``setKeepAlive(5, 3)``, a close callback and domain event
    callbacks (lifecycle, reboot, job completed). Callbacks run on the libvirt
    event thread and only hand the event to the asyncio loop
    (``loop.call_soon_threadsafe``). A lost connection marks the host
    ``disconnected`` and starts a reconnect task with exponential backoff
    (0.5 s doubling up to 30 s). Blocking libvirt calls run in a thread pool,
    each bounded by a timeout; migrations run in their own daemon threads. A
    call that needs a disconnected host raises ``Unavailable`` at once.
Inventory
    The shared :class:`~backends.inventory.Inventory`, fed by a per-host
    snapshot of its domains that events (one domain) and resyncs (the whole
    host: every ``resync_seconds``, after each action and after each migration)
    keep current. Reads never wait on libvirt. A VM defined on several hosts
    is listed once: under the host where it is active (during a migration, its
    source), else where it was listed before, else the first configured host;
    the other hosts with an inactive definition are ``also_defined_on``.
Actions and migrations
    Every action re-reads the domain's state in the same worker-thread call
    that acts, and refuses or no-ops exactly as the simulator does (see
    :func:`_do_action`). A migration is ``migrateToURI3`` peer-to-peer on the
    source, in a thread; progress comes from ``jobStats()`` polled on the
    source (the last non-zero numbers are kept: the first ~200 ms report zeros
    and the last moments fail), final numbers from the JOB_COMPLETED event; a
    cancel is ``abortJob()`` on the source.
Errors
    :func:`backends._libvirt_errors.translate` is the one function that reads
    libvirt error codes; no ``libvirtError`` leaves this module.

Known differences from the simulator (measured on libvirt 9.0 + QEMU 7.2, and the test driver)
    * A graceful ``stop`` of a *paused* VM is refused, 409 ``vm_paused``: QEMU
      answers VIR_ERR_OPERATION_INVALID "domain is not running". The simulator
      accepts it and shuts the guest down after the next resume.
    * ``resume`` of a running VM and ``suspend`` of a paused one succeed as
      no-ops, as in the simulator, because the backend checks first: QEMU
      7.2/libvirt 9.0 itself refuses resume-of-running (55), and the test
      driver refuses both (VIR_ERR_INTERNAL_ERROR).
    * ``start`` of a ``crashed`` VM destroys the crashed domain first: libvirt
      keeps a crashed domain active (on_crash=preserve; with on_crash=destroy a
      crash reads ``shutoff``), the simulator has it inactive.
    * A graceful ``stop`` on the test driver powers off at once; QEMU guests
      take their time or (SeaBIOS, no OS) never act on it.
    * Actions and migration requests cost a libvirt round trip (start ~0.25 s,
      destroy ~0.2 s in the lab); the simulator answers at once.
    * Migration progress is libvirt's: ``data_processed_bytes`` is what was sent
      (zero pages skipped, dirty pages sent again), so processed + remaining is
      not total; ``percent`` is ``(total - remaining) / total`` (at most 99.9
      until completed). An idle guest shows only zeros until it completes (its
      ~0.6 MB go in the last milliseconds); then the JOB_COMPLETED numbers.
    * A cancel answers once libvirt confirms (``migrateToURI3`` fails with
      VIR_ERR_OPERATION_ABORTED, ~0.1 s): it can answer 409
      ``migration_finished`` if the copy completed first. The error is
      libvirt's ("operation aborted: job 'migration out' canceled by client").
    * A destination that dies mid-way: libvirt fails the job by itself
      ("internal error: client socket is closed"); the backend prefixes "lost
      connection to the destination host during migration" when its own
      connection to that host dropped too (it does, within ~30 ms, in the lab).
    * Metrics are samples every ``sample_seconds`` (gaps before the first
      sample, while a host is unreachable, and for a VM while it migrates);
      the simulator computes any instant. Host CPU and memory are the node's
      (in the lab both nodes are one machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import libvirt

from backends._libvirt_errors import ABORTED, HOST_DISCONNECTED, translate
from backends._libvirt_hostids import HostIdError, load_host_ids
from backends._libvirt_metrics import HostSample, MetricsStore, Series
from backends.base import (
    ACTIVE_STATUSES,
    FINAL_MIGRATION_STATUSES,
    ActionName,
    BackendError,
    BackendInfo,
    Conflict,
    Host,
    InvalidArgument,
    MetricSeries,
    MetricsWindow,
    Migration,
    MigrationFilter,
    MigrationProgress,
    MigrationRequest,
    MigrationStatus,
    NotFound,
    Page,
    PageRequest,
    Unavailable,
    Vm,
    VmFilter,
    VmStatus,
)
from backends.inventory import Inventory, JobTable

if TYPE_CHECKING:
    from cockpit_api.config import Settings

log = logging.getLogger("cockpit_api.libvirt")

T = TypeVar("T")

KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
_ACTIONS = frozenset({"start", "stop", "restart", "suspend", "resume"})

_STATUS: dict[int, VmStatus] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
          | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
          | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)


def status_of(state: int) -> VmStatus:
    """libvirt's virDomainState as the API's status name."""
    return _STATUS.get(state, "nostate")


# --------------------------------------------------------------------------- event loop

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process.

    It must happen before any connection is opened: keepalive, close callbacks
    and domain events of a connection need it.
    """
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        # libvirt-python prints every error to stderr unless a handler is registered.
        libvirt.registerErrorHandler(_quiet, None)
        libvirt.virEventRegisterDefaultImpl()
        _event_thread = threading.Thread(target=_run_events, name="libvirt-events", daemon=True)
        _event_thread.start()


def _quiet(_ctx: object, _err: object) -> None:
    return None


def _run_events() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            time.sleep(0.1)  # pragma: no cover - only on a broken event loop


# --------------------------------------------------------------------------- records


class HostConfigLike(Protocol):
    name: str
    uri: str
    migration_uri: str | None


@dataclass(frozen=True, slots=True)
class _Dom:
    """One domain as one host's libvirt reports it."""

    uuid: str
    name: str
    status: VmStatus
    vcpus: int
    memory_mib: int
    persistent: bool
    active: bool


@dataclass(eq=False)
class _Host:
    id: str
    name: str
    uri: str
    migration_uri: str
    conn: Any = None
    gen: int = 0  # which connection the events belong to; 0 while disconnected
    callback_ids: list[int] = field(default_factory=list)
    domains: dict[str, _Dom] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    full: bool = False
    lock: asyncio.Lock | None = None
    wake: asyncio.Event | None = None
    reconnect: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Job:
    id: str
    seq: int
    vm_id: str
    source_host_id: str
    request: MigrationRequest
    created_at: float
    status: MigrationStatus = "initiated"
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    total: int = 0
    processed: int = 0
    remaining: int = 0
    percent: float = 0.0
    cancel_requested: bool = False
    dest_lost: bool = False
    dom: Any = None
    final_stats: dict[str, Any] | None = None
    completed_event: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> Migration:
        return Migration.of(
            id=self.id, vm_id=self.vm_id, source_host_id=self.source_host_id,
            request=self.request, status=self.status,
            progress=MigrationProgress(self.total, self.processed, self.remaining, self.percent),
            created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, error=self.error,
        )

    def take_progress(self, stats: dict[str, Any], final: bool = False) -> None:
        """Keep jobStats' numbers unless they are the setup phase's zeros."""
        total = int(stats.get("data_total") or stats.get("memory_total") or 0)
        if total <= 0:
            return
        processed = int(stats.get("data_processed") or stats.get("memory_processed") or 0)
        remaining = 0 if final else int(stats.get("data_remaining")
                                        or stats.get("memory_remaining") or 0)
        self.total, self.processed, self.remaining = total, processed, remaining
        done = 100.0 * (total - min(remaining, total)) / total
        # 100 % means completed; a job still running reads at most 99.9.
        self.percent = 100.0 if final else round(min(done, 99.9), 1)


# --------------------------------------------------------------------------- worker-thread calls
# These run in a worker thread with the host's connection; they may raise libvirtError
# (translated by the caller) or a BackendError.


def _dom_of(dom: Any, uuid: str, persistent: bool, active: bool) -> _Dom:
    state, max_kib, _mem, vcpus, _cpu = dom.info()
    return _Dom(uuid, dom.name(), status_of(state), int(vcpus), int(max_kib) // 1024,
                persistent, active)


def _read_all(conn: Any) -> dict[str, _Dom]:
    listed = conn.listAllDomains(0)
    active = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    persistent = {d.UUIDString()
                  for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)}
    out: dict[str, _Dom] = {}
    for dom in listed:
        uuid = dom.UUIDString()
        try:
            out[uuid] = _dom_of(dom, uuid, uuid in persistent, uuid in active)
        except libvirt.libvirtError as exc:
            if not isinstance(translate(exc), NotFound):
                raise
            # gone since the list: the next event or resync says where it went
    return out


def _read_one(conn: Any, uuid: str) -> _Dom | None:
    try:
        dom = conn.lookupByUUIDString(uuid)
        return _dom_of(dom, uuid, bool(dom.isPersistent()), bool(dom.isActive()))
    except libvirt.libvirtError as exc:
        err = translate(exc)
        if isinstance(err, NotFound):
            return None
        raise err from None


def _read_stats(conn: Any, skip: frozenset[str] = frozenset()) -> HostSample:
    """Counters of every active domain but those in ``skip`` (migrating), and of the node.

    Statistics queries of a domain that is migrating (even with NOWAIT) measurably slow the
    migration down (a cold one in the lab took 1.2-1.4 s instead of 0.5 s): such domains
    miss a sample instead.
    """
    flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    if skip:
        doms = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if d.UUIDString() not in skip]
        records = conn.domainListGetStats(doms, _STATS, flags) if doms else []
    else:
        records = conn.getAllDomainStats(
            _STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | flags)
    t = time.time()
    domains = {dom.UUIDString(): dict(stats) for dom, stats in records}
    cpu: dict[str, int] | None = None
    memory: dict[str, int] | None = None
    with contextlib.suppress(libvirt.libvirtError):  # unsupported by some drivers
        cpu = dict(conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS))
    with contextlib.suppress(libvirt.libvirtError):
        memory = dict(conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS))
    return HostSample(t, domains, cpu, memory)


def _do_action(conn: Any, vm_id: str, action: str, force: bool) -> None:
    """Act on the domain's current state with the simulator's refusals and no-ops."""
    dom = conn.lookupByUUIDString(vm_id)
    status = status_of(dom.state()[0])
    active = status in ACTIVE_STATUSES
    if action == "start":
        if active:
            raise Conflict("domain is already running", code="vm_running")
        if dom.isActive():
            # A crashed domain that libvirt preserved (on_crash=preserve) still has its
            # QEMU process: starting it again means tearing that down first.
            dom.destroy()
        dom.create()
        return
    if not active:
        raise Conflict("domain is not running", code="vm_not_running")
    if action == "stop":
        if force:
            dom.destroy()
        elif status == "paused":
            # QEMU refuses an ACPI shutdown of paused vCPUs (VIR_ERR_OPERATION_INVALID).
            raise Conflict("domain is paused: resume it first, or stop it with force",
                           code="vm_paused")
        else:
            dom.shutdown()
    elif action == "restart":
        if force:
            dom.reset()
        else:
            dom.reboot()
    elif action == "suspend":
        if status == "pmsuspended":
            raise Conflict("domain is PM-suspended", code="vm_pmsuspended")
        if status != "paused":  # suspending a paused domain is a no-op in QEMU's driver
            dom.suspend()
    elif action == "resume":
        if status == "pmsuspended":
            raise Conflict("cannot resume a domain in pmsuspended state", code="vm_pmsuspended")
        if status == "paused":  # resuming a running domain is a no-op, as in the simulator
            dom.resume()


def _lookup(conn: Any, uuid: str) -> Any:
    return conn.lookupByUUIDString(uuid)


def _abort_job(_conn: Any, dom: Any) -> None:
    dom.abortJob()


def _job_stats(_conn: Any, dom: Any) -> dict[str, Any]:
    return dict(dom.jobStats())


def _close_connection(conn: Any, callback_ids: Sequence[int]) -> None:
    for cid in callback_ids:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(cid)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


# --------------------------------------------------------------------------- the backend


class LibvirtBackend:
    """A Backend over real libvirt hosts (see the module docstring)."""

    def __init__(
        self,
        hosts: Sequence[HostConfigLike],
        *,
        state_file: str,
        resync_seconds: float = 30.0,
        sample_seconds: float = 10.0,
        retention_seconds: float = 86400,
        migration_bandwidth_mib: int = 0,
        call_timeout: float = 30.0,
        connect_timeout: float = 15.0,
        reconnect_min_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
        progress_seconds: float = 0.5,
        cancel_timeout: float = 15.0,
    ) -> None:
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise HostIdError(f"host names must be unique: {names}")
        ids = load_host_ids(state_file, names)
        ensure_event_loop()
        self._resync_seconds = max(0.05, float(resync_seconds))
        self._sample_seconds = max(0.05, float(sample_seconds))
        # The per-migration bandwidth cap in MiB/s (0: none); read when a migration starts.
        self.migration_bandwidth_mib = int(migration_bandwidth_mib)
        self._call_timeout = float(call_timeout)
        self._connect_timeout = float(connect_timeout)
        self._reconnect_min = float(reconnect_min_seconds)
        self._reconnect_max = max(float(reconnect_max_seconds), self._reconnect_min)
        self._progress_seconds = float(progress_seconds)
        self._cancel_timeout = float(cancel_timeout)
        self._order = [_Host(ids[h.name], h.name, h.uri, h.migration_uri or h.uri)
                       for h in hosts]
        self._hosts = {h.id: h for h in self._order}
        self._inv = Inventory()
        t = self.now()
        for h in self._order:
            self._inv.put_host(Host(h.id, h.name, "disconnected", int(t), 0, 0, 0))
        self._metrics = MetricsStore(retention_seconds)
        self._jobs: JobTable[_Job] = JobTable()
        self._jobs_by_vm: dict[str, _Job] = {}
        self._seq = itertools.count(1)
        self._gens = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._started = False
        self._closed = False
        # (call, seconds, ok) after each call in a worker thread: the app's metrics set it.
        self.call_observer: Callable[[str, float, bool], None] | None = None
        self.info = BackendInfo("libvirt", {
            "hosts": names, "libvirt_version": libvirt.getVersion(), "state_file": str(state_file),
        })

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LibvirtBackend:
        from cockpit_api.config import ConfigError

        if not settings.hosts:
            raise ConfigError("the libvirt backend needs at least one [[hosts]] entry "
                              "(name, uri, optional migration_uri)")
        kwargs: dict[str, Any] = {
            "state_file": settings.state_file,
            "resync_seconds": settings.resync_seconds,
            "sample_seconds": settings.sample_seconds,
            "retention_seconds": settings.retention_seconds,
            "migration_bandwidth_mib": settings.migration_bandwidth_mib,
        }
        kwargs.update(overrides)
        try:
            return cls(settings.hosts, **kwargs)
        except HostIdError as exc:
            raise ConfigError(str(exc)) from None

    def now(self) -> float:
        return time.time()

    def host_id(self, name: str) -> str:
        """The stable id of the configured host ``name``."""
        for h in self._order:
            if h.name == name:
                return h.id
        raise NotFound(f"no configured host named {name}", code="host_not_found")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        self._started, self._closed = True, False
        self._pool = ThreadPoolExecutor(max_workers=min(64, 8 + 4 * len(self._order)),
                                        thread_name_prefix="libvirt-call")
        for h in self._order:
            h.lock, h.wake = asyncio.Lock(), asyncio.Event()
        connected = await asyncio.gather(*(self._connect(h) for h in self._order))
        for h, ok in zip(self._order, connected, strict=True):
            if not ok:
                self._start_reconnect(h)
            self._spawn(self._worker(h))
        self._spawn(self._resync_loop())
        with contextlib.suppress(BackendError):
            await self.sample_now()  # the first sample before serving: no empty first window
        self._spawn(self._sampler_loop())

    async def close(self) -> None:
        if not self._started or self._closed:
            return
        self._closed = True
        for h in self._order:
            if h.wake is not None:
                h.wake.set()  # workers see _closed and return
        pending = set(self._tasks)
        for _ in range(20):  # cancel until every task is gone (bounded)
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.5)
        if pending:
            log.warning("%d background tasks did not stop", len(pending))
        closing = []
        for h in self._order:
            if h.conn is not None:
                conn, ids = h.conn, h.callback_ids
                h.conn, h.gen, h.callback_ids = None, 0, []
                closing.append(self._in_pool(functools.partial(_close_connection, conn, ids)))
                self._inv.set_host_status(h.id, "disconnected", self.now())
        if closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await asyncio.gather(*closing, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._started = False

    # ------------------------------------------------------------ reads

    async def list_hosts(self, page: PageRequest) -> Page[Host]:
        return self._inv.page_hosts(page)

    async def get_host(self, host_id: str) -> Host:
        return self._inv.get_host(host_id)

    async def list_vms(self, page: PageRequest, flt: VmFilter) -> Page[Vm]:
        return self._inv.page_vms(page, flt)

    async def get_vm(self, vm_id: str) -> Vm:
        return self._inv.get_vm(vm_id)

    async def list_migrations(self, page: PageRequest, flt: MigrationFilter) -> Page[Migration]:
        return self._jobs.page(page, flt, lambda job: job.snapshot())

    async def get_migration(self, migration_id: str) -> Migration:
        return self._job(migration_id).snapshot()

    # ------------------------------------------------------------ actions

    async def vm_action(self, vm_id: str, action: ActionName, force: bool) -> Vm:
        if action not in _ACTIONS:
            raise InvalidArgument(f"unknown action {action}", code="bad_action")
        vm = self._inv.get_vm(vm_id)
        h = self._hosts[vm.host_id]
        self._require_connected(h)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is migrating ({vm.migration_id})", code="vm_migrating")
        try:
            await self._call(h, functools.partial(_do_action, vm_id=vm_id, action=action,
                                                  force=force), action)
        except NotFound:
            self._resync_all_soon()  # it is not where we thought: look everywhere
            raise
        with contextlib.suppress(BackendError):
            await self._refresh_domain(h, vm_id)
        self._resync_soon(h)
        current = self._inv.vms.get(vm_id)
        if current is not None:
            return current
        # A transient domain that powered off is gone; answer its last state.
        return replace(vm, status="shutoff", migration_id=None)

    async def migrate(self, vm_id: str, request: MigrationRequest) -> Migration:
        vm = self._inv.get_vm(vm_id)
        dest = self._hosts.get(request.destination_host_id)
        if dest is None:
            raise NotFound(f"no host with id {request.destination_host_id}",
                           code="host_not_found")
        src = self._hosts[vm.host_id]
        self._require_connected(src)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is already migrating ({vm.migration_id})",
                           code="vm_migrating")
        if dest is src:
            raise Conflict("Attempt to migrate guest to the same host", code="same_host")
        if not self._connected(dest):
            raise Conflict(f"destination host {dest.name} is disconnected",
                           code="host_disconnected")
        # Decide on libvirt's state now, not on the last event.
        await self._refresh_domain(src, vm_id)
        vm = self._inv.get_vm(vm_id)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is already migrating ({vm.migration_id})",
                           code="vm_migrating")
        if vm.host_id == dest.id:
            raise Conflict("Attempt to migrate guest to the same host", code="same_host")
        src = self._hosts[vm.host_id]
        self._require_connected(src)
        if vm.status not in ACTIVE_STATUSES:
            raise Conflict("domain is not running", code="vm_not_running")
        if vm.status == "pmsuspended":
            raise Conflict("domain is PM-suspended", code="vm_pmsuspended")
        job_id = secrets.token_hex(6)
        while job_id in self._jobs:
            job_id = secrets.token_hex(6)
        seq = next(self._seq)
        job = _Job(job_id, seq, vm.id, src.id, request, self.now())
        self._jobs.add(job, seq)
        self._jobs_by_vm[vm.id] = job
        self._recompute(vm.id)
        self._spawn(self._run_migration(job))
        return job.snapshot()

    async def cancel_migration(self, migration_id: str) -> Migration:
        job = self._job(migration_id)
        if job.status in FINAL_MIGRATION_STATUSES:
            raise Conflict(f"migration {job.id} already {job.status}", code="migration_finished")
        job.cancel_requested = True
        src = self._hosts[job.source_host_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._cancel_timeout
        while not job.done.is_set() and loop.time() < deadline:
            dom, conn = job.dom, src.conn
            if dom is None or conn is None:
                # Not begun (the job sees the request before it calls libvirt), or the source
                # is gone (the migration call fails by itself).
                await self._wait(job.done, deadline - loop.time())
                break
            try:
                await self._run(src, conn, functools.partial(_abort_job, dom=dom),
                                "abort migration")
                break
            except Conflict:
                # No libvirt job yet (still setting up) or already over: look again shortly.
                await self._wait(job.done, min(0.1, deadline - loop.time()))
            except BackendError as err:
                log.warning("migration %s: abortJob on %s failed: %s", job.id, src.name,
                            err.detail)
                break
        await self._wait(job.done, deadline - loop.time())
        if job.status == "completed":
            raise Conflict(f"migration {job.id} already completed", code="migration_finished")
        return job.snapshot()

    # ------------------------------------------------------------ metrics

    async def vm_metrics(self, vm_id: str, window: MetricsWindow) -> MetricSeries:
        self._inv.get_vm(vm_id)
        return self._metrics.vms.get(vm_id, Series()).window(vm_id, window, self.now())

    async def host_metrics(self, host_id: str, window: MetricsWindow) -> MetricSeries:
        self._inv.get_host(host_id)
        return self._metrics.hosts.get(host_id, Series()).window(host_id, window, self.now())

    async def sample_now(self) -> None:
        """Take one metrics sample of every connected host (the sampler's step, for tests too)."""
        hosts = [h for h in self._order if h.conn is not None]
        results = await asyncio.gather(
            *(self._run(h, h.conn, functools.partial(_read_stats, skip=self._migrating_on(h)),
                        "sample statistics") for h in hosts),
            return_exceptions=True)
        for h, result in zip(hosts, results, strict=True):
            if not isinstance(result, HostSample):
                continue  # a gap: the host could not be sampled
            listed = self._listed_on(h)
            self._metrics.record_host(
                h.id, result, host_cpus=self._inv.hosts[h.id].cpus,
                vm_info={u: (d.vcpus, d.memory_mib) for u, d in h.domains.items()},
                listed_here={v.id for v in listed},
                inactive_here={v.id for v in listed if v.status not in ACTIVE_STATUSES})
        self._metrics.trim(self.now(), set(self._inv.vms))

    def _migrating_on(self, h: _Host) -> frozenset[str]:
        return frozenset(job.vm_id for job in self._jobs_by_vm.values()
                         if h.id in (job.source_host_id, job.request.destination_host_id))

    def _listed_on(self, h: _Host) -> list[Vm]:
        """The VMs the inventory lists under ``h`` (each has a copy on ``h``)."""
        vms = (self._inv.vms.get(uuid) for uuid in h.domains)
        return [vm for vm in vms if vm is not None and vm.host_id == h.id]

    async def _sampler_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sample_seconds)
            try:
                await self.sample_now()
            except Exception:  # the sampler must outlive any one bad sample
                log.exception("metrics sampling failed")

    async def resync_now(self) -> None:
        """Re-read every connected host's domains now."""
        await asyncio.gather(*(self._resync(h) for h in self._order if h.conn is not None),
                             return_exceptions=True)

    # ------------------------------------------------------------ connections

    def _connected(self, h: _Host) -> bool:
        return h.conn is not None and self._inv.hosts[h.id].status == "connected"

    def _require_connected(self, h: _Host) -> None:
        if not self._connected(h):
            raise Unavailable(f"host {h.name} is disconnected", code=HOST_DISCONNECTED)

    def _open(self, h: _Host, gen: int, loop: asyncio.AbstractEventLoop
              ) -> tuple[Any, list[int], list[Any]]:
        """Open and wire one connection (worker thread)."""
        conn = libvirt.open(h.uri)
        post = functools.partial(self._post, loop, h.id, gen)
        try:
            with contextlib.suppress(libvirt.libvirtError):  # local drivers have no keepalive
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            with contextlib.suppress(libvirt.libvirtError):
                conn.registerCloseCallback(
                    lambda _c, reason, _o: post("closed", "", reason), None)
            ids = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                    lambda _c, dom, _ev, _detail, _o: post("domain", dom.UUIDString(), None),
                    None),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                    lambda _c, dom, _o: post("domain", dom.UUIDString(), None), None),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                    lambda _c, dom, stats, _o: post("job", dom.UUIDString(), dict(stats)), None),
            ]
            info = conn.getInfo()
        except BaseException:
            _close_connection(conn, [])
            raise
        return conn, ids, info

    def _post(self, loop: asyncio.AbstractEventLoop, host_id: str, gen: int, kind: str,
              uuid: str, payload: Any) -> None:
        """Hand an event from libvirt's event thread to the asyncio loop; nothing else."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(self._on_event, host_id, gen, kind, uuid, payload)

    def _on_event(self, host_id: str, gen: int, kind: str, uuid: str, payload: Any) -> None:
        h = self._hosts.get(host_id)
        if h is None or self._closed or h.conn is None or h.gen != gen:
            return  # an event of a connection we already dropped
        if kind == "closed":
            self._lost(h, f"connection closed by libvirt (reason {payload})")
            return
        if kind == "job":
            job = self._jobs_by_vm.get(uuid)
            if job is not None and job.source_host_id == host_id:
                job.final_stats = payload
                job.completed_event.set()
        h.dirty.add(uuid)
        if h.wake is not None:
            h.wake.set()

    async def _connect(self, h: _Host) -> bool:
        loop = asyncio.get_running_loop()
        gen = next(self._gens)
        fut = self._in_pool(functools.partial(self._open, h, gen, loop))
        try:
            async with asyncio.timeout(self._connect_timeout):
                conn, ids, info = await asyncio.shield(fut)
        except TimeoutError:
            log.warning("host %s: no answer from %s within %g s", h.name, h.uri,
                        self._connect_timeout)
            fut.add_done_callback(self._close_late)
            return False
        except libvirt.libvirtError as exc:
            log.info("host %s: cannot connect to %s: %s", h.name, h.uri, translate(exc).detail)
            return False
        if self._closed:
            await self._in_pool(functools.partial(_close_connection, conn, ids))
            return False
        h.conn, h.gen, h.callback_ids = conn, gen, ids
        host = self._inv.hosts[h.id]
        self._inv.put_host(replace(host, cpus=int(info[2]), memory_mib=int(info[1])))
        try:
            await self._resync(h)
        except BackendError as err:
            log.warning("host %s: connected but cannot list domains: %s", h.name, err.detail)
            self._drop(h)
            return False
        self._inv.set_host_status(h.id, "connected", self.now())
        log.info("host %s connected (%s)", h.name, h.uri)
        return True

    def _close_late(self, fut: asyncio.Future[Any]) -> None:
        """A connection that opened after we gave up on it: close it."""
        if fut.cancelled() or fut.exception() is not None or self._pool is None:
            return
        conn, ids, _info = fut.result()
        with contextlib.suppress(RuntimeError):
            self._pool.submit(_close_connection, conn, ids)

    def _drop(self, h: _Host) -> None:
        conn, ids = h.conn, h.callback_ids
        h.conn, h.gen, h.callback_ids = None, 0, []
        if conn is not None and self._pool is not None:
            with contextlib.suppress(RuntimeError):
                self._pool.submit(_close_connection, conn, ids)

    def _lost(self, h: _Host, why: str) -> None:
        if h.conn is None:
            return
        log.warning("host %s disconnected: %s", h.name, why)
        self._drop(h)
        self._inv.set_host_status(h.id, "disconnected", self.now())
        self._metrics.forget_host(h.id)
        for job in self._jobs_by_vm.values():
            if job.request.destination_host_id == h.id:
                job.dest_lost = True
        self._start_reconnect(h)

    def _start_reconnect(self, h: _Host) -> None:
        if self._closed or (h.reconnect is not None and not h.reconnect.done()):
            return
        h.reconnect = self._spawn(self._reconnect_loop(h))

    async def _reconnect_loop(self, h: _Host) -> None:
        delay = self._reconnect_min
        while not self._closed:
            await asyncio.sleep(delay)
            if await self._connect(h):
                return
            delay = min(delay * 2, self._reconnect_max)

    def _check_link_soon(self, h: _Host, conn: Any) -> None:
        """After a failed call: if the connection is dead, the host is disconnected."""
        if h.conn is not conn or self._closed:
            return

        async def check() -> None:
            try:
                async with asyncio.timeout(5):
                    alive = await self._in_pool(conn.isAlive)
            except (TimeoutError, libvirt.libvirtError):
                alive = 0
            if not alive and h.conn is conn:
                self._lost(h, "the connection is not alive")

        self._spawn(check())

    # ------------------------------------------------------------ calls

    def _in_pool(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._pool is None:
            raise Unavailable("the libvirt backend is not started", code="backend_stopped")
        return asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _run(self, h: _Host, conn: Any, fn: Callable[[Any], T], what: str,
                   timeout: float | None = None) -> T:
        """``fn(conn)`` in a worker thread, bounded, with libvirt errors translated."""
        limit = self._call_timeout if timeout is None else timeout
        t0, ok = time.perf_counter(), False
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the call's result, and a task then outlives close().
            async with asyncio.timeout(limit):
                result = await self._in_pool(functools.partial(fn, conn))
                ok = True
                return result
        except TimeoutError:
            self._check_link_soon(h, conn)
            raise Unavailable(f"host {h.name} did not answer ({what}) within {limit:g} s",
                              code="host_busy") from None
        except libvirt.libvirtError as exc:
            self._check_link_soon(h, conn)
            raise translate(exc) from None
        finally:
            if self.call_observer is not None:
                self.call_observer(what, time.perf_counter() - t0, ok)

    async def _call(self, h: _Host, fn: Callable[[Any], T], what: str) -> T:
        self._require_connected(h)
        return await self._run(h, h.conn, fn, what)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ inventory upkeep

    async def _worker(self, h: _Host) -> None:
        """Applies events (one domain) and resync requests (whole host), one at a time."""
        assert h.wake is not None
        while not self._closed:
            await h.wake.wait()
            h.wake.clear()
            if self._closed:
                return
            try:
                if h.full:
                    h.full = False
                    h.dirty.clear()
                    await self._resync(h)
                while h.dirty and not h.full:
                    await self._refresh_domain(h, h.dirty.pop())
            except BackendError as err:
                log.debug("host %s: refresh failed: %s", h.name, err.detail)
            except Exception:  # the worker must outlive any one bad refresh
                log.exception("host %s: refresh failed", h.name)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_seconds)
            self._resync_all_soon()

    def _resync_soon(self, h: _Host) -> None:
        if h.conn is not None and h.wake is not None:
            h.full = True
            h.wake.set()

    def _resync_all_soon(self) -> None:
        for h in self._order:
            self._resync_soon(h)

    async def _resync(self, h: _Host) -> None:
        assert h.lock is not None
        async with h.lock:
            conn = h.conn
            if conn is None:
                return
            snapshot = await self._run(h, conn, _read_all, "list domains")
            if h.conn is not conn:
                return
            old, h.domains = h.domains, snapshot
            for uuid in old.keys() | snapshot.keys():
                if old.get(uuid) != snapshot.get(uuid):
                    self._recompute(uuid)

    async def _refresh_domain(self, h: _Host, uuid: str) -> None:
        assert h.lock is not None
        async with h.lock:
            conn = h.conn
            if conn is None:
                return
            dom = await self._run(h, conn, functools.partial(_read_one, uuid=uuid),
                                  "read domain")
            if h.conn is not conn:
                return
            old = h.domains.get(uuid)
            if dom is None:
                h.domains.pop(uuid, None)
            else:
                h.domains[uuid] = dom
            if old != dom:
                self._recompute(uuid)

    def _recompute(self, uuid: str) -> None:
        """The one Vm record for a UUID, from what every host reports about it."""
        t = self.now()
        copies = [(h, h.domains[uuid]) for h in self._order if uuid in h.domains]
        old = self._inv.vms.get(uuid)
        if not copies:
            self._inv.remove_vm(uuid, t)
            return
        job = self._jobs_by_vm.get(uuid)
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
            self._inv.remove_vm(uuid, t)  # the inventory keys VMs by name: re-add a rename
        self._inv.put_vm(vm, t)

    # ------------------------------------------------------------ migrations

    def _job(self, migration_id: str) -> _Job:
        return self._jobs.get(migration_id)

    def _migration_call(self, job: _Job, dest: _Host) -> Callable[[], None]:
        r = job.request
        flags = libvirt.VIR_MIGRATE_PEER2PEER
        if r.live:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if r.persistent:
            flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
        if r.undefine_source:
            flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        if r.copy_storage == "all":
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        elif r.copy_storage == "inc":
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
        params: dict[str, Any] = {}
        if self.migration_bandwidth_mib > 0:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.migration_bandwidth_mib
        dom = job.dom
        return functools.partial(dom.migrateToURI3, dest.migration_uri, params, flags)

    async def _run_migration(self, job: _Job) -> None:
        src = self._hosts[job.source_host_id]
        dest = self._hosts[job.request.destination_host_id]
        status: MigrationStatus = "completed"
        error: str | None = None
        try:
            if job.cancel_requested:
                raise Conflict("migration job was cancelled by the client", code=ABORTED)
            conn = src.conn
            if conn is None:
                raise Unavailable("lost connection to the source host", code=HOST_DISCONNECTED)
            job.dom = await self._run(src, conn, functools.partial(_lookup, uuid=job.vm_id),
                                      "look up the domain")
            if job.cancel_requested:
                raise Conflict("migration job was cancelled by the client", code=ABORTED)
            job.status, job.started_at = "running", self.now()
            poller = self._spawn(self._poll_progress(job, src, conn))
            try:
                await _in_daemon_thread(self._migration_call(job, dest), f"migrate-{job.id}")
            finally:
                poller.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes the job's outcome, never an escape
            err = translate(exc)
            if err.code == ABORTED or job.cancel_requested:
                status, error = "cancelled", err.detail
            else:
                status, error = "failed", err.detail
                if job.dest_lost:
                    error = f"lost connection to the destination host during migration: {error}"
        if status == "completed":
            await self._wait(job.completed_event, 1.0)  # final numbers come with the event
            job.take_progress(job.final_stats or {}, final=True)
            job.remaining, job.percent = 0, 100.0
        # The VM is where libvirt says it is: read both hosts before answering the outcome.
        await asyncio.gather(*(self._resync(h) for h in (src, dest) if h.conn is not None),
                             return_exceptions=True)
        job.status, job.error, job.finished_at, job.dom = status, error, self.now(), None
        if self._jobs_by_vm.get(job.vm_id) is job:
            del self._jobs_by_vm[job.vm_id]
        self._recompute(job.vm_id)
        job.done.set()
        log.info("migration %s of %s: %s%s", job.id, job.vm_id, status,
                 f" ({error})" if error else "")

    async def _poll_progress(self, job: _Job, src: _Host, conn: Any) -> None:
        while True:
            await asyncio.sleep(self._progress_seconds)
            dom = job.dom
            if dom is None:
                return
            try:
                stats = await self._run(src, conn, functools.partial(_job_stats, dom=dom),
                                        "job stats",
                                        timeout=max(5.0, self._progress_seconds))
            except BackendError:
                continue  # the job's last moments (55, then 42): keep the last good numbers
            job.take_progress(stats)


def _in_daemon_thread(fn: Callable[[], T], name: str) -> Awaitable[T]:
    """Run a long blocking call in its own daemon thread (it must never hold up exit)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut
