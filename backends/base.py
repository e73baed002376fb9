"""The one interface both backends implement, and the vocabulary it speaks.

Vocabulary
----------
host
    A physical server running a hypervisor (one libvirt connection). Its ``id``
    is stable and assigned by us, not by libvirt (libvirt's own host identity
    is not reliable). ``status`` is ``connected`` while we can talk to it.
    ``sync_cursor`` is a per-host integer that grows on every change we observe
    on that host (VM added, removed, changed state, host status changed). It is
    the Unix time, in seconds, of the newest change, but bumped by at least one
    per change, so it never repeats and never goes back even when the clock
    does. A client that saw cursor ``c`` and now sees a larger one knows the
    host's inventory changed since.
VM
    A libvirt domain. ``id`` is the domain UUID. ``status`` is libvirt's domain
    state name (``running``, ``blocked``, ``paused``, ``shutdown`` - being shut
    down -, ``shutoff``, ``crashed``, ``pmsuspended``, ``nostate``). A VM is
    active on at most one host, and listed once, under ``host_id``: where it
    runs or, when shut off, where its persistent definition lives.
    ``persistent`` is false for a transient domain, which vanishes when it
    stops (libvirt's semantics). ``also_defined_on`` lists hosts that keep a
    stale inactive definition (a migration without ``undefine_source``).
action
    A power operation: ``start`` (create), ``stop`` (ACPI shutdown: returns at
    once, the guest powers off later or never), ``stop`` + ``force`` (destroy:
    off at once), ``restart`` (ACPI reboot) and ``restart`` + ``force`` (hard
    reset), ``suspend`` (pause vCPUs), ``resume``. Actions that are no-ops in
    QEMU's driver (suspend a paused VM, resume a running one) succeed; actions
    that libvirt refuses (start a running VM, stop a shut-off one) raise
    :class:`Conflict`.
migration job
    Moving a VM to another host. ``initiated`` when accepted, ``running``
    while memory is copied (``progress``), then exactly one of ``completed``,
    ``failed`` (``error`` says why) or ``cancelled``. Only ``completed`` moves
    the VM; a failed or cancelled job leaves it running on its source.

Errors are the :class:`BackendError` subclasses below; each carries the HTTP
status the API answers with, so handlers never translate anything.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

VmStatus = Literal[
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"
]
HostStatus = Literal["connected", "disconnected"]
ActionName = Literal["start", "stop", "restart", "suspend", "resume"]
MigrationStatus = Literal["initiated", "running", "completed", "failed", "cancelled"]
CopyStorage = Literal["none", "all", "inc"]

VM_STATUSES: tuple[VmStatus, ...] = (
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended",
)
# Active: the domain has a QEMU process. libvirt may preserve a crashed one; the API
# treats `crashed` as not running, and `start` restarts it.
ACTIVE_STATUSES: frozenset[str] = frozenset(
    {"running", "blocked", "paused", "shutdown", "pmsuspended"}
)
FINAL_MIGRATION_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


# --------------------------------------------------------------------------- errors


class BackendError(Exception):
    """A request that was understood but cannot be done; maps to one HTTP status."""

    status = 500
    code = "backend_error"
    title = "Backend error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class InvalidArgument(BackendError):
    status, code, title = 400, "invalid_argument", "Bad Request"


class NotFound(BackendError):
    status, code, title = 404, "not_found", "Not Found"


class Conflict(BackendError):
    """The request is valid but the resource's current state does not allow it."""

    status, code, title = 409, "conflict", "Conflict"


class NotSupported(BackendError):
    status, code, title = 501, "not_supported", "Not Implemented"


