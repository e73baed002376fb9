"""The libvirt backend against libvirt's test driver: fast, in-process, deterministic.

Three test-driver hosts (``tests/data/testdriver-node-*.xml``) with domains in
every libvirt state. Covered here: the domain-to-VM mapping, every action and
its refusals, the error translator, stable host ids, pagination and filters,
events from libvirt, a lost and recovered host, metrics, and a migration that
the test driver cannot do failing as a job (never a 500). The same through the
HTTP app: tests/test_libvirt_http.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed: run "
                              "lab/install-deps.sh (or pip install -e '.[libvirt]')")


from cockpit_api.backends.base import (  # noqa: E402
    Backend,
    BackendError,
    Conflict,
    MetricsWindow,
    MigrationFilter,
    MigrationRequest,
    NotFound,
    NotSupported,
    PageRequest,
    Unavailable,
    Vm,
    VmFilter,
)
from cockpit_api.backends.libvirt import LibvirtBackend, status_of  # noqa: E402
from cockpit_api.backends.libvirt.errors import translate  # noqa: E402
from cockpit_api.backends.libvirt.hostids import uuid7  # noqa: E402
from cockpit_api.backends.libvirt.metrics import HostSample, MetricsStore  # noqa: E402
from cockpit_api.config import ConfigError, HostConfig  # noqa: E402
from cockpit_api.world import libvirt_backend  # noqa: E402
from tests.libvirt_support import (  # noqa: E402
    HOST_IDS,
    bring_back,
    eventually,
    expected_vms,
    host_configs,
    libvirt_settings,
    make_backend,
    take_away,
)

pytestmark = pytest.mark.libvirt

R = TypeVar("R")
API = "/api/v1"
A, B, C = HOST_IDS["node-a"], HOST_IDS["node-b"], HOST_IDS["node-c"]
GHOST_HOST = "019e0014-0000-7057-b326-0000000000ff"


class Harness:
    """A started backend and the event loop it lives on (kept between calls)."""

    def __init__(self, backend: LibvirtBackend, runner: asyncio.Runner) -> None:
        self.b = backend
        self._runner = runner

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self._runner.run(coro)

    def vm(self, name: str) -> Vm:
        return next(v for v in self.b._inv.vms.values() if v.name == name)

    def act(self, name: str, action: str, force: bool = False) -> Vm:
        return self.run(self.b.vm_action(self.vm(name).id, action, force))  # type: ignore[arg-type]


@pytest.fixture
def lv(tmp_path: Path) -> Iterator[Harness]:
    backend = make_backend(tmp_path)
    with asyncio.Runner() as runner:
        h = Harness(backend, runner)
        h.run(backend.start())
        try:
            yield h
        finally:
            h.run(backend.close())


# ---------------------------------------------------------------- mapping


def test_every_libvirt_state_has_its_name() -> None:
    assert {status_of(getattr(libvirt, f"VIR_DOMAIN_{s.upper()}")): s for s in (
        "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
        "pmsuspended")} == {s: s for s in ("nostate", "running", "blocked", "paused",
                                           "shutdown", "shutoff", "crashed", "pmsuspended")}
    assert status_of(99) == "nostate"


def test_the_inventory_maps_every_domain(lv: Harness) -> None:
    want = expected_vms()
    page = lv.run(lv.b.list_vms(PageRequest(1000), VmFilter()))
    assert sorted(v.name for v in page.items) == sorted(want)
    for vm in page.items:
        w = want[vm.name]
        assert (vm.id, vm.host_id, vm.status, vm.vcpus, vm.memory_mib, vm.persistent) == (
            w["id"], HOST_IDS[w["host"]], w["status"], w["vcpus"], w["memory_mib"],
            w["persistent"]), vm.name
        assert vm.also_defined_on == tuple(w.get("also_defined_on", ())), vm.name
        assert vm.migration_id is None
    assert {v.status for v in page.items} == {"nostate", "running", "blocked", "paused",
                                              "shutdown", "shutoff", "crashed", "pmsuspended"}


def test_a_vm_defined_on_two_hosts_is_listed_once_under_its_active_copy(lv: Harness) -> None:
    vm = lv.vm("web-01")
    assert (vm.host_id, vm.status, vm.also_defined_on) == (A, "running", (B,))
    assert [v.name for v in lv.b._inv.vms.values()].count("web-01") == 1


def test_hosts_come_from_libvirt_and_the_state_file(lv: Harness) -> None:
    hosts = lv.run(lv.b.list_hosts(PageRequest())).items
    assert [(h.id, h.hostname, h.status) for h in hosts] == [
        (A, "node-a", "connected"), (B, "node-b", "connected"), (C, "node-c", "connected")]
    a = lv.run(lv.b.get_host(A))
    assert (a.cpus, a.memory_mib, a.vm_count) == (8, 16384, 8)
    assert a.sync_cursor >= int(time.time()) - 60
    assert lv.b.info.kind == "libvirt" and lv.b.info.details["hosts"] == ["node-a", "node-b",
                                                                         "node-c"]


# ---------------------------------------------------------------- actions


def test_start_stop_and_the_refusals_around_them(lv: Harness) -> None:
    assert lv.act("build-01", "start").status == "running"
    with pytest.raises(Conflict) as err:
        lv.act("build-01", "start")
    assert err.value.code == "vm_running"
    assert lv.act("build-01", "stop", force=True).status == "shutoff"
    for action in ("stop", "restart", "suspend", "resume"):
        for force in (False, True):
            with pytest.raises(Conflict) as err:
                lv.act("build-01", action, force)
            assert err.value.code == "vm_not_running", (action, force)
    assert lv.run(lv.b.get_vm(lv.vm("build-01").id)).status == "shutoff"


def test_a_graceful_stop_on_the_test_driver_powers_off_at_once(lv: Harness) -> None:
    # A known difference: QEMU guests (and the simulator's) take their time, or never stop.
    assert lv.act("web-02", "stop").status == "shutoff"


def test_restart_and_reset_keep_a_vm_running(lv: Harness) -> None:
    assert lv.act("web-02", "restart").status == "running"
    assert lv.act("web-02", "restart", force=True).status == "running"


def test_suspend_resume_and_the_qemu_no_ops(lv: Harness) -> None:
    # The test driver refuses suspend-of-paused and resume-of-running (internal error);
    # the backend answers them as QEMU's no-ops, like the simulator.
    assert lv.act("web-02", "resume").status == "running"
    assert lv.act("web-02", "suspend").status == "paused"
    assert lv.act("web-02", "suspend").status == "paused"
    assert lv.act("web-02", "resume").status == "running"


def test_a_graceful_stop_of_a_paused_vm_is_refused(lv: Harness) -> None:
    # QEMU refuses an ACPI shutdown of paused vCPUs; the simulator queues it (a known difference).
    with pytest.raises(Conflict) as err:
        lv.act("db-01", "stop")
    assert err.value.code == "vm_paused"
    assert lv.act("db-01", "stop", force=True).status == "shutoff"


@pytest.mark.parametrize("action", ["suspend", "resume"])
def test_a_pm_suspended_vm_cannot_be_paused_or_resumed(lv: Harness, action: str) -> None:
    with pytest.raises(Conflict) as err:
        lv.act("sleepy-01", action)
    assert err.value.code == "vm_pmsuspended"


def test_a_crashed_vm_can_be_started(lv: Harness) -> None:
    assert lv.vm("batch-01").status == "crashed"
    assert lv.act("batch-01", "start").status == "running"


def test_the_other_states_count_as_running_or_not_like_the_simulator(lv: Harness) -> None:
    for name in ("idle-01", "halting-01"):  # blocked, shutdown: active
        with pytest.raises(Conflict) as err:
            lv.act(name, "start")
        assert err.value.code == "vm_running"
    with pytest.raises(Conflict) as err:
        lv.act("limbo-01", "stop")  # nostate: not running
    assert err.value.code == "vm_not_running"


def test_a_transient_vm_vanishes_when_it_stops(lv: Harness) -> None:
    vm = lv.vm("scratch-01")
    assert vm.persistent is False
    assert lv.act("scratch-01", "stop", force=True).status == "shutoff"
    with pytest.raises(NotFound):
        lv.run(lv.b.get_vm(vm.id))


def test_an_unknown_vm_is_not_found(lv: Harness) -> None:
    ghost = "00000000-0000-4000-8000-000000000000"
    for coro in (lv.b.vm_action(ghost, "start", False), lv.b.get_vm(ghost),
                 lv.b.migrate(ghost, MigrationRequest(B)),
                 lv.b.vm_metrics(ghost, MetricsWindow.of(None, None, 60, time.time()))):
        with pytest.raises(NotFound) as err:
            lv.run(coro)
        assert err.value.code == "vm_not_found"


def test_every_action_bumps_its_hosts_sync_cursor(lv: Harness) -> None:
    before = lv.run(lv.b.get_host(A)).sync_cursor
    assert lv.run(lv.b.get_host(A)).sync_cursor == before  # reads change nothing
    lv.act("build-01", "start")
    after = lv.run(lv.b.get_host(A)).sync_cursor
    assert after > before
    lv.act("build-01", "suspend")
    assert lv.run(lv.b.get_host(A)).sync_cursor > after


def test_changes_made_outside_the_api_arrive_as_events(lv: Harness) -> None:
    vm = lv.vm("report-01")
    link = lv.b._hosts[B].link
    assert link is not None

    async def behind_our_back() -> None:
        # The test driver's state is private to its connection: act on the backend's own,
        # on its owner thread, as another client of the host would.
        await link.call(lambda conn: conn.lookupByUUIDString(vm.id).create(), "behind")
        await eventually(lambda: lv.b._inv.vms[vm.id].status == "running")

    lv.run(behind_our_back())


# ---------------------------------------------------------------- errors


def _libvirt_error(code: int, domain: int = 0, message: str = "boom") -> Any:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, 0, 0)
    return exc


@pytest.mark.parametrize(
    ("code", "domain", "message", "kind", "status", "api_code"),
    [
        ("VIR_ERR_NO_DOMAIN", 0, "Domain not found", NotFound, 404, "vm_not_found"),
        ("VIR_ERR_OPERATION_INVALID", 0, "domain is not running", Conflict, 409,
         "vm_not_running"),
        ("VIR_ERR_OPERATION_INVALID", 0, "domain is already running", Conflict, 409,
         "vm_running"),
        ("VIR_ERR_OPERATION_INVALID", 0, "something else", Conflict, 409, "operation_invalid"),
        ("VIR_ERR_OPERATION_ABORTED", 0, "job canceled by client", Conflict, 409,
         "operation_aborted"),
        ("VIR_ERR_DOM_EXIST", 0, "exists", Conflict, 409, "vm_exists"),
        ("VIR_ERR_NO_SUPPORT", 0, "not supported", NotSupported, 501, "not_supported"),
        ("VIR_ERR_OPERATION_UNSUPPORTED", 0, "unsupported", NotSupported, 501, "not_supported"),
        ("VIR_ERR_ARGUMENT_UNSUPPORTED", 0, "p2p", NotSupported, 501, "not_supported"),
        ("VIR_ERR_OPERATION_TIMEOUT", 0, "state change lock", Unavailable, 503, "host_busy"),
        ("VIR_ERR_SYSTEM_ERROR", 0, "Connection refused", Unavailable, 503,
         "host_disconnected"),
        ("VIR_ERR_RPC", 0, "rpc", Unavailable, 503, "host_disconnected"),
        ("VIR_ERR_INTERNAL_ERROR", "VIR_FROM_RPC", "client socket is closed", Unavailable, 503,
         "host_disconnected"),
        ("VIR_ERR_INTERNAL_ERROR", 0, "internal error", Unavailable, 503, "libvirt_error"),
        ("VIR_ERR_OPERATION_FAILED", 0, "already exists", Unavailable, 503, "libvirt_error"),
    ],
)
def test_libvirt_errors_translate_to_domain_errors(
        code: str, domain: Any, message: str, kind: type[BackendError], status: int,
        api_code: str) -> None:
    dom = getattr(libvirt, domain) if isinstance(domain, str) else domain
    err = translate(_libvirt_error(getattr(libvirt, code), dom, message))
    assert type(err) is kind and (err.status, err.code) == (status, api_code)
    assert err.detail == message
    if isinstance(err, Unavailable):
        assert err.retry_after > 0


def test_the_translator_passes_domain_errors_through_and_wraps_the_rest() -> None:
    mine = Conflict("x", code="y")
    assert translate(mine) is mine
    err = translate(RuntimeError("odd"))
    assert isinstance(err, Unavailable) and "odd" in err.detail
    assert isinstance(translate(libvirt.libvirtError("no error set")), Unavailable)


def test_a_hung_call_is_unavailable_not_a_hang(lv: Harness) -> None:
    h = lv.b._hosts[A]
    with pytest.raises(Unavailable) as err:
        lv.run(lv.b.hosts.run(h, lambda _c: time.sleep(0.5), "sleep", timeout=0.05))
    assert err.value.code == "host_busy"


# ---------------------------------------------------------------- host ids


def test_host_ids_are_uuidv7_and_stable_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "ids" / "hosts.json"
    hosts = host_configs(tmp_path)
    first = LibvirtBackend(hosts[:2], state_file=str(state))
    ids = [first.host_id("node-a"), first.host_id("node-b")]
    for i in ids:
        u = uuid.UUID(i)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert abs((u.int >> 80) / 1000 - time.time()) < 60  # milliseconds since the epoch
    again = LibvirtBackend(list(reversed(hosts[:2])), state_file=str(state))
    assert [again.host_id("node-a"), again.host_id("node-b")] == ids
    # A new host gets a new id; a host that leaves the config keeps its id for later.
    third = LibvirtBackend(hosts[1:], state_file=str(state))
    assert third.host_id("node-b") == ids[1] and third.host_id("node-c") not in ids
    back = LibvirtBackend(hosts, state_file=str(state))
    assert back.host_id("node-a") == ids[0]
    assert json.loads(state.read_text())["hosts"]["node-a"] == ids[0]


def test_uuid7_is_time_ordered() -> None:
    assert uuid7(1_000) < uuid7(2_000) < uuid7(2**47)
    assert uuid7(0x019E0014ABCD)[:13] == "019e0014-abcd"


def test_a_broken_state_file_is_a_config_error(tmp_path: Path) -> None:
    state = tmp_path / "hosts.json"
    state.write_text("{not json")
    settings = libvirt_settings(host_configs(tmp_path), state)
    with pytest.raises(ConfigError, match=r"hosts\.json"):
        libvirt_backend(settings)
    with pytest.raises(ConfigError, match="hosts"):
        libvirt_backend(libvirt_settings([], tmp_path / "other.json"))
    with pytest.raises(ConfigError, match="unique"):
        libvirt_backend(libvirt_settings(
            [HostConfig("x", "test:///default"), HostConfig("x", "test:///default")],
            tmp_path / "dup.json"))


def test_the_backend_implements_the_protocol(tmp_path: Path) -> None:
    assert isinstance(make_backend(tmp_path), Backend)


# ---------------------------------------------------------------- lists


def test_pages_cover_every_vm_once_in_order(lv: Harness) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = lv.run(lv.b.list_vms(PageRequest(3, cursor), VmFilter()))
        seen += [v.name for v in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(expected_vms())


def test_filters_by_host_and_status(lv: Harness) -> None:
    page = lv.run(lv.b.list_vms(PageRequest(100), VmFilter(host_id=A, status="running")))
    assert sorted(v.name for v in page.items) == ["scratch-01", "web-01", "web-02"]
    page = lv.run(lv.b.list_vms(PageRequest(100), VmFilter(status="shutoff")))
    assert sorted(v.name for v in page.items) == ["build-01", "edge-02", "report-01"]
    with pytest.raises(NotFound):
        lv.run(lv.b.list_vms(PageRequest(), VmFilter(host_id=GHOST_HOST)))


# ---------------------------------------------------------------- migrations


def test_a_migration_the_test_driver_cannot_do_fails_as_a_job(lv: Harness) -> None:
    vm = lv.vm("web-02")

    async def scenario() -> None:
        job = await lv.b.migrate(vm.id, MigrationRequest(B))
        assert job.status == "initiated" and len(job.id) == 12
        int(job.id, 16)
        assert (await lv.b.get_vm(vm.id)).migration_id == job.id
        # While it is accepted, the VM is busy: no second migration, no power action.
        with pytest.raises(Conflict) as err:
            await lv.b.migrate(vm.id, MigrationRequest(C))
        assert err.value.code == "vm_migrating"
        with pytest.raises(Conflict) as err:
            await lv.b.vm_action(vm.id, "stop", True)
        assert err.value.code == "vm_migrating"
        await eventually(lambda: lv.b.migrations.get(job.id).status == "failed")
        done = await lv.b.get_migration(job.id)
        assert done.error and "not supported" in done.error
        assert done.finished_at is not None and done.finished_at >= done.created_at
        after = await lv.b.get_vm(vm.id)
        assert (after.host_id, after.status, after.migration_id) == (A, "running", None)
        with pytest.raises(Conflict) as err:
            await lv.b.cancel_migration(job.id)
        assert err.value.code == "migration_finished"
        page = await lv.b.list_migrations(PageRequest(), MigrationFilter(status="failed"))
        assert [m.id for m in page.items] == [job.id]
        page = await lv.b.list_migrations(PageRequest(), MigrationFilter(vm_id=A))
        assert page.items == []

    lv.run(scenario())


@pytest.mark.parametrize(
    ("name", "dest", "kind", "code"),
    [
        ("web-02", A, Conflict, "same_host"),
        ("build-01", B, Conflict, "vm_not_running"),
        ("sleepy-01", B, Conflict, "vm_pmsuspended"),
        ("web-02", "019e0014-0000-7057-b326-0000000000ff", NotFound, "host_not_found"),
    ],
)
def test_migrations_refused(lv: Harness, name: str, dest: str, kind: type[BackendError],
                            code: str) -> None:
    with pytest.raises(kind) as err:
        lv.run(lv.b.migrate(lv.vm(name).id, MigrationRequest(dest)))
    assert err.value.code == code


def test_unknown_migrations_are_not_found(lv: Harness) -> None:
    for coro in (lv.b.get_migration("abc123def456"), lv.b.cancel_migration("abc123def456")):
        with pytest.raises(NotFound) as err:
            lv.run(coro)
        assert err.value.code == "migration_not_found"


# ---------------------------------------------------------------- a lost host


def test_a_lost_host_reads_disconnected_refuses_work_and_comes_back(
        lv: Harness, tmp_path: Path) -> None:
    before = lv.run(lv.b.get_host(C)).sync_cursor
    lv.run(take_away(lv.b, tmp_path))
    host = lv.run(lv.b.get_host(C))
    assert host.status == "disconnected" and host.sync_cursor > before
    edge = lv.vm("edge-01")
    assert edge.host_id == C  # still listed, as last seen
    with pytest.raises(Unavailable) as err:
        lv.act("edge-01", "stop", force=True)
    assert err.value.code == "host_disconnected" and err.value.retry_after > 0
    with pytest.raises(Unavailable):
        lv.run(lv.b.migrate(edge.id, MigrationRequest(A)))
    with pytest.raises(Conflict) as cerr:
        lv.run(lv.b.migrate(lv.vm("web-02").id, MigrationRequest(C)))
    assert cerr.value.code == "host_disconnected"

    async def reconnects() -> None:
        await asyncio.sleep(0.3)  # several reconnect attempts fail while the host is away
        assert lv.b._inv.hosts[C].status == "disconnected"
        bring_back(tmp_path)
        await eventually(lambda: lv.b._inv.hosts[C].status == "connected")

    lv.run(reconnects())
    assert lv.act("edge-01", "stop", force=True).status == "shutoff"


# ---------------------------------------------------------------- metrics


def test_metrics_come_from_samples(lv: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    lv.run(lv.b.sample_now())
    last = lv.b._metrics.hosts[A].ts[-1]
    # The next whole second is the first instant at or after the samples: let it have come.
    monkeypatch.setattr(lv.b, "now", lambda: last + 1.0)
    t = int(last) + 1
    window = MetricsWindow.of(t - 5, t, 1, lv.b.now())
    vm = lv.vm("web-01")

    async def sampled() -> None:
        pts = (await lv.b.vm_metrics(vm.id, window)).points
        assert pts, "a running VM has points"
        assert all(0 <= p.cpu_percent <= 100 and p.memory_used_bytes > 0 for p in pts)
        off = (await lv.b.vm_metrics(lv.vm("build-01").id, window)).points
        assert off and all(p.memory_used_bytes == 0 and p.cpu_percent == 0 for p in off)
        host = (await lv.b.host_metrics(A, window)).points
        assert host and all(0 <= p.cpu_percent <= 100 and p.memory_used_bytes > 0
                            for p in host)
        with pytest.raises(NotFound):
            await lv.b.host_metrics("019e0014-0000-7057-b326-0000000000ff", window)

    lv.run(sampled())


def test_rates_and_cpu_share_from_counter_deltas() -> None:
    store = MetricsStore(retention_seconds=100)
    stats = {"cpu.time": 0, "balloon.rss": 1024, "vcpu.current": 2, "block.count": 1,
             "block.0.rd.bytes": 0, "block.0.wr.bytes": 0, "net.count": 1,
             "net.0.rx.bytes": 0, "net.0.tx.bytes": 0}
    cpu0 = {"kernel": 0, "user": 0, "idle": 0, "iowait": 0}

    def sample(t: float, vm: dict[str, int], cpu: dict[str, int]) -> None:
        store.record_host("h", HostSample(t, {"v": vm}, cpu, None), host_cpus=4,
                          vm_info={"v": (2, 64)}, listed_here={"v"}, inactive_here=set())

    sample(1000.0, stats, cpu0)
    # 10 s later: 5 s of CPU over 2 vCPUs = 25 %; 1000 B/s read, 500 B/s received.
    sample(1010.0, {**stats, "cpu.time": 5 * 10**9, "block.0.rd.bytes": 10_000,
                    "net.0.rx.bytes": 5_000}, {"kernel": 10, "user": 30, "idle": 60,
                                               "iowait": 0})
    # A counter that went back (guest restarted) is 0, never negative; > 100 % is clamped.
    sample(1020.0, {**stats, "cpu.time": 10**12}, cpu0)
    v = store.vms["v"].values
    assert v[0] == (0.0, 1024 * 1024, 0.0, 0.0, 0.0, 0.0)
    assert v[1] == (25.0, 1024 * 1024, 1000.0, 0.0, 500.0, 0.0)
    assert v[2][0] == 100.0 and min(v[2][1:]) >= 0
    h = store.hosts["h"].values
    assert h[1][0] == 40.0  # node counters: busy 40 of 100
    assert h[1][2] == 1000.0 and h[1][4] == 500.0  # the sum of its VMs' rates
    assert 0 <= h[2][0] <= 100  # counters that went back: the VMs' share instead

    w = MetricsWindow(1000, 1030, 5)
    ts = [p.t for p in store.vms["v"].window("v", w, now=1030).points]
    assert ts == [1000, 1010, 1020]  # 1005/1015/1025 have no sample less than a step old
    w = MetricsWindow(1000, 1030, 10)
    assert [p.t for p in store.vms["v"].window("v", w, now=1015).points] == [1000, 1010]
    store.trim(now=1200, keep_vms=set())
    assert store.vms == {} and store.hosts == {}


def test_a_disconnected_host_leaves_a_gap(lv: Harness, tmp_path: Path) -> None:
    lv.run(lv.b.sample_now())
    lv.run(take_away(lv.b, tmp_path))
    n = len(lv.b._metrics.hosts[C].ts)
    lv.run(lv.b.sample_now())
    assert len(lv.b._metrics.hosts[C].ts) == n
    assert len(lv.b._metrics.hosts[A].ts) == n + 1


# ---------------------------------------------------------------- lifecycle


def test_close_stops_every_task_and_connection(tmp_path: Path) -> None:
    backend = make_backend(tmp_path)

    async def scenario() -> None:
        await backend.start()
        await backend.start()  # idempotent
        assert backend._tasks
        await backend.close()
        await backend.close()
        assert not backend._tasks
        assert all(h.link is None for h in backend._hosts.values())
        with pytest.raises(Unavailable):
            await backend.vm_action(next(iter(backend._inv.vms)), "start", False)

    asyncio.run(scenario())


def test_an_unreachable_host_does_not_stop_the_start(tmp_path: Path) -> None:
    hosts = [*host_configs(tmp_path)[:1], HostConfig("nowhere", "test:///nonexistent/host.xml")]
    backend = LibvirtBackend(hosts, state_file=str(tmp_path / "s.json"),
                             reconnect_min_seconds=60)

    async def scenario() -> None:
        t0 = time.monotonic()
        await backend.start()
        assert time.monotonic() - t0 < 0.5  # serves at once: hosts connect in the background
        try:
            await eventually(
                lambda: backend._inv.hosts[backend.host_id("node-a")].status == "connected")
            assert backend._inv.hosts[backend.host_id("nowhere")].status == "disconnected"
        finally:
            await backend.close()

    asyncio.run(scenario())
