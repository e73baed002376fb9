"""What a simulated world holds between calls: its jobs, guests and the rest that a reset
throws away (the bandwidth model of a migration's progress is :class:`_Job`'s), the jobs a
scenario remembers, and lookups in a (time, values...) history."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cockpit_api.backends.base import (
    Host,
    Migration,
    MigrationProgress,
    MigrationRequest,
    MigrationStatus,
    Vm,
    VmStatus,
)
from cockpit_api.backends.inventory import Inventory, JobTable
from cockpit_api.backends.sim import metrics
from cockpit_api.backends.sim import scenario as scenarios
from cockpit_api.backends.sim.clock import VirtualClock


@dataclass(slots=True)
class _Job:
    id: str
    seq: int
    vm_id: str
    source_host_id: str
    request: MigrationRequest
    status: MigrationStatus
    created_at: float
    total_bytes: int
    bandwidth: float
    prior_status: VmStatus
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    fail_fraction: float | None = None
    fail_message: str | None = None
    copy: metrics.Interval | None = None  # while copying: for the metrics
    processed_bytes: int | None = None  # a remembered job: what it had copied when it ended

    def processed(self, t: float) -> int:
        if self.status == "completed":
            return self.total_bytes
        if self.processed_bytes is not None:
            return self.processed_bytes
        if self.started_at is None:
            return 0
        end = self.finished_at if self.finished_at is not None else t
        return min(self.total_bytes, int((end - self.started_at) * self.bandwidth))

    def snapshot(self, t: float) -> Migration:
        done = self.processed(t)
        total = self.total_bytes
        return Migration.of(
            id=self.id, vm_id=self.vm_id, source_host_id=self.source_host_id,
            request=self.request, status=self.status,
            progress=MigrationProgress(total, done, total - done,
                                       round(100.0 * done / total, 1) if total else 100.0),
            created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, error=self.error,
        )


@dataclass(slots=True)
class _Guest:
    spec: scenarios.GuestSpec
    salt: int
    vcpus: int
    epoch: int = 0  # bumped on every power change; stale scheduled events check it
    history: list[tuple[float, str, str]] = field(default_factory=list)
    copies: list[metrics.Interval] = field(default_factory=list)  # its migrations' copies


@dataclass(slots=True)
class _State:
    """Everything that :meth:`SimulatedBackend.reset` throws away."""

    inv: Inventory
    guests: dict[str, _Guest]
    host_history: dict[str, list[tuple[float, str]]]
    host_members: dict[str, set[str]]
    jobs: JobTable[_Job]
    events: list[tuple[float, int, Callable[[float], None]]]
    rng: random.Random
    seq: itertools.count
    # (source, destination) -> (bandwidth, setup seconds), from the scenario's links
    links: dict[tuple[str, str], tuple[float | None, float | None]] = field(default_factory=dict)


def _remembered_jobs(sc: scenarios.Scenario, jobs: JobTable[_Job], seq: itertools.count,
                     t: float) -> None:
    """The scenario's finished jobs, laid back to back (a minute apart) before ``t``.

    Only their order and durations are data: absolute times would date the file.
    """
    end = t - 60.0
    placed: list[_Job] = []
    for j in reversed(sc.migrations):
        started = end - j.copy_seconds
        created = started - j.setup_seconds
        request = MigrationRequest(j.destination, j.live, j.persistent, j.undefine_source,
                                   j.copy_storage)  # type: ignore[arg-type]
        job = _Job(id=j.id, seq=0, vm_id=j.vm_id, source_host_id=j.source, request=request,
                   status=j.status, created_at=created,  # type: ignore[arg-type]
                   total_bytes=j.data_total_bytes, bandwidth=0.0, prior_status="running",
                   started_at=started, finished_at=end, error=j.error)
        job.processed_bytes = j.data_processed_bytes
        placed.append(job)
        end = created - 60.0
    for job in reversed(placed):
        job.seq = next(seq)
        jobs.add(job, job.seq)


def _index_at(history: list[Any], t: float) -> int:
    """The index of the (time, values...) entry in force at ``t`` (0 before the first)."""
    lo, hi = 0, len(history)
    while lo < hi:
        mid = (lo + hi) // 2
        if history[mid][0] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1 if lo else 0


def _at_time(history: list[Any], t: float, default: tuple[str, ...]) -> tuple[str, ...]:
    """The entry of a (time, values...) history in force at time ``t``."""
    if not history:
        return default
    return tuple(history[_index_at(history, t)][1:])


def build_state(sc: scenarios.Scenario, clock: VirtualClock, history_seconds: float,
                generation: int) -> _State:
    """A world's first state from its scenario: what :meth:`SimulatedBackend.reset` installs
    (pure: any thread may build it)."""
    t = clock.now()
    born = t - history_seconds
    inv = Inventory()
    host_history: dict[str, list[tuple[float, str]]] = {}
    for h in sc.hosts:
        # A cursor is the Unix time of the host's last change: never in the clock's future.
        cursor = min(h.sync_cursor, int(t)) if h.sync_cursor else int(t)
        inv.put_host(Host(h.id, h.hostname, h.status, cursor,  # type: ignore[arg-type]
                          h.cpus, h.memory_mib, 0))
        host_history[h.id] = [(born, h.status)]
    guests: dict[str, _Guest] = {}
    members: dict[str, set[str]] = {h.id: set() for h in sc.hosts}
    for v in sc.vms:
        vm = Vm(v.id, v.name, v.host_id, v.status, v.vcpus, v.memory_mib,  # type: ignore[arg-type]
                v.persistent, v.also_defined_on)
        inv.vms[vm.id] = vm  # indexed in bulk below: put_vm per VM would bump cursors
        salt = int(v.id.replace("-", "")[:16], 16) ^ sc.seed
        guests[vm.id] = _Guest(v.guest, salt, v.vcpus, history=[(born, v.status, v.host_id)])
        members[v.host_id].add(v.id)
    inv.bulk_index()
    jobs: JobTable[_Job] = JobTable(snapshot=lambda job: job.snapshot(clock.now()))
    # Job ids come from the seed and the reset count: repeatable, never reused.
    rng = random.Random(sc.seed + generation * 0x9E3779B97F4A7C15)
    seq = itertools.count(1)
    _remembered_jobs(sc, jobs, seq, t)
    links = {(ln.source, ln.destination): (ln.bandwidth_bytes_per_s, ln.setup_seconds)
             for ln in sc.links}
    return _State(inv, guests, host_history, members, jobs, [], rng, seq, links)