class Unavailable(BackendError):
    """The host (or the backend itself) cannot be reached right now."""

    status, code, title = 503, "unavailable", "Service Unavailable"

    def __init__(self, detail: str, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Host:
    id: str
    hostname: str
    status: HostStatus
    sync_cursor: int
    cpus: int
    memory_mib: int
    vm_count: int


@dataclass(frozen=True, slots=True)
class Vm:
    id: str
    name: str
    host_id: str
    status: VmStatus
    vcpus: int
    memory_mib: int
    persistent: bool
    also_defined_on: tuple[str, ...] = ()
    migration_id: str | None = None


@dataclass(frozen=True, slots=True)
class MigrationRequest:
    destination_host_id: str
    live: bool = True
    persistent: bool = True
    undefine_source: bool = True
    copy_storage: CopyStorage = "none"


@dataclass(frozen=True, slots=True)
class MigrationProgress:
    data_total_bytes: int
    data_processed_bytes: int
    data_remaining_bytes: int
    percent: float


@dataclass(frozen=True, slots=True)
class Migration:
    id: str
    vm_id: str
    source_host_id: str
    destination_host_id: str
    live: bool
    persistent: bool
    undefine_source: bool
    copy_storage: CopyStorage
    status: MigrationStatus
    progress: MigrationProgress
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    @classmethod
    def of(cls, *, id: str, vm_id: str, source_host_id: str,  # noqa: A002
           request: MigrationRequest, status: MigrationStatus, progress: MigrationProgress,
           created_at: float, started_at: float | None, finished_at: float | None,
           error: str | None) -> Migration:
        """A job's record, with the flags it was asked for taken from its request."""
        r = request
        return cls(id, vm_id, source_host_id, r.destination_host_id, r.live, r.persistent,
                   r.undefine_source, r.copy_storage, status, progress, created_at,
                   started_at, finished_at, error)


@dataclass(frozen=True, slots=True)
class MetricPoint:
    t: int
    cpu_percent: float
    memory_used_bytes: int
    disk_read_bps: float
    disk_write_bps: float
    net_rx_bps: float
    net_tx_bps: float


@dataclass(frozen=True, slots=True)
class MetricSeries:
    resource_id: str
    start: int
    end: int
    step: int
    points: tuple[MetricPoint, ...]


@dataclass(frozen=True, slots=True)
class MetricsWindow:
    """A time window ``[start, end]`` sampled every ``step`` seconds (Unix seconds).

    Build it with :meth:`of`: a missing end is now, a missing start is an hour
    before the end, and a step too fine for the window is widened so the answer
    holds at most ``MAX_POINTS`` points. A start after the end is refused
    (``invalid_window``): an empty series would read as "no data".
    """

    start: int
    end: int
    step: int

    MAX_POINTS = 1440
    DEFAULT_SPAN = 3600

    @classmethod
    def of(cls, start: int | None, end: int | None, step: int | None, now: float) -> MetricsWindow:
        end = int(now) if end is None else end
        start = end - cls.DEFAULT_SPAN if start is None else start
        if start > end:
            raise InvalidArgument(f"start ({start}) is after end ({end})", code="invalid_window")
        step = max(1, step or 60)
        span = max(0, end - start)
        if span // step + 1 > cls.MAX_POINTS:
            step = -(-span // (cls.MAX_POINTS - 1))
        return cls(start, end, step)

    def times(self) -> range:
        """Sample instants: multiples of ``step`` inside the window (empty if end < start)."""
        first = self.start + (-self.start) % self.step
        return range(first, self.end + 1, self.step)


def dry_run_job(vm: Vm, request: MigrationRequest, t: float) -> Migration:
    """What a migration's dry run answers: the job it would start, without an id (none exists)."""
    return Migration.of(id="", vm_id=vm.id, source_host_id=vm.host_id, request=request,
                        status="initiated", progress=MigrationProgress(0, 0, 0, 0.0),
                        created_at=t, started_at=None, finished_at=None, error=None)


# --------------------------------------------------------------------------- pages

T = TypeVar("T")


CursorKind = Literal["hosts", "vms", "migrations"]

# What a position looks like in each list (its sort key): a cursor that decodes to
# anything else was not issued by this server for this list.
_CURSOR_KEYS: dict[str, re.Pattern[str]] = {
    "hosts": re.compile(r"[^\x00]+\x00[^\x00]+"),
    "vms": re.compile(r"[^\x00]+\x00[^\x00]+"),
    "migrations": re.compile(r"[0-9]{12}"),
}


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int = 100
    cursor: str | None = None

    def after(self, kind: CursorKind) -> str | None:
        """The key the previous page ended at, decoded from the opaque cursor.

        A cursor names the list it came from: one that does not decode, or was
        issued for another list (a /vms cursor on /hosts), is refused with
        ``invalid_cursor`` rather than read as some position, which would answer
        a silent empty page that reads as the end of the list.
        """
        if self.cursor is None:
            return None
        try:
            text = self.cursor + "=" * (-len(self.cursor) % 4)
            raw = base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8")
        except (binascii.Error, ValueError):
            raw = ""
        prefix, _, key = raw.partition(":")
        if prefix != kind or not _CURSOR_KEYS[kind].fullmatch(key):
            raise InvalidArgument(f"the cursor was not issued for this list of {kind}: pass "
                                  "the next_cursor of its previous page, or none",
                                  code="invalid_cursor")
        return key


def encode_cursor(kind: CursorKind, key: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class VmFilter:
    host_id: str | None = None
    status: VmStatus | None = None


@dataclass(frozen=True, slots=True)
class MigrationFilter:
    vm_id: str | None = None
    status: MigrationStatus | None = None


@dataclass(slots=True)
class BackendInfo:
    kind: str
    details: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- interface


@runtime_checkable
class Backend(Protocol):
    """What the handlers may ask of a cluster. Both backends implement exactly this.

    Every method may raise the errors above and nothing else: implementations
    translate their own failures (libvirt errors) before they get here.
    Methods are coroutines so that a backend doing blocking I/O can move it off
    the event loop; none of them blocks.
    """

    info: BackendInfo

    async def start(self) -> None:
        """Connect, load inventory. Called once before serving."""

    async def close(self) -> None:
        """Release connections and background tasks."""

    async def list_hosts(self, page: PageRequest) -> Page[Host]: ...

    async def get_host(self, host_id: str) -> Host: ...

    async def list_vms(self, page: PageRequest, flt: VmFilter) -> Page[Vm]: ...

    async def get_vm(self, vm_id: str) -> Vm: ...

    async def vm_action(self, vm_id: str, action: ActionName, force: bool,
                        dry_run: bool = False) -> Vm:
        """Do a power action; answer the VM as it is right after libvirt returned.

        ``dry_run``: make every check the action makes (the VM, its host, a job, the
        VM's state as the hypervisor reports it) and raise what it would raise, but
        change nothing; answer the VM as it is.
        """

    async def migrate(self, vm_id: str, request: MigrationRequest,
                      dry_run: bool = False) -> Migration:
        """Accept a migration job and return it ``initiated``; it runs in the background.

        ``dry_run``: every check, nothing started; the answer is :func:`dry_run_job`.
        """

    async def list_migrations(self, page: PageRequest, flt: MigrationFilter) -> Page[Migration]: ...

    async def get_migration(self, migration_id: str) -> Migration: ...

    async def cancel_migration(self, migration_id: str) -> Migration:
        """Abort a job that has not finished; a finished one raises Conflict."""

    async def vm_metrics(self, vm_id: str, window: MetricsWindow) -> MetricSeries: ...

    async def host_metrics(self, host_id: str, window: MetricsWindow) -> MetricSeries: ...

    def now(self) -> float:
        """The backend's clock (virtual in the simulator), Unix seconds."""


# --------------------------------------------------------------------------- ordering
# Both backends list in the same order so that pages and cursors mean the same
# thing whichever backend answers.


# ------------------------------------------------------------------ the simulator's powers
# What only a simulated backend can do: a scenario, a virtual clock, faults and latency.
# Asked one way, :func:`simulator_of`; the server injects the latency (cockpit_api/app.py)
# and mounts the control plane (handlers/control.py) when a backend has these powers.


@dataclass(slots=True)
class Fault:
    """A failure armed by the control plane for the next matching call(s).

    ``vm_id`` and ``host_id`` narrow it to calls on that VM, or on VMs of that
    host (a migration matches its source and its destination), so that one
    test's fault cannot fire in another test's flow.
    """

    operation: str  # "action" | "migrate"
    mode: str = "reject"  # "reject": the call errors; "fail": the migration fails mid-way
    status: int = 503
    message: str = "injected fault"
    at_percent: float = 50.0
    remaining: int = 1
    vm_id: str | None = None
    host_id: str | None = None

    def matches(self, operation: str, vm: Vm, destination: str | None) -> bool:
        if self.operation != operation:
            return False
        if self.vm_id is not None and self.vm_id != vm.id:
            return False
        return self.host_id is None or self.host_id in (vm.host_id, destination)


@dataclass(slots=True)
class LatencyRule:
    """Extra delay for requests whose path (under the base URL) matches a glob."""

    ms: int
    path: str  # fnmatch glob: "/api/v1/vms/*/migrate", "/api/v1/*/metrics"
    method: str | None = None  # None: every method

    def matches(self, path: str, method: str) -> bool:
        return (self.method is None or self.method == method) \
            and fnmatch.fnmatchcase(path, self.path)


class SimClock(Protocol):
    """Virtual time: ``now`` moves at ``speed`` virtual seconds per real second, and jumps
    on ``advance``."""

    speed: float

    def now(self) -> float: ...
    def advance(self, seconds: float) -> None: ...


class DemoUser(Protocol):
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def role(self) -> str: ...


class ScenarioInfo(Protocol):
    """A loaded scenario, as the server reads it (cockpit_api/backends/sim/scenario.py)."""

    @property
    def name(self) -> str: ...
    @property
    def hosts(self) -> Sequence[object]: ...
    @property
    def vms(self) -> Sequence[object]: ...
    @property
    def users(self) -> Sequence[DemoUser]: ...


@runtime_checkable
class Simulator(Protocol):
    """The simulator's extra powers, on top of :class:`Backend`."""

    latency_ms: int  # added to every API answer unless a rule matches
    latency_rules: list[LatencyRule]  # newest first

    @property
    def clock(self) -> SimClock: ...
    @property
    def scenario(self) -> ScenarioInfo: ...
    @property
    def faults(self) -> Any: ...  # the armed faults, oldest first (a mutable sequence)

    def settle(self) -> None: ...
    def next_due(self) -> float | None: ...
    def advance(self, seconds: float) -> float: ...
    def reset(self, scenario: Any = None, *, built: Any = None) -> None: ...
    def build_reset(self, scenario: Any = None) -> Any: ...  # what reset(built=) installs
    def set_host_status(self, host_id: str, status: str) -> Host: ...
    def inject_fault(self, fault: Fault) -> None: ...
    def set_latency(self, ms: int, path: str | None = None, method: str | None = None) -> None: ...
    def summary(self) -> dict[str, Any]: ...


def simulator_of(backend: object) -> Simulator | None:
    """The backend's simulator powers, or None (real hosts): the one way to ask."""
    return backend if isinstance(backend, Simulator) else None


def vm_sort_key(name: str, vm_id: str) -> str:
    return f"{name}\x00{vm_id}"


def host_sort_key(hostname: str, host_id: str) -> str:
    return f"{hostname}\x00{host_id}"
