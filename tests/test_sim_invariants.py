"""A Hypothesis state machine over the simulator: whatever the sequence, the invariants hold.

- every VM is listed exactly once, under exactly one existing host;
- no VM is lost: one disappears only when it was transient and was stopped;
- a failed or cancelled migration leaves its VM on the source host, a completed
  one puts it on the destination;
- a migration's status only moves forward, and a finished one never changes;
- no host's sync_cursor ever goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cockpit_api.backends.base import (
    FINAL_MIGRATION_STATUSES,
    BackendError,
    Fault,
    MigrationFilter,
    MigrationRequest,
    PageRequest,
    VmFilter,
)
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from tests.conftest import T0

_ORDER = {"initiated": 0, "running": 1, "completed": 2, "failed": 2, "cancelled": 2}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class SimInvariants(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
        self.host_ids = sorted(self.sim._s.inv.hosts)
        self.vm_ids = sorted(self.sim._s.inv.vms)
        self.known: dict[str, bool] = {}  # vm id -> persistent, as last seen
        self.cursors: dict[str, int] = {}
        self.jobs: dict[str, str] = {}  # migration id -> last seen status
        self.finished: dict[str, tuple[str, str, str]] = {}  # id -> (status, vm, where it must be)

    @initialize()
    def observe_start(self) -> None:
        self._observe()

    @rule(i=st.integers(0, 13), action=st.sampled_from(["start", "stop", "restart", "suspend",
                                                         "resume"]), force=st.booleans())
    def act(self, i: int, action: str, force: bool) -> None:
        with contextlib.suppress(BackendError):
            run(self.sim.vm_action(self.vm_ids[i], action, force))  # type: ignore[arg-type]

    @rule(i=st.integers(0, 13), h=st.integers(0, 3), live=st.booleans(), persistent=st.booleans(),
          undefine=st.booleans(), storage=st.sampled_from(["none", "all", "inc"]))
    def migrate(self, i: int, h: int, live: bool, persistent: bool, undefine: bool,
                storage: str) -> None:
        req = MigrationRequest(self.host_ids[h], live, persistent, undefine, storage)  # type: ignore[arg-type]
        try:
            job = run(self.sim.migrate(self.vm_ids[i], req))
        except BackendError:
            return
        assert job.status == "initiated"
        self.jobs[job.id] = job.status

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        mid = data.draw(st.sampled_from(sorted(self.jobs)))
        try:
            run(self.sim.cancel_migration(mid))
        except BackendError:
            assert self.jobs[mid] in FINAL_MIGRATION_STATUSES or \
                run(self.sim.get_migration(mid)).status in FINAL_MIGRATION_STATUSES

    @rule(seconds=st.sampled_from([0.1, 0.5, 1, 3, 5, 20, 60]))
    def advance(self, seconds: float) -> None:
        self.sim.advance(seconds)

    @rule(h=st.integers(0, 3), connected=st.booleans())
    def host_link(self, h: int, connected: bool) -> None:
        self.sim.set_host_status(self.host_ids[h], "connected" if connected else "disconnected")

    @rule(at=st.integers(0, 99))
    def arm_migration_fault(self, at: int) -> None:
        self.sim.inject_fault(Fault("migrate", mode="fail", at_percent=at))

    @invariant()
    def invariants_hold(self) -> None:
        self._observe()

    def _observe(self) -> None:
        sim = self.sim
        listed: list[Any] = []
        cursor = None
        while True:
            page = run(sim.list_vms(PageRequest(5, cursor), VmFilter()))
            listed += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
        ids = [v.id for v in listed]
        assert len(ids) == len(set(ids)), "a VM is listed twice"
        per_host = 0
        for host_id in self.host_ids:
            on = run(sim.list_vms(PageRequest(1000), VmFilter(host_id=host_id))).items
            assert all(v.host_id == host_id for v in on)
            per_host += len(on)
            host = run(sim.get_host(host_id))
            assert host.sync_cursor >= self.cursors.get(host_id, 0), "sync_cursor went back"
            self.cursors[host_id] = host.sync_cursor
            assert host.vm_count == len(on)
        assert per_host == len(ids), "a VM is on no host or on two"
        for v in listed:
            assert v.host_id in self.host_ids
        now_ids = set(ids)
        for vm_id, persistent in self.known.items():
            if vm_id not in now_ids:
                assert not persistent, f"persistent VM {vm_id} was lost"
        self.known = {v.id: v.persistent for v in listed}
        jobs = run(sim.list_migrations(PageRequest(1000), MigrationFilter())).items
        for m in jobs:
            before = self.jobs.get(m.id, "initiated")
            assert _ORDER[m.status] >= _ORDER[before], f"{m.id}: {before} -> {m.status}"
            if before in FINAL_MIGRATION_STATUSES:
                assert m.status == before, "a finished migration changed"
            self.jobs[m.id] = m.status
            if m.status in FINAL_MIGRATION_STATUSES and m.id not in self.finished:
                where = m.destination_host_id if m.status == "completed" else m.source_host_id
                self.finished[m.id] = (m.status, m.vm_id, where)
                vm = next((v for v in listed if v.id == m.vm_id), None)
                if vm is not None and vm.migration_id is None:
                    # Just finished: the VM is where the outcome says (no later move yet).
                    assert vm.host_id == where, f"{m.status} migration left VM on {vm.host_id}"
            if m.status not in FINAL_MIGRATION_STATUSES:
                vm = next(v for v in listed if v.id == m.vm_id)
                assert vm.migration_id == m.id and vm.host_id == m.source_host_id


SimInvariants.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSimInvariants = SimInvariants.TestCase
