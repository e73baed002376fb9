"""One behaviour suite, two backends: the simulator and the libvirt backend must agree.

The ``cluster`` fixture is parametrized (fakeredis-style) over the simulator
and the libvirt backend on libvirt's test driver. Both hold the same cluster:
:func:`tests.libvirt_support.sim_scenario` builds the simulator's scenario from
the very XML files the test driver loads, with the same host and VM ids. Every
test here runs on both and asserts one answer: the power state machine with
its QEMU no-ops and refusals, the error codes, listing order and pages, sync
cursors, a lost host. What the two may answer differently (graceful stop
timing, migration outcomes on a test driver that cannot migrate) is tested
per backend in ``test_libvirt_testdriver.py`` and ``test_sim.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cockpit_api.backends.base import (
    Backend,
    BackendError,
    Conflict,
    InvalidArgument,
    MetricsWindow,
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
from tests.conftest import T0
from tests.libvirt_support import (
    HOST_IDS,
    LIBVIRT_MISSING,
    expected_vms,
    make_backend,
    sim_scenario,
    take_away,
)

R = TypeVar("R")
A, B, C = HOST_IDS["node-a"], HOST_IDS["node-b"], HOST_IDS["node-c"]
GHOST_VM = "00000000-0000-4000-8000-000000000000"
GHOST_HOST = "019e0014-0000-7057-b326-0000000000ff"


class Cluster:
    """A backend behind the API's own calls, plus the one control both can play: lose a host."""

    def __init__(self, kind: str, backend: Backend, runner: asyncio.Runner,
                 lose: Callable[[str], object]) -> None:
        self.kind = kind
        self.backend = backend
        self._runner = runner
        self._lose = lose

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self._runner.run(coro)

    def vms(self, flt: VmFilter | None = None, limit: int = 1000) -> list[Vm]:
        out: list[Vm] = []
        cursor = None
        while True:
            page = self.run(self.backend.list_vms(PageRequest(limit, cursor), flt or VmFilter()))
            out += page.items
            cursor = page.next_cursor
            if cursor is None:
                return out

    def vm(self, name: str) -> Vm:
        return next(v for v in self.vms() if v.name == name)

    def act(self, name: str, action: str, force: bool = False) -> Vm:
        return self.run(self.backend.vm_action(self.vm(name).id, action, force))  # type: ignore[arg-type]

    def refused(self, kind: type[BackendError], coro: Coroutine[Any, Any, Any]) -> BackendError:
        with pytest.raises(kind) as err:
            self.run(coro)
        return err.value

    def lose(self, host_name: str) -> None:
        self._lose(host_name)


