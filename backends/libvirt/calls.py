"""What runs on a connection's owner thread: functions of the ``virConnect``.

Each takes the connection first and returns plain data (never a libvirt
object: a ``virDomain`` holds a reference on its connection, and must be freed
on the thread that owns it). They may raise ``libvirtError`` (translated by
the caller) or a :class:`~cockpit_api.backends.base.BackendError`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Literal

import libvirt

from cockpit_api.backends.base import ACTIVE_STATUSES, Conflict, NotFound, VmStatus
from cockpit_api.backends.libvirt.errors import translate
from cockpit_api.backends.libvirt.metrics import HostSample

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

ACTIONS = frozenset({"start", "stop", "restart", "suspend", "resume"})

# Which side of a migration a domain is on, as libvirt says.
MigrationSide = Literal["in", "out"] | None


def status_of(state: int) -> VmStatus:
    """libvirt's virDomainState as the API's status name."""
    return _STATUS.get(state, "nostate")


@dataclass(frozen=True, slots=True)
class Dom:
    """One domain as one host's libvirt reports it.

    ``migration`` is ``"in"`` for the copy a destination holds while a migration
    comes in (active, paused for the migration: never the VM itself), ``"out"``
    for a source seen paused by its outgoing migration's last phase.
    """

    uuid: str
    name: str
    status: VmStatus
    vcpus: int
    memory_mib: int
    persistent: bool
    active: bool
    migration: MigrationSide = None


def _migration_side(dom: Any) -> MigrationSide:
    """For an active paused domain: is it paused by a migration, and which way?"""
    state, reason = dom.state()
    if state != libvirt.VIR_DOMAIN_PAUSED or reason != libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
        return None
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError as exc:
        # QEMU answers only on the source: "migration statistics are available only on the
        # source host" (VIR_ERR_OPERATION_UNSUPPORTED) is the destination's incoming copy.
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
            return "in"
        return None
    operation = int(stats.get("operation", 0) or 0)
    if operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN:
        return "in"
    if operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
        return "out"
    return None


def _dom_of(dom: Any, uuid: str, persistent: bool, active: bool) -> Dom:
    state, max_kib, _mem, vcpus, _cpu = dom.info()
    side: MigrationSide = None
    if active and state == libvirt.VIR_DOMAIN_PAUSED:
        side = _migration_side(dom)
    return Dom(uuid, dom.name(), status_of(state), int(vcpus), int(max_kib) // 1024,
               persistent, active, side)


def read_all(conn: Any) -> dict[str, Dom]:
    listed = conn.listAllDomains(0)
    active = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    persistent = {d.UUIDString()
                  for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)}
    out: dict[str, Dom] = {}
    for dom in listed:
        uuid = dom.UUIDString()
        try:
            out[uuid] = _dom_of(dom, uuid, uuid in persistent, uuid in active)
        except libvirt.libvirtError as exc:
            if not isinstance(translate(exc), NotFound):
                raise
            # gone since the list: the next event or resync says where it went
    return out


def read_one(conn: Any, uuid: str) -> Dom | None:
    try:
        dom = conn.lookupByUUIDString(uuid)
        return _dom_of(dom, uuid, bool(dom.isPersistent()), bool(dom.isActive()))
    except libvirt.libvirtError as exc:
        err = translate(exc)
        if isinstance(err, NotFound):
            return None
        raise err from None


def read_stats(conn: Any, skip: frozenset[str] = frozenset()) -> HostSample:
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


def do_action(conn: Any, vm_id: str, action: str, force: bool, dry_run: bool = False) -> None:
    """Act on the domain's current state with the simulator's refusals and no-ops.

    ``dry_run``: read the state and refuse what would be refused, but call nothing.
    """
    dom = conn.lookupByUUIDString(vm_id)
    if dom.isActive() and _migration_side(dom) == "in":
        # Never act on a copy that a migration is still filling in (its source owns the VM).
        raise Conflict("this copy of the domain is an incoming migration", code="vm_migrating")
    status = status_of(dom.state()[0])
    steps = _action_steps(status, bool(dom.isActive()), action, force)
    if not dry_run:
        for step in steps:
            getattr(dom, step)()


def _action_steps(status: VmStatus, has_process: bool, action: str, force: bool) -> list[str]:
    """The virDomain methods an action calls in this state, in order; Conflict if refused."""
    active = status in ACTIVE_STATUSES
    if action == "start":
        if active:
            raise Conflict("domain is already running", code="vm_running")
        # A crashed domain that libvirt preserved (on_crash=preserve) still has its
        # QEMU process: starting it again means tearing that down first.
        return ["destroy", "create"] if has_process else ["create"]
    if not active:
        raise Conflict("domain is not running", code="vm_not_running")
    if action == "stop":
        if force:
            return ["destroy"]
        if status == "paused":
            # QEMU refuses an ACPI shutdown of paused vCPUs (VIR_ERR_OPERATION_INVALID).
            raise Conflict("domain is paused: resume it first, or stop it with force",
                           code="vm_paused")
        return ["shutdown"]
    if action == "restart":
        return ["reset"] if force else ["reboot"]
    if action == "suspend":
        if status == "pmsuspended":
            raise Conflict("domain is PM-suspended", code="vm_pmsuspended")
        # Suspending a paused domain is a no-op in QEMU's driver.
        return [] if status == "paused" else ["suspend"]
    if action == "resume":
        if status == "pmsuspended":
            raise Conflict("cannot resume a domain in pmsuspended state", code="vm_pmsuspended")
        # Resuming a running domain is a no-op, as in the simulator.
        return ["resume"] if status == "paused" else []
    return []


def job_stats(conn: Any, uuid: str) -> dict[str, Any] | None:
    """The domain's current job (``type``, ``operation``, counters); None: no such domain."""
    try:
        return dict(conn.lookupByUUIDString(uuid).jobStats())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def is_migrating_out(stats: dict[str, Any] | None) -> bool:
    if not stats:
        return False
    return (int(stats.get("type", 0) or 0) != libvirt.VIR_DOMAIN_JOB_NONE
            and int(stats.get("operation", 0) or 0)
            == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)


def abort_job(conn: Any, uuid: str) -> None:
    conn.lookupByUUIDString(uuid).abortJob()


def migrate(conn: Any, uuid: str, dest_uri: str, params: dict[str, Any], flags: int) -> None:
    conn.lookupByUUIDString(uuid).migrateToURI3(dest_uri, params, flags)


def is_alive(conn: Any) -> bool:
    return bool(conn.isAlive())
