"""The simulated cluster: the executable document of how a Cockpit cluster behaves.

Like Nova's fake driver, this file documents the semantics the real backend
has: the power state machine follows QEMU's libvirt driver (including its
no-ops and refusals), migrations take time, report progress from a bandwidth
model, fail when a host drops mid-way, and move the VM only when they
complete. Nothing sleeps: time is a :class:`VirtualClock`, and pending work is
a heap of events applied in order, each at its own due time, whenever anyone
looks (every public method "settles" first). The same seed, scenario and
sequence of calls and clock advances always give the same answers.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from cockpit_api.backends.base import (
    ACTIVE_STATUSES,
    FINAL_MIGRATION_STATUSES,
    ActionName,
    BackendError,
    BackendInfo,
    Conflict,
    Fault,
    Host,
    InvalidArgument,
    LatencyRule,
    MetricPoint,
    MetricSeries,
    MetricsWindow,
    Migration,
    MigrationFilter,
    MigrationRequest,
    MigrationStatus,
    NotFound,
    Page,
    PageRequest,
    Unavailable,
    Vm,
    VmFilter,
    VmStatus,
    dry_run_job,
)
from cockpit_api.backends.inventory import Inventory, JobTable, ResetObserver
from cockpit_api.backends.sim import metrics
from cockpit_api.backends.sim import scenario as scenarios
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.backends.sim.state import (
    _at_time,
    _index_at,
    _Job,
    _State,
    build_state,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
_HISTORY_LIMIT = 2000


class SimulatedBackend:
    """A Backend over a simulated cluster. Control-plane methods are extra."""

    def __init__(
        self,
        scenario: scenarios.Scenario,
        clock: VirtualClock | None = None,
        *,
        bandwidth_bytes_per_s: float = 512 * MIB,
        setup_seconds: float = 0.5,
        history_seconds: float = 86_400,
    ) -> None:
        self.clock = clock or VirtualClock(time.time(), speed=1.0)
        self.bandwidth = bandwidth_bytes_per_s
        self.setup_seconds = setup_seconds
        self.history_seconds = history_seconds
        self.latency_ms = 0  # every API answer, unless a rule below matches (the server adds it)
        self.latency_rules: list[LatencyRule] = []
        self.faults: deque[Fault] = deque()
        self.scenario = scenario
        self.info = BackendInfo("sim", {"scenario": scenario.name, "seed": scenario.seed})
        # Bumped on every reset, so that a reset world never hands out a migration id
        # it gave before (a UI caching jobs by id would show the old one).
        self._generation = 0
        self._s = self._build(scenario)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def now(self) -> float:
        return self.clock.now()

    # ------------------------------------------------------------ control plane

    def reset(self, scenario: scenarios.Scenario | None = None,
              *, built: tuple[int, _State] | None = None) -> None:
        """Back to the scenario's first state (or a new scenario's). The clock keeps running.

        ``built``: that state made beforehand by :meth:`build_reset` (in a thread).
        """
        if scenario is not None:
            self.scenario = scenario
            self.info = BackendInfo("sim", {"scenario": scenario.name, "seed": scenario.seed})
        self.faults.clear()
        self.latency_ms = 0
        self.latency_rules.clear()
        self._generation += 1
        state = built[1] if built is not None and built[0] == self._generation else None
        if state is None:  # none, or another reset came in between: its rng would repeat
            state = self._build(self.scenario)
        old, self._s = self._s, state
        # The change feed follows the new state; its clients must re-list everything.
        self._s.inv.observer, self._s.jobs.observer = old.inv.observer, old.jobs.observer
        if isinstance(old.inv.observer, ResetObserver):
            old.inv.observer.state_replaced()

    def set_host_status(self, host_id: str, status: str) -> Host:
        self._settle()
        s = self._s
        host = s.inv.get_host(host_id)
        t = self.now()
        if host.status != status:
            s.inv.set_host_status(host_id, status, t)
            s.host_history[host_id].append((t, status))
            if status == "disconnected":
                for job in s.jobs.values():
                    if job.status in FINAL_MIGRATION_STATUSES:
                        continue
                    if host_id == job.source_host_id:
                        self._finish_job(job, t, "failed", "lost connection to the source host")
                    elif host_id == job.request.destination_host_id:
                        self._finish_job(job, t, "failed",
                                         "lost connection to the destination host during migration")
        return s.inv.get_host(host_id)

    def inject_fault(self, fault: Fault) -> None:
        if fault.operation not in ("action", "migrate"):
            raise InvalidArgument("operation is action or migrate", code="bad_fault")
        if fault.mode == "fail" and fault.operation != "migrate":
            raise InvalidArgument("only a migration can fail mid-way", code="bad_fault")
        if fault.mode == "reject" and fault.status not in (409, 503):
            raise InvalidArgument("a rejection answers 409 or 503", code="bad_fault")
        self._settle()
        if fault.vm_id is not None:
            self._s.inv.get_vm(fault.vm_id)  # 404 now, not a fault that never fires
        if fault.host_id is not None:
            self._s.inv.get_host(fault.host_id)
        self.faults.append(fault)

    def set_latency(self, ms: int, path: str | None = None, method: str | None = None) -> None:
        """Without ``path``: every API answer. With it: a rule (0 removes it)."""
        if path is None:
            self.latency_ms = ms
            return
        method = method.upper() if method else None
        self.latency_rules = [r for r in self.latency_rules
                              if (r.path, r.method) != (path, method)]
        if ms:
            # The newest rule wins: it is looked at first.
            self.latency_rules.insert(0, LatencyRule(ms, path, method))

    def advance(self, seconds: float) -> float:
        self.clock.advance(seconds)
        self._settle()
        return self.now()

    def settle(self) -> None:
        """Apply what is due now: the change feed calls it while somebody listens."""
        self._settle()

    def next_due(self) -> float | None:
        """The virtual time of the next scheduled event, if any."""
        return self._s.events[0][0] if self._s.events else None

    @property
    def inventory(self) -> Inventory:
        return self._s.inv

    @property
    def jobs(self) -> JobTable[Any]:
        return self._s.jobs

    def summary(self) -> dict[str, Any]:
        self._settle()
        s = self._s
        now = self.now()
        return {
            "scenario": self.scenario.name,
            "seed": self.scenario.seed,
            "now": now,
            "now_iso": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
            "speed": self.clock.speed,
            "latency_ms": self.latency_ms,
            "latency_rules": [asdict(r) for r in self.latency_rules],
            "hosts": len(s.inv.hosts),
            "vms": len(s.inv.vms),
            "migrations_active": sum(
                1 for j in s.jobs.values() if j.status not in FINAL_MIGRATION_STATUSES),
            "faults_armed": len(self.faults),
            "faults": [asdict(f) for f in self.faults],
            "pending_events": len(s.events),
        }

    # ------------------------------------------------------------ reads

    async def list_hosts(self, page: PageRequest) -> Page[Host]:
        self._settle()
        return self._s.inv.page_hosts(page)

    async def get_host(self, host_id: str) -> Host:
        self._settle()
        return self._s.inv.get_host(host_id)

    async def list_vms(self, page: PageRequest, flt: VmFilter) -> Page[Vm]:
        self._settle()
        return self._s.inv.page_vms(page, flt)

    async def get_vm(self, vm_id: str) -> Vm:
        self._settle()
        return self._s.inv.get_vm(vm_id)

    async def list_migrations(self, page: PageRequest, flt: MigrationFilter) -> Page[Migration]:
        self._settle()
        t = self.now()
        return self._s.jobs.page(page, flt, lambda job: job.snapshot(t))

    async def get_migration(self, migration_id: str) -> Migration:
        self._settle()
        return self._job(migration_id).snapshot(self.now())

    # ------------------------------------------------------------ actions

    async def vm_action(self, vm_id: str, action: ActionName, force: bool,
                        dry_run: bool = False) -> Vm:
        self._settle()
        s = self._s
        vm = s.inv.get_vm(vm_id)
        self._take_fault("action", vm, dry_run=dry_run)
        self._require_host(vm.host_id)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is migrating ({vm.migration_id})", code="vm_migrating")
        do = self._plan_action(vm, action, force)
        # A dry run has made every check the real call makes (each refusal raised above):
        # the VM is answered as it is, and nothing is applied.
        return vm if dry_run else do(self.now())

    def _plan_action(self, vm: Vm, action: ActionName, force: bool) -> Callable[[float], Vm]:
        """Refuse what QEMU refuses (Conflict); else what the action does, applied at ``t``."""
        guest = self._s.guests[vm.id]
        active = vm.status in ACTIVE_STATUSES
        if action == "start":
            if active:
                raise Conflict("domain is already running", code="vm_running")
            return lambda t: self._set_status(vm, "running", t)
        if not active:
            raise Conflict("domain is not running", code="vm_not_running")
        if action == "stop":
            if force:
                return lambda t: self._power_off(vm, t)
            # ACPI shutdown: accepted now, acted on by the guest later (or never).
            # QEMU refuses it for a paused guest, which could not act on it.
            if vm.status == "paused":
                raise Conflict("domain is paused: resume it first, or stop it with force",
                               code="vm_paused")

            def shutdown(t: float) -> Vm:
                self._schedule_shutdown(vm, t)
                return vm
            return shutdown
        if action == "restart":
            # The guest's OS restarts inside, which forgets a pending ACPI shutdown. A
            # reset leaves libvirt's state as it was; a reboot (ACPI) wakes a guest that
            # is suspended to RAM or blocked, but not a paused one: its vCPUs are stopped.
            if force or vm.status == "paused":
                def forget(t: float) -> Vm:
                    guest.epoch += 1
                    return vm
                return forget
            return lambda t: self._set_status(vm, "running", t)
        if action == "suspend":
            if vm.status == "pmsuspended":
                raise Conflict("domain is PM-suspended", code="vm_pmsuspended")
            # Suspending a paused domain is a no-op in QEMU's driver.
            if vm.status == "paused":
                return lambda t: vm
            return lambda t: self._set_status(vm, "paused", t)
        if action == "resume":
            if vm.status == "pmsuspended":
                raise Conflict("cannot resume a domain in pmsuspended state", code="vm_pmsuspended")
            if vm.status != "paused":
                # QEMU refuses to resume a running domain; the API makes it a no-op so
                # that "make sure it runs" is idempotent on every driver.
                return lambda t: vm
            return lambda t: self._set_status(vm, "running", t)
        raise InvalidArgument(f"unknown action {action}", code="bad_action")

    async def migrate(self, vm_id: str, request: MigrationRequest,
                      dry_run: bool = False) -> Migration:
        self._settle()
        s = self._s
        vm = s.inv.get_vm(vm_id)
        dest = s.inv.hosts.get(request.destination_host_id)
        if dest is None:
            raise NotFound(f"no host with id {request.destination_host_id}",
                           code="host_not_found")
        fault = self._take_fault("migrate", vm, dest.id, dry_run=dry_run)
        self._require_host(vm.host_id)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is already migrating ({vm.migration_id})",
                           code="vm_migrating")
        if dest.id == vm.host_id:
            raise Conflict("Attempt to migrate guest to the same host", code="same_host")
        if dest.status != "connected":
            raise Conflict(f"destination host {dest.hostname} is disconnected",
                           code="host_disconnected")
        if vm.status not in ACTIVE_STATUSES:
            raise Conflict("domain is not running", code="vm_not_running")
        if vm.status == "pmsuspended":
            raise Conflict("domain is PM-suspended", code="vm_pmsuspended")
        t = self.now()
        if dry_run:
            return dry_run_job(vm, request, t)
        guest = s.guests[vm.id]
        total = vm.memory_mib * MIB
        if request.live:
            total += total // 10  # pages dirtied while copying are sent again
        if request.copy_storage == "all":
            total += guest.spec.disk_gib * GIB
        elif request.copy_storage == "inc":
            total += guest.spec.disk_gib * GIB // 10
        seq = next(s.seq)
        bandwidth, setup = s.links.get((vm.host_id, dest.id), (None, None))
        job = _Job(
            id=f"{s.rng.getrandbits(48):012x}", seq=seq, vm_id=vm.id,
            source_host_id=vm.host_id, request=request, status="initiated", created_at=t,
            total_bytes=total, bandwidth=bandwidth or self.bandwidth, prior_status=vm.status,
        )
        if fault is not None:
            job.fail_fraction = min(max(fault.at_percent, 0.0), 99.0) / 100.0
            job.fail_message = fault.message
        s.jobs.add(job, seq)
        # A non-live migration pauses the guest while its memory is copied.
        status: VmStatus = "paused" if not request.live else vm.status
        self._put_vm(replace(vm, migration_id=job.id, status=status), t)
        self._at(t + (self.setup_seconds if setup is None else setup),
                 lambda when: self._run_job(job, when))
        return job.snapshot(t)

    async def cancel_migration(self, migration_id: str) -> Migration:
        self._settle()
        job = self._job(migration_id)
        if job.status in FINAL_MIGRATION_STATUSES:
            raise Conflict(f"migration {job.id} already {job.status}", code="migration_finished")
        t = self.now()
        self._finish_job(job, t, "cancelled", "migration job was cancelled by the client")
        return job.snapshot(t)

    # ------------------------------------------------------------ metrics

    async def vm_metrics(self, vm_id: str, window: MetricsWindow) -> MetricSeries:
        self._settle()
        self._s.inv.get_vm(vm_id)
        now = self.now()
        points = []
        for t in window.times():
            if t > now:
                break
            p = self._vm_point(vm_id, t)
            if p is not None and self._host_connected_at(p[1], t):
                points.append(p[0])
        return MetricSeries(vm_id, window.start, window.end, window.step, tuple(points))

    async def host_metrics(self, host_id: str, window: MetricsWindow) -> MetricSeries:
        self._settle()
        host = self._s.inv.get_host(host_id)
        now = self.now()
        # Sorted: float sums depend on their order, and a set's order on the process's hash
        # seed (two servers with the same seed and clock answered 5.72 and 5.73).
        members = sorted(self._s.host_members.get(host_id, ()))
        copies = [j.copy for j in self._s.jobs.values() if j.copy is not None
                  and host_id in (j.copy.source, j.copy.destination)]
        points = []
        for t in window.times():
            if t > now:
                break
            if not self._host_connected_at(host_id, t):
                continue  # a gap: nobody could sample a host we could not reach
            cpu = 0.0
            mem = GIB  # the hypervisor's own share
            rates = [0.0, 0.0, 0.0, 0.0]
            for vm_id in members:
                p = self._vm_point(vm_id, t)
                if p is None or p[1] != host_id:
                    continue
                pt = p[0]
                cpu += pt.cpu_percent * self._s.guests[vm_id].vcpus
                mem += pt.memory_used_bytes
                rates = [a + b for a, b in zip(rates, (pt.disk_read_bps, pt.disk_write_bps,
                                                      pt.net_rx_bps, pt.net_tx_bps), strict=True)]
            for c in copies:
                if c.covers(t):  # a migration's copy crosses both hosts' links
                    rates[3 if c.source == host_id else 2] += c.bytes_per_s
            points.append(MetricPoint(t, round(min(100.0, 2.0 + cpu / host.cpus), 2),
                                      min(mem, host.memory_mib * MIB), *map(_r, rates)))
        return MetricSeries(host_id, window.start, window.end, window.step, tuple(points))

    # ------------------------------------------------------------ internals

    def build_reset(self, scenario: scenarios.Scenario | None = None) -> tuple[int, _State]:
        """The state :meth:`reset` would install, built without touching this one.

        Pure (any thread): 100,000 VMs take ~0.8 s to build, which the event loop
        should not wait for. Hand it to ``reset(scenario, built=...)`` on the loop.
        """
        generation = self._generation + 1
        return generation, self._build(scenario or self.scenario, generation=generation)

    def _build(self, sc: scenarios.Scenario, generation: int | None = None) -> _State:
        generation = self._generation if generation is None else generation
        return build_state(sc, self.clock, self.history_seconds, generation)

    def _settle(self) -> None:
        """Apply every scheduled event that is due, in time order, each at its own time."""
        events = self._s.events
        now = self.clock.now()
        while events and events[0][0] <= now:
            due, _, fn = heapq.heappop(events)
            fn(due)

    def _at(self, due: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self._s.events, (due, next(self._s.seq), fn))

    def _job(self, migration_id: str) -> _Job:
        return self._s.jobs.get(migration_id)

    def _require_host(self, host_id: str) -> None:
        host = self._s.inv.hosts[host_id]
        if host.status != "connected":
            raise Unavailable(f"host {host.hostname} is disconnected", code="host_disconnected")

    def _take_fault(self, operation: str, vm: Vm, destination: str | None = None,
                    dry_run: bool = False) -> Fault | None:
        """The armed fault this call meets, used up by it (a dry run meets it, uses nothing)."""
        for fault in self.faults:
            if fault.matches(operation, vm, destination):
                if not dry_run:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                if fault.mode == "reject":
                    err: BackendError
                    if fault.status == 409:
                        err = Conflict(fault.message, code="injected_fault")
                    else:
                        err = Unavailable(fault.message, code="injected_fault")
                    raise err
                return fault
        return None

    def _put_vm(self, vm: Vm, t: float) -> Vm:
        old = self._s.inv.vms.get(vm.id)
        self._s.inv.put_vm(vm, t)
        self._remember(old, vm, t)
        return vm

    def _remember(self, old: Vm | None, vm: Vm, t: float) -> None:
        """The VM's state history (metrics are computed from it)."""
        if old is None or old.status != vm.status or old.host_id != vm.host_id:
            hist = self._s.guests[vm.id].history
            hist.append((t, vm.status, vm.host_id))
            if len(hist) > _HISTORY_LIMIT:
                del hist[: len(hist) - _HISTORY_LIMIT]
            self._s.host_members.setdefault(vm.host_id, set()).add(vm.id)

    def _set_status(self, vm: Vm, status: VmStatus, t: float) -> Vm:
        self._s.guests[vm.id].epoch += 1
        return self._put_vm(replace(vm, status=status), t)

    def _power_off(self, vm: Vm, t: float) -> Vm:
        if vm.persistent:
            return self._set_status(vm, "shutoff", t)
        # A transient domain has no definition to fall back to: it is gone, in one change
        # (libvirt reports no shut-off state in between, and neither does the feed).
        self._s.guests[vm.id].epoch += 1
        off = replace(vm, status="shutoff")
        self._remember(vm, off, t)
        self._s.inv.remove_vm(vm.id, t)
        return off

    def _schedule_shutdown(self, vm: Vm, t: float) -> None:
        guest = self._s.guests[vm.id]
        if guest.spec.acpi == "ignore":
            return  # libvirt said yes; the guest never acts on the ACPI event
        epoch = guest.epoch

        def shutdown(when: float) -> None:
            current = self._s.inv.vms.get(vm.id)
            # "shutdown" is a guest already on its way down: it gets there too. The ACPI
            # power button also wakes a guest suspended to RAM, which then shuts down.
            if current is not None and guest.epoch == epoch \
                    and current.status in ("running", "blocked", "shutdown", "pmsuspended") \
                    and current.migration_id is None:
                self._power_off(current, when)

        self._at(t + guest.spec.shutdown_seconds, shutdown)

    def _run_job(self, job: _Job, t: float) -> None:
        if job.status != "initiated":
            return
        job.status = "running"
        job.started_at = t
        job.copy = metrics.Interval(t, None, job.source_host_id,
                                    job.request.destination_host_id, job.bandwidth)
        copies = self._s.guests[job.vm_id].copies
        copies.append(job.copy)
        del copies[:-16]  # bounded: charts of older copies lose their bump, nothing else
        self._s.jobs.changed(job)
        duration = job.total_bytes / job.bandwidth
        if job.fail_fraction is not None:
            message = job.fail_message or "injected fault"
            self._at(t + duration * job.fail_fraction,
                     lambda when: self._finish_job(job, when, "failed", message))
        else:
            self._at(t + duration, lambda when: self._finish_job(job, when, "completed", None))

    def _finish_job(self, job: _Job, t: float, status: MigrationStatus, error: str | None) -> None:
        if job.status in FINAL_MIGRATION_STATUSES:
            return
        s = self._s
        job.status = status
        job.finished_at = t
        if job.copy is not None:
            job.copy.end = t
        job.error = error if status != "completed" else None
        s.jobs.changed(job)
        vm = s.inv.vms.get(job.vm_id)
        if vm is None:
            return
        if status != "completed":
            # Nothing lost: the VM goes on running on its source.
            self._put_vm(replace(vm, migration_id=None, status=job.prior_status), t)
            return
        r = job.request
        also = [h for h in vm.also_defined_on if h != r.destination_host_id]
        if vm.persistent and not r.undefine_source:
            also.append(job.source_host_id)
        s.guests[vm.id].epoch += 1
        moved = replace(vm, host_id=r.destination_host_id, migration_id=None,
                        status=job.prior_status, persistent=r.persistent,
                        also_defined_on=tuple(sorted(set(also))))
        self._put_vm(moved, t)

    def _host_connected_at(self, host_id: str, t: float) -> bool:
        return _at_time(self._s.host_history.get(host_id, []), t, ("connected",))[0] == "connected"

    def _vm_point(self, vm_id: str, t: int) -> tuple[MetricPoint, str] | None:
        guest = self._s.guests.get(vm_id)
        if guest is None:
            return None
        hist = guest.history
        i = _index_at(hist, t)
        since, status, host_id = hist[i] if hist else (t, "shutoff", "")
        # Booted: it came up from off (a resume or a reboot is no boot).
        booted = i > 0 and hist[i - 1][1] not in ACTIVE_STATUSES
        vm = self._s.inv.vms.get(vm_id)
        mem_mib = vm.memory_mib if vm is not None else 0
        migrating = any(c.covers(t) for c in guest.copies)
        if guest.spec.behaviour is not None:
            return metrics.fitted_point(guest.salt, guest.spec.behaviour, mem_mib, t, status,
                                        since, booted, migrating), host_id
        return metrics.vm_point(guest.salt, guest.spec.load, mem_mib, t, status, since, booted,
                                migrating), host_id


def _r(x: float) -> float:
    return round(x, 1)