@pytest.fixture(params=["sim", "libvirt"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    with asyncio.Runner() as runner:
        if request.param == "sim":
            sim = SimulatedBackend(scenario.load(sim_scenario()), VirtualClock(T0))
            yield Cluster("sim", sim, runner,
                          lambda name: sim.set_host_status(HOST_IDS[name], "disconnected"))
            return
        pytest.importorskip("libvirt", reason=LIBVIRT_MISSING)
        backend = make_backend(tmp_path)
        runner.run(backend.start())
        try:
            yield Cluster("libvirt", backend, runner,
                          lambda name: runner.run(take_away(backend, tmp_path, name)))
        finally:
            runner.run(backend.close())


# ---------------------------------------------------------------- the same cluster


def test_both_list_the_same_cluster_in_the_same_order(cluster: Cluster) -> None:
    want = expected_vms()
    vms = cluster.vms()
    assert [v.name for v in vms] == sorted(want)
    for v in vms:
        w = want[v.name]
        assert (v.id, v.host_id, v.status, v.vcpus, v.memory_mib, v.persistent,
                v.migration_id) == (w["id"], HOST_IDS[w["host"]], w["status"], w["vcpus"],
                                    w["memory_mib"], w["persistent"], None), v.name
    hosts = cluster.run(cluster.backend.list_hosts(PageRequest())).items
    assert [(h.id, h.hostname, h.status, h.vm_count) for h in hosts] == [
        (A, "node-a", "connected", 8), (B, "node-b", "connected", 4),
        (C, "node-c", "connected", 2)]


def test_pages_and_filters_agree(cluster: Cluster) -> None:
    assert [v.name for v in cluster.vms(limit=3)] == sorted(expected_vms())
    running_on_a = cluster.vms(VmFilter(host_id=A, status="running"), limit=2)
    assert [v.name for v in running_on_a] == ["scratch-01", "web-01", "web-02"]
    assert [v.name for v in cluster.vms(VmFilter(status="paused"))] == ["db-01"]
    err = cluster.refused(NotFound, cluster.backend.list_vms(PageRequest(),
                                                             VmFilter(host_id=GHOST_HOST)))
    assert err.code == "host_not_found"
    err = cluster.refused(InvalidArgument, cluster.backend.list_vms(PageRequest(100, "zzzz"),
                                                                    VmFilter()))
    assert err.code == "invalid_cursor"


# ---------------------------------------------------------------- power state machine


def test_start_runs_a_shut_off_vm(cluster: Cluster) -> None:
    assert cluster.act("build-01", "start").status == "running"
    assert cluster.vm("build-01").status == "running"


@pytest.mark.parametrize("name", ["web-02", "db-01", "idle-01", "halting-01"])
def test_starting_an_active_vm_is_a_conflict(cluster: Cluster, name: str) -> None:
    # running, paused, blocked, shutdown (being shut down): all have a QEMU process.
    err = cluster.refused(Conflict, cluster.backend.vm_action(cluster.vm(name).id, "start",
                                                              False))
    assert err.code == "vm_running"


@pytest.mark.parametrize("name", ["build-01", "batch-01", "limbo-01"])
@pytest.mark.parametrize("action", ["stop", "restart", "suspend", "resume"])
@pytest.mark.parametrize("force", [False, True])
def test_acting_on_an_inactive_vm_is_a_conflict(cluster: Cluster, name: str, action: str,
                                                force: bool) -> None:
    # shutoff, crashed, nostate: no QEMU process to act on.
    vm = cluster.vm(name)
    err = cluster.refused(Conflict, cluster.backend.vm_action(vm.id, action, force))  # type: ignore[arg-type]
    assert err.code == "vm_not_running"
    assert cluster.vm(name).status == vm.status


def test_force_stop_powers_off_at_once(cluster: Cluster) -> None:
    assert cluster.act("web-02", "stop", force=True).status == "shutoff"
    assert cluster.vm("web-02").status == "shutoff"


@pytest.mark.parametrize("force", [False, True])
def test_restart_keeps_a_vm_running(cluster: Cluster, force: bool) -> None:
    assert cluster.act("web-02", "restart", force).status == "running"


def test_suspend_resume_and_their_qemu_no_ops(cluster: Cluster) -> None:
    assert cluster.act("web-02", "resume").status == "running"  # no-op
    assert cluster.act("web-02", "suspend").status == "paused"
    assert cluster.act("web-02", "suspend").status == "paused"  # no-op
    assert cluster.act("web-02", "resume").status == "running"
    assert cluster.vm("web-02").status == "running"


@pytest.mark.parametrize("action", ["suspend", "resume"])
def test_a_pm_suspended_vm_is_neither_paused_nor_resumed(cluster: Cluster, action: str) -> None:
    err = cluster.refused(Conflict, cluster.backend.vm_action(cluster.vm("sleepy-01").id,
                                                              action, False))  # type: ignore[arg-type]
    assert err.code == "vm_pmsuspended"


def test_a_crashed_vm_can_be_started(cluster: Cluster) -> None:
    assert cluster.act("batch-01", "start").status == "running"


def test_a_transient_vm_is_gone_once_stopped(cluster: Cluster) -> None:
    vm = cluster.vm("scratch-01")
    assert vm.persistent is False
    assert cluster.act("scratch-01", "stop", force=True).status == "shutoff"
    assert cluster.refused(NotFound, cluster.backend.get_vm(vm.id)).code == "vm_not_found"


def test_unknown_ids_are_not_found_with_the_same_codes(cluster: Cluster) -> None:
    b = cluster.backend
    window = MetricsWindow.of(None, None, 60, b.now())
    calls: list[tuple[str, Coroutine[Any, Any, Any]]] = [
        ("vm_not_found", b.get_vm(GHOST_VM)),
        ("vm_not_found", b.vm_action(GHOST_VM, "start", False)),
        ("vm_not_found", b.migrate(GHOST_VM, MigrationRequest(B))),
        ("vm_not_found", b.vm_metrics(GHOST_VM, window)),
        ("host_not_found", b.get_host(GHOST_HOST)),
        ("host_not_found", b.host_metrics(GHOST_HOST, window)),
        ("migration_not_found", b.get_migration("abc123def456")),
        ("migration_not_found", b.cancel_migration("abc123def456")),
    ]
    for code, coro in calls:
        assert cluster.refused(NotFound, coro).code == code


def test_sync_cursors_grow_on_changes_only(cluster: Cluster) -> None:
    b = cluster.backend
    before = cluster.run(b.get_host(A)).sync_cursor
    cluster.vms()
    assert cluster.run(b.get_host(A)).sync_cursor == before
    cluster.act("build-01", "start")
    started = cluster.run(b.get_host(A)).sync_cursor
    assert started > before
    cluster.act("build-01", "suspend")
    assert cluster.run(b.get_host(A)).sync_cursor > started
    assert cluster.run(b.get_host(B)).sync_cursor == cluster.run(b.get_host(B)).sync_cursor


# ---------------------------------------------------------------- migrations


@pytest.mark.parametrize(
    ("name", "dest", "kind", "code"),
    [
        ("web-02", A, Conflict, "same_host"),
        ("build-01", B, Conflict, "vm_not_running"),
        ("batch-01", B, Conflict, "vm_not_running"),
        ("sleepy-01", B, Conflict, "vm_pmsuspended"),
        ("web-02", GHOST_HOST, NotFound, "host_not_found"),
    ],
)
def test_migrations_refused_with_the_same_codes(cluster: Cluster, name: str, dest: str,
                                                kind: type[BackendError], code: str) -> None:
    err = cluster.refused(kind, cluster.backend.migrate(cluster.vm(name).id,
                                                        MigrationRequest(dest)))
    assert err.code == code


def test_an_accepted_migration_makes_its_vm_busy(cluster: Cluster) -> None:
    b, vm = cluster.backend, cluster.vm("web-02")

    async def scenario_() -> None:
        job = await b.migrate(vm.id, MigrationRequest(B))
        assert (job.status, job.vm_id, job.source_host_id, job.destination_host_id) == (
            "initiated", vm.id, A, B)
        assert (await b.get_vm(vm.id)).migration_id == job.id
        with pytest.raises(Conflict) as err:
            await b.migrate(vm.id, MigrationRequest(C))
        assert err.value.code == "vm_migrating"
        with pytest.raises(Conflict) as err:
            await b.vm_action(vm.id, "suspend", False)
        assert err.value.code == "vm_migrating"

    cluster.run(scenario_())


# ---------------------------------------------------------------- a lost host


def test_a_lost_host_reads_disconnected_and_refuses_work(cluster: Cluster) -> None:
    b = cluster.backend
    before = cluster.run(b.get_host(C)).sync_cursor
    cluster.lose("node-c")
    host = cluster.run(b.get_host(C))
    assert host.status == "disconnected" and host.sync_cursor > before
    edge = cluster.vm("edge-01")
    assert (edge.host_id, edge.status) == (C, "running")  # listed as last seen
    err = cluster.refused(Unavailable, b.vm_action(edge.id, "stop", True))
    assert err.code == "host_disconnected" and isinstance(err, Unavailable)
    assert err.retry_after > 0
    assert cluster.refused(Unavailable, b.migrate(edge.id, MigrationRequest(A))).code == \
        "host_disconnected"
    err = cluster.refused(Conflict, b.migrate(cluster.vm("web-02").id, MigrationRequest(C)))
    assert err.code == "host_disconnected"
    # The other hosts are not affected.
    assert cluster.act("web-02", "suspend").status == "paused"


# ---------------------------------------------------------------- dry runs


def _world(cluster: Cluster) -> tuple[Any, ...]:
    """Everything a dry run must leave alone: VMs, hosts, jobs, the change feed's position."""
    from cockpit_api.backends.base import MigrationFilter
    from cockpit_api.feed.changes import feed_of

    b = cluster.backend
    hosts = cluster.run(b.list_hosts(PageRequest(1000))).items
    jobs = cluster.run(b.list_migrations(PageRequest(1000), MigrationFilter())).items
    return (cluster.vms(), hosts, [(j.id, j.status) for j in jobs], feed_of(b).seq)


def _outcome(cluster: Cluster, coro: Coroutine[Any, Any, Any]) -> tuple[Any, ...]:
    try:
        cluster.run(coro)
    except BackendError as exc:
        return ("error", exc.status, exc.code)
    return ("ok",)


def test_a_dry_run_answers_like_the_action_and_changes_nothing(cluster: Cluster) -> None:
    # Every action in every state the cluster passes through: the dry run first (nothing
    # may change: state, jobs, feed), then the real action, which must answer alike.
    b = cluster.backend
    names = sorted(expected_vms())
    steps = [(n, a, f) for a in ("suspend", "resume", "stop", "start", "restart")
             for f in (True, False) for n in names]
    ok = 0
    for name, action, force in steps:
        vm = cluster.vm(name) if any(v.name == name for v in cluster.vms()) else None
        if vm is None:
            continue  # a transient VM that was stopped is gone
        before = _world(cluster)
        dry = _outcome(cluster, b.vm_action(vm.id, action, force, dry_run=True))  # type: ignore[arg-type]
        assert _world(cluster) == before, f"dry run of {action} {force} on {name} changed state"
        real = _outcome(cluster, b.vm_action(vm.id, action, force))  # type: ignore[arg-type]
        assert dry == real, f"{action} force={force} on {name}: dry {dry} != real {real}"
        ok += dry == ("ok",)
        if isinstance(b, SimulatedBackend):
            b.advance(30)  # past any guest's shutdown delay, as the differential test does
    assert ok >= 10  # the sequence reached accepted actions too, not only refusals


def test_a_dry_run_of_a_migration_answers_like_it_and_changes_nothing(cluster: Cluster) -> None:
    b = cluster.backend
    cases = [("web-02", A), ("build-01", B), ("batch-01", B), ("sleepy-01", B),
             ("web-02", GHOST_HOST), ("web-02", B), ("web-02", C)]
    for name, dest in cases:
        vm = cluster.vm(name)
        before = _world(cluster)
        dry = _outcome(cluster, b.migrate(vm.id, MigrationRequest(dest), dry_run=True))
        assert _world(cluster) == before, f"dry run of migrating {name} changed state"
        real = _outcome(cluster, b.migrate(vm.id, MigrationRequest(dest)))
        assert dry == real, f"migrate {name} to {dest}: dry {dry} != real {real}"
    # The accepted one (web-02 to B) left web-02 migrating: the last dry run said so too.
    assert _outcome(cluster, b.migrate(cluster.vm("web-02").id, MigrationRequest(C),
                                       dry_run=True)) == ("error", 409, "vm_migrating")


def test_a_dry_run_on_a_lost_host_answers_503(cluster: Cluster) -> None:
    cluster.lose("node-c")
    b, edge = cluster.backend, cluster.vm("edge-01")
    before = _world(cluster)
    assert _outcome(cluster, b.vm_action(edge.id, "stop", True, dry_run=True)) == \
        ("error", 503, "host_disconnected")
    assert _outcome(cluster, b.migrate(cluster.vm("web-02").id, MigrationRequest(C),
                                       dry_run=True)) == ("error", 409, "host_disconnected")
    assert _world(cluster) == before
