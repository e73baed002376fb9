"""The simulated cluster's semantics: power state machine, migrations, cursors, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from cockpit_api.backends.base import (
    Conflict,
    Fault,
    InvalidArgument,
    MetricsWindow,
    MigrationFilter,
    MigrationRequest,
    NotFound,
    PageRequest,
    Unavailable,
    Vm,
    VmFilter,
)
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from tests.conftest import NODE1, NODE2, NODE3, NODE4, T0

R = TypeVar("R")


def run(coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def vm_named(sim: SimulatedBackend, name: str) -> Vm:
    return next(v for v in sim._s.inv.vms.values() if v.name == name)


# ---------------------------------------------------------------- power actions


def test_start_a_shutoff_vm_runs_it(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "build-runner-01")
    assert vm.status == "shutoff"
    assert run(sim.vm_action(vm.id, "start", False)).status == "running"
    assert run(sim.get_vm(vm.id)).status == "running"


def test_start_a_running_vm_is_a_conflict(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    with pytest.raises(Conflict) as err:
        run(sim.vm_action(vm.id, "start", False))
    assert err.value.code == "vm_running"


@pytest.mark.parametrize("action", ["stop", "restart", "suspend", "resume"])
def test_actions_on_a_shutoff_vm_are_conflicts(sim: SimulatedBackend, action: str) -> None:
    vm = vm_named(sim, "build-runner-01")
    with pytest.raises(Conflict) as err:
        run(sim.vm_action(vm.id, action, False))  # type: ignore[arg-type]
    assert err.value.code == "vm_not_running"


def test_force_stop_powers_off_at_once(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    assert run(sim.vm_action(vm.id, "stop", True)).status == "shutoff"


def test_graceful_stop_takes_the_guests_time(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    assert run(sim.vm_action(vm.id, "stop", False)).status == "running"
    sim.advance(3.9)
    assert run(sim.get_vm(vm.id)).status == "running"
    sim.advance(0.2)
    assert run(sim.get_vm(vm.id)).status == "shutoff"


def test_a_guest_that_ignores_acpi_never_stops(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "queue-rabbit-01")  # acpi: ignore in the scenario
    run(sim.vm_action(vm.id, "stop", False))
    sim.advance(3600)
    assert run(sim.get_vm(vm.id)).status == "running"
    assert run(sim.vm_action(vm.id, "stop", True)).status == "shutoff"


def test_a_restart_cancels_a_pending_shutdown(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    run(sim.vm_action(vm.id, "stop", False))
    run(sim.vm_action(vm.id, "restart", True))
    sim.advance(60)
    assert run(sim.get_vm(vm.id)).status == "running"


def test_suspend_resume_and_their_qemu_no_ops(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    assert run(sim.vm_action(vm.id, "resume", False)).status == "running"  # no-op
    assert run(sim.vm_action(vm.id, "suspend", False)).status == "paused"
    assert run(sim.vm_action(vm.id, "suspend", False)).status == "paused"  # no-op
    assert run(sim.vm_action(vm.id, "resume", False)).status == "running"


def test_a_graceful_stop_of_a_paused_vm_is_refused_like_qemu(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "cache-redis-01")
    assert vm.status == "paused"
    with pytest.raises(Conflict) as err:
        run(sim.vm_action(vm.id, "stop", False))
    assert err.value.code == "vm_paused"
    assert run(sim.vm_action(vm.id, "stop", True)).status == "shutoff"


def test_a_crashed_vm_can_be_started(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "legacy-erp-01")
    assert vm.status == "crashed"
    assert run(sim.vm_action(vm.id, "start", False)).status == "running"


def test_actions_on_a_disconnected_host_are_unavailable(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "mail-relay-01")
    assert vm.host_id == NODE4
    with pytest.raises(Unavailable) as err:
        run(sim.vm_action(vm.id, "stop", True))
    assert err.value.retry_after > 0


def test_unknown_vm_is_not_found(sim: SimulatedBackend) -> None:
    with pytest.raises(NotFound):
        run(sim.vm_action("00000000-0000-4000-8000-000000000000", "start", False))


# ---------------------------------------------------------------- migrations


def _migrate(sim: SimulatedBackend, name: str, dest: str = NODE2, **kw: Any) -> str:
    vm = vm_named(sim, name)
    return run(sim.migrate(vm.id, MigrationRequest(dest, **kw))).id


def test_a_migration_progresses_then_moves_the_vm(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    job = run(sim.migrate(vm.id, MigrationRequest(NODE2)))
    assert job.status == "initiated"
    assert run(sim.get_vm(vm.id)).migration_id == job.id
    sim.advance(2)
    mid = run(sim.get_migration(job.id))
    assert mid.status == "running"
    assert 0 < mid.progress.percent < 100
    assert mid.progress.data_processed_bytes + mid.progress.data_remaining_bytes \
        == mid.progress.data_total_bytes
    assert run(sim.get_vm(vm.id)).host_id == NODE1  # not moved until it completes
    sim.advance(60)
    done = run(sim.get_migration(job.id))
    assert done.status == "completed" and done.progress.percent == 100.0
    assert done.finished_at is not None and done.started_at is not None
    moved = run(sim.get_vm(vm.id))
    assert (moved.host_id, moved.status, moved.migration_id) == (NODE2, "running", None)
    assert moved.also_defined_on == ()


def test_migration_without_undefine_source_leaves_a_stale_definition(sim: SimulatedBackend) -> None:
    mid = _migrate(sim, "web-frontend-01", undefine_source=False)
    sim.advance(60)
    vm = run(sim.get_vm(run(sim.get_migration(mid)).vm_id))
    assert vm.host_id == NODE2 and vm.also_defined_on == (NODE1,)


def test_migration_without_persistent_makes_a_transient_vm_that_vanishes_on_stop(
        sim: SimulatedBackend) -> None:
    mid = _migrate(sim, "web-frontend-01", persistent=False)
    sim.advance(60)
    vm_id = run(sim.get_migration(mid)).vm_id
    assert run(sim.get_vm(vm_id)).persistent is False
    run(sim.vm_action(vm_id, "stop", True))
    with pytest.raises(NotFound):
        run(sim.get_vm(vm_id))


def test_a_non_live_migration_pauses_the_vm_while_copying(sim: SimulatedBackend) -> None:
    mid = _migrate(sim, "web-frontend-01", live=False)
    vm_id = run(sim.get_migration(mid)).vm_id
    assert run(sim.get_vm(vm_id)).status == "paused"
    sim.advance(60)
    assert run(sim.get_vm(vm_id)).status == "running"


def test_copy_storage_all_moves_more_bytes(sim: SimulatedBackend) -> None:
    a = run(sim.get_migration(_migrate(sim, "web-frontend-01", copy_storage="none")))
    b = run(sim.get_migration(_migrate(sim, "web-frontend-02", copy_storage="all")))
    assert b.progress.data_total_bytes > a.progress.data_total_bytes


@pytest.mark.parametrize(
    ("name", "dest", "code"),
    [
        ("web-frontend-01", NODE1, "same_host"),
        ("web-frontend-01", NODE4, "host_disconnected"),
        ("build-runner-01", NODE2, "vm_not_running"),
    ],
)
def test_migrations_refused_by_state(sim: SimulatedBackend, name: str, dest: str,
                                     code: str) -> None:
    with pytest.raises(Conflict) as err:
        _migrate(sim, name, dest)
    assert err.value.code == code


def test_a_vm_cannot_migrate_twice_at_once(sim: SimulatedBackend) -> None:
    _migrate(sim, "web-frontend-01")
    with pytest.raises(Conflict) as err:
        _migrate(sim, "web-frontend-01", NODE3)
    assert err.value.code == "vm_migrating"
    vm = vm_named(sim, "web-frontend-01")
    with pytest.raises(Conflict):
        run(sim.vm_action(vm.id, "stop", True))


def test_migration_to_an_unknown_host_is_not_found(sim: SimulatedBackend) -> None:
    with pytest.raises(NotFound):
        _migrate(sim, "web-frontend-01", "019e0014-0000-7057-b326-0000000000ff")


def test_migration_from_a_disconnected_host_is_unavailable(sim: SimulatedBackend) -> None:
    with pytest.raises(Unavailable):
        _migrate(sim, "mail-relay-01", NODE2)


def test_destination_lost_mid_way_fails_the_job_and_keeps_the_vm(sim: SimulatedBackend) -> None:
    mid = _migrate(sim, "web-frontend-01")
    sim.advance(2)
    sim.set_host_status(NODE2, "disconnected")
    job = run(sim.get_migration(mid))
    assert job.status == "failed" and job.error and "destination" in job.error
    vm = run(sim.get_vm(job.vm_id))
    assert (vm.host_id, vm.status, vm.migration_id) == (NODE1, "running", None)
    sim.advance(120)
    assert run(sim.get_vm(job.vm_id)).host_id == NODE1  # the completion never fires


def test_cancel_keeps_the_vm_on_its_source(sim: SimulatedBackend) -> None:
    mid = _migrate(sim, "web-frontend-01")
    sim.advance(1)
    job = run(sim.cancel_migration(mid))
    assert job.status == "cancelled"
    sim.advance(120)
    assert run(sim.get_vm(job.vm_id)).host_id == NODE1
    with pytest.raises(Conflict) as err:
        run(sim.cancel_migration(mid))
    assert err.value.code == "migration_finished"


def test_a_fault_fails_the_next_migration_mid_way(sim: SimulatedBackend) -> None:
    sim.inject_fault(Fault("migrate", mode="fail", at_percent=40, message="out of memory"))
    mid = _migrate(sim, "web-frontend-01")
    sim.advance(120)
    job = run(sim.get_migration(mid))
    assert job.status == "failed" and job.error == "out of memory"
    assert 35 <= job.progress.percent <= 45
    assert run(sim.get_vm(job.vm_id)).host_id == NODE1
    # Only the next one: the following migration completes.
    mid2 = _migrate(sim, "web-frontend-02")
    sim.advance(120)
    assert run(sim.get_migration(mid2)).status == "completed"


def test_a_rejecting_fault_answers_its_status_once(sim: SimulatedBackend) -> None:
    sim.inject_fault(Fault("action", status=409, message="busy"))
    vm = vm_named(sim, "build-runner-01")
    with pytest.raises(Conflict) as err:
        run(sim.vm_action(vm.id, "start", False))
    assert err.value.code == "injected_fault"
    assert run(sim.vm_action(vm.id, "start", False)).status == "running"


def test_list_migrations_filters(sim: SimulatedBackend) -> None:
    a = _migrate(sim, "web-frontend-01")
    _migrate(sim, "web-frontend-02")
    run(sim.cancel_migration(a))
    page = run(sim.list_migrations(PageRequest(), MigrationFilter(status="cancelled")))
    assert [m.id for m in page.items] == [a]
    vm = vm_named(sim, "web-frontend-02")
    page = run(sim.list_migrations(PageRequest(), MigrationFilter(vm_id=vm.id)))
    assert [m.vm_id for m in page.items] == [vm.id]


# ---------------------------------------------------------------- hosts and cursors


def test_sync_cursor_grows_on_every_change_and_only_then(sim: SimulatedBackend) -> None:
    before = run(sim.get_host(NODE1)).sync_cursor
    assert run(sim.get_host(NODE1)).sync_cursor == before  # reads change nothing
    vm = vm_named(sim, "build-runner-01")
    run(sim.vm_action(vm.id, "start", False))
    after_start = run(sim.get_host(NODE1)).sync_cursor
    assert after_start > before
    run(sim.vm_action(vm.id, "suspend", False))
    assert run(sim.get_host(NODE1)).sync_cursor > after_start


def test_sync_cursor_is_at_least_the_change_time(sim: SimulatedBackend) -> None:
    sim.advance(100)
    vm = vm_named(sim, "web-frontend-01")
    run(sim.vm_action(vm.id, "stop", True))
    assert run(sim.get_host(NODE1)).sync_cursor >= int(T0 + 100)


def test_host_vm_counts_follow_migrations(sim: SimulatedBackend) -> None:
    n1, n2 = run(sim.get_host(NODE1)).vm_count, run(sim.get_host(NODE2)).vm_count
    _migrate(sim, "web-frontend-01")
    sim.advance(60)
    counts = run(sim.get_host(NODE1)).vm_count, run(sim.get_host(NODE2)).vm_count
    assert counts == (n1 - 1, n2 + 1)


# ---------------------------------------------------------------- lists


def test_pages_cover_every_vm_once_in_order(sim: SimulatedBackend) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = run(sim.list_vms(PageRequest(3, cursor), VmFilter()))
        seen += [v.name for v in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(sim._s.inv.vms) == len(set(seen))
    assert seen == sorted(seen)


def test_filters_by_host_and_status(sim: SimulatedBackend) -> None:
    page = run(sim.list_vms(PageRequest(100), VmFilter(host_id=NODE1, status="running")))
    assert page.items and all(v.host_id == NODE1 and v.status == "running" for v in page.items)
    expected = [v for v in sim._s.inv.vms.values() if v.host_id == NODE1 and v.status == "running"]
    assert len(page.items) == len(expected)


def test_filter_by_unknown_host_is_not_found(sim: SimulatedBackend) -> None:
    with pytest.raises(NotFound):
        run(sim.list_vms(PageRequest(), VmFilter(host_id="019e0014-0000-7057-b326-0000000000ff")))


def test_a_foreign_cursor_is_refused(sim: SimulatedBackend) -> None:
    # Read as a position, 'zzzz' would answer an empty last page: "end of list", silently.
    with pytest.raises(InvalidArgument) as refused:
        run(sim.list_vms(PageRequest(100, "zzzz"), VmFilter()))
    assert refused.value.code == "invalid_cursor"
    vms_cursor = run(sim.list_vms(PageRequest(1), VmFilter())).next_cursor
    with pytest.raises(InvalidArgument):
        run(sim.list_hosts(PageRequest(1, vms_cursor)))


# ---------------------------------------------------------------- metrics


def test_metrics_agree_with_power_state(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "web-frontend-01")
    sim.advance(600)
    run(sim.vm_action(vm.id, "stop", True))
    sim.advance(600)
    window = MetricsWindow.of(int(T0), int(T0 + 1200), 60, sim.now())
    pts = run(sim.vm_metrics(vm.id, window)).points
    on = [p for p in pts if p.t < T0 + 600]
    off = [p for p in pts if p.t > T0 + 600]
    assert on and off
    assert all(p.cpu_percent > 0 and p.memory_used_bytes > 0 for p in on)
    assert all(p.cpu_percent == 0 and p.memory_used_bytes == 0 and p.net_rx_bps == 0 for p in off)


def test_a_paused_vm_holds_memory_but_no_cpu(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "cache-redis-01")
    pts = run(sim.vm_metrics(vm.id, MetricsWindow.of(None, None, 60, sim.now()))).points
    assert pts and all(p.cpu_percent == 0 and p.memory_used_bytes > 0 for p in pts)


def test_host_metrics_have_gaps_while_disconnected(sim: SimulatedBackend) -> None:
    sim.advance(300)
    sim.set_host_status(NODE2, "disconnected")
    sim.advance(300)
    sim.set_host_status(NODE2, "connected")
    sim.advance(300)
    window = MetricsWindow.of(int(T0), int(T0 + 900), 60, sim.now())
    ts = [p.t for p in run(sim.host_metrics(NODE2, window)).points]
    assert any(t < T0 + 300 for t in ts) and any(t > T0 + 600 for t in ts)
    assert not any(T0 + 300 < t < T0 + 600 for t in ts)


def test_metrics_never_sample_the_future(sim: SimulatedBackend) -> None:
    window = MetricsWindow.of(int(T0) - 120, int(T0) + 3600, 60, sim.now())
    assert max(p.t for p in run(sim.host_metrics(NODE1, window)).points) <= T0


def test_a_too_fine_step_is_widened_not_refused() -> None:
    w = MetricsWindow.of(0, 86400 * 30, 1, now=0)
    assert len(w.times()) <= MetricsWindow.MAX_POINTS


def test_metrics_are_deterministic(clock: VirtualClock) -> None:
    a = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    b = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    w = MetricsWindow.of(None, None, 60, T0)
    assert run(a.host_metrics(NODE1, w)) == run(b.host_metrics(NODE1, w))


# ---------------------------------------------------------------- clock, reset, scenarios


def test_the_clock_speed_scales_real_time() -> None:
    real = [100.0]
    c = VirtualClock(T0, speed=10.0, monotonic=lambda: real[0])
    real[0] += 2.0
    assert c.now() == T0 + 20.0
    c.speed = 0
    real[0] += 5.0
    assert c.now() == T0 + 20.0
    c.advance(1)
    assert c.now() == T0 + 21.0


def test_reset_restores_the_first_state(sim: SimulatedBackend) -> None:
    vm = vm_named(sim, "build-runner-01")
    run(sim.vm_action(vm.id, "start", False))
    sim.set_host_status(NODE1, "disconnected")
    sim.latency_ms = 500
    sim.reset()
    assert run(sim.get_vm(vm.id)).status == "shutoff"
    assert run(sim.get_host(NODE1)).status == "connected"
    assert sim.latency_ms == 0


def test_default_scenario_shape() -> None:
    sc = scenario.load("default")
    assert len(sc.hosts) >= 3 and any(h.status == "disconnected" for h in sc.hosts)
    assert len(sc.vms) >= 12 and len({v.status for v in sc.vms}) >= 3
    assert {h.id for h in sc.hosts} >= {NODE1, NODE2}
    assert sc.hosts[0].hostname == "vapor-node-01.corp.awan.io"


def test_generated_scenarios_are_deterministic() -> None:
    spec = {"seed": 5, "generate": {"hosts": 20, "vms": 500, "disconnected": 2}}
    a, b = scenario.load(spec), scenario.load(spec)
    assert [v.id for v in a.vms] == [v.id for v in b.vms]
    assert len(a.hosts) == 20 and len(a.vms) == 500
    assert sum(h.status == "disconnected" for h in a.hosts) == 2
    c = scenario.load({"seed": 6, "generate": {"hosts": 20, "vms": 500}})
    assert [v.id for v in c.vms] != [v.id for v in a.vms]


@pytest.mark.parametrize(
    "bad",
    [
        {"hosts": [{"hostname": "a", "status": "weird"}]},
        {"users": [{"username": "u", "password": "p", "role": "root"}]},
        [1, 2, 3],
    ],
)
def test_bad_scenarios_are_refused_with_a_reason(bad: Any) -> None:
    from cockpit_api.backends.base import InvalidArgument

    with pytest.raises(InvalidArgument) as err:
        scenario.load(bad)
    assert err.value.code == "bad_scenario"


@pytest.mark.parametrize(
    ("doc", "error", "code"),
    [
        ({"hosts": [{"hostname": "a"}], "vms": [{"name": "v", "host": "nope"}]},
         NotFound, "host_not_found"),
        ({"hosts": [{"hostname": "a", "id": NODE1}, {"hostname": "b", "id": NODE1}]},
         Conflict, "duplicate_id"),
    ],
)
def test_scenario_cross_references(doc: dict[str, Any], error: type, code: str) -> None:
    with pytest.raises(error) as err:
        scenario.load(doc)
    assert err.value.code == code


@pytest.mark.parametrize("extra", [
    {"links": [{"source": "nowhere", "destination": "a"}]},
    {"migrations": [{"id": "j", "vm": "v", "source": "a", "destination": "nowhere",
                     "data_total_bytes": 1}]},
    {"vms": [{"name": "v", "host": "a", "also_defined_on": ["nowhere"]}]},
])
def test_a_scenario_naming_an_unlisted_host_is_404_without_the_name(extra: dict[str, Any]) -> None:
    # Schema-valid references to a host the scenario does not list were a KeyError, answered
    # 400 "bad scenario: KeyError('nowhere')" (schemathesis: valid data rejected, and an echo).
    from cockpit_api.backends.base import NotFound

    with pytest.raises(NotFound) as caught:
        scenario.load({"name": "x", "hosts": [{"hostname": "a"}], "vms": [], **extra})
    assert caught.value.code == "host_not_found" and "nowhere" not in str(caught.value)
