"""Integration: the HTTP API over the libvirt backend on the two-daemon lab (real libvirtd + QEMU).

``lab/libvirt-lab.sh up`` starts two real libvirtd 9.0 daemons with QEMU (TCG)
in their own namespaces and defines lab-vm-01..03 and lab-vm-busy, shut off,
on node 1; ``down`` removes it all. A session fixture does both. Everything
goes through the API (TestClient over the app); virsh and a direct libvirt
connection only confirm what the API says. Covered: every action on a real
guest, a live migration with the reference payload (and its time against
``virsh migrate``), a cancelled migration and a migration whose destination
daemon is killed (both leave the guest running on its source), the
destination host disconnecting and reconnecting, metrics that move.

Needs root and the lab's Debian packages (``lab/install-deps.sh``); skipped,
with the reason, otherwise. Waits are bounded polls on real daemons.
Set ``LAB_TIMINGS_FILE`` to get the measured timings as JSON.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed: run "
                              "lab/install-deps.sh (or pip install -e '.[libvirt]')")
if os.geteuid() != 0:
    pytest.skip("the libvirt lab needs root (it makes network and mount namespaces)",
                allow_module_level=True)
_MISSING = [t for t in ("libvirtd", "virsh", "qemu-system-x86_64", "ip", "unshare")
            if shutil.which(t) is None]
if _MISSING:
    pytest.skip(f"the lab's Debian packages are missing ({', '.join(_MISSING)}): "
                "run lab/install-deps.sh", allow_module_level=True)

from starlette.testclient import TestClient  # noqa: E402

from cockpit_api.backends.libvirt import LibvirtBackend  # noqa: E402
from cockpit_api.config import HostConfig  # noqa: E402
from cockpit_api.world import libvirt_backend  # noqa: E402
from tests.lab_support import NODE1, NODE2, TIMINGS, domstate, lab, virsh  # noqa: E402
from tests.libvirt_support import libvirt_app, libvirt_settings, login_headers, poll  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]

API = "/api/v1"
REFERENCE_PAYLOAD = {"live": True, "persistent": True, "undefine_source": True,
                     "copy_storage": "none"}


@dataclass
class Lab:
    client: TestClient
    headers: dict[str, str]
    backend: LibvirtBackend
    env: dict[str, str]

    @property
    def uri1(self) -> str:
        return self.env["LAB_NODE1_URI"]

    @property
    def uri2(self) -> str:
        return self.env["LAB_NODE2_URI"]

    def host_id(self, name: str) -> str:
        return self.backend.host_id(name)

    def get(self, path: str) -> Any:
        r = self.client.get(API + path, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.client.post(API + path, json=body, headers=self.headers)

    def vm(self, name: str) -> dict[str, Any]:
        return next(v for v in self.get("/vms?limit=1000")["vms"] if v["name"] == name)

    def act(self, name: str, action: str, force: bool = False) -> Any:
        return self.post(f"/vms/{self.vm(name)['id']}/action",
                         {"action": action, "force": force})

    def ensure(self, name: str, status: str) -> dict[str, Any]:
        """Make a guest running or shut off on wherever it is (through the API)."""
        vm = self.vm(name)
        if status == "running" and vm["status"] != "running":
            r = self.act(name, "start")
            assert r.status_code == 200, r.text
        elif status == "shutoff" and vm["status"] != "shutoff":
            r = self.act(name, "stop", force=True)
            assert r.status_code == 200, r.text
        return self.vm(name)

    def wait_job(self, mid: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        return poll(lambda: (j := self.get(f"/migrations/{mid}"))["status"] in statuses and j,
                    timeout, interval=0.02)


@pytest.fixture(scope="module")
def api(lab_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab-api")
    hosts = [HostConfig(NODE1, lab_env["LAB_NODE1_URI"]),
             HostConfig(NODE2, lab_env["LAB_NODE2_URI"])]
    # 20 MiB/s: lab-vm-busy never converges (cancel and kill tests); idle guests do not care.
    settings = libvirt_settings(hosts, tmp / "hosts.json", sample_seconds=0.5,
                                resync_seconds=5, migration_bandwidth_mib=20)
    backend = libvirt_backend(settings, reconnect_min_seconds=0.2,
                                           reconnect_max_seconds=1.0, progress_seconds=0.2,
                                           start_wait_seconds=30)
    with TestClient(libvirt_app(settings, backend)) as client:
        yield Lab(client, login_headers(client), backend, lab_env)


# ---------------------------------------------------------------- inventory


def test_both_hosts_and_the_lab_guests_are_listed(api: Lab) -> None:
    hosts = {h["hostname"]: h for h in api.get("/hosts")["hosts"]}
    assert set(hosts) == {NODE1, NODE2}
    for h in hosts.values():
        assert h["status"] == "connected" and h["cpus"] > 0 and h["memory_mib"] > 0
    vms = api.get(f"/vms?host_id={api.host_id(NODE1)}")["vms"]
    assert [v["name"] for v in vms] == ["lab-vm-01", "lab-vm-02", "lab-vm-03", "lab-vm-busy"]
    for v in vms:
        assert (v["status"], v["persistent"], v["vcpus"], v["memory_mib"]) == (
            "shutoff", True, 1, 64)
    assert api.get(f"/vms?host_id={api.host_id(NODE2)}")["vms"] == []


# ---------------------------------------------------------------- actions


def test_every_action_on_a_real_guest(api: Lab) -> None:
    name = "lab-vm-03"
    cursor = api.get(f"/hosts/{api.host_id(NODE1)}")["sync_cursor"]

    def expect(action: str, force: bool, status: int, value: str) -> None:
        r = api.act(name, action, force)
        key = "status" if status == 200 else "code"
        assert (r.status_code, r.json()[key]) == (status, value), (action, force, r.text)

    expect("start", False, 200, "running")
    assert domstate(api.uri1, name) == "running"
    expect("start", False, 409, "vm_running")
    expect("suspend", False, 200, "paused")
    assert domstate(api.uri1, name) == "paused"
    expect("suspend", False, 200, "paused")  # QEMU's own no-op
    expect("stop", False, 409, "vm_paused")  # QEMU refuses ACPI shutdown of paused vCPUs
    expect("resume", False, 200, "running")
    expect("resume", False, 200, "running")  # a no-op here; QEMU itself would refuse it
    expect("restart", False, 200, "running")
    expect("restart", True, 200, "running")
    expect("stop", False, 200, "running")  # ACPI sent; SeaBIOS never acts on it
    assert domstate(api.uri1, name) == "running"
    expect("stop", True, 200, "shutoff")
    assert domstate(api.uri1, name) == "shut off"
    for action in ("stop", "restart", "suspend", "resume"):
        expect(action, False, 409, "vm_not_running")
    assert api.get(f"/hosts/{api.host_id(NODE1)}")["sync_cursor"] > cursor


# ---------------------------------------------------------------- metrics


def test_metrics_move_for_a_running_guest(api: Lab) -> None:
    vm = api.ensure("lab-vm-02", "running")

    def window(path: str) -> list[dict[str, Any]]:
        now = int(api.backend.now())
        points: list[dict[str, Any]] = api.get(f"{path}?start={now - 30}&end={now}&step=1")[
            "points"]
        return points

    pts = poll(lambda: [p for p in window(f"/vms/{vm['id']}/metrics")
                        if p["memory_used_bytes"] > 0], timeout=10)
    assert all(0 <= p["cpu_percent"] <= 100 for p in pts)
    assert max(p["memory_used_bytes"] for p in pts) > 10 * 1024 * 1024  # QEMU's RSS
    host = poll(lambda: [p for p in window(f"/hosts/{api.host_id(NODE1)}/metrics")
                         if p["cpu_percent"] > 0], timeout=10)
    assert all(0 <= p["cpu_percent"] <= 100 and p["memory_used_bytes"] > 0 for p in host)
    api.ensure("lab-vm-02", "shutoff")


# ---------------------------------------------------------------- live migration


def _migrate_through_the_api(api: Lab, name: str, dest: str) -> tuple[float, dict[str, Any]]:
    vm = api.vm(name)
    t0 = time.monotonic()
    r = api.post(f"/vms/{vm['id']}/migrate",
                 {"destination_host_id": api.host_id(dest), **REFERENCE_PAYLOAD})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "initiated"
    assert r.headers["location"] == f"{API}/migrations/{r.json()['migration_id']}"
    job = api.wait_job(r.json()["migration_id"], {"completed", "failed", "cancelled"}, 30)
    return time.monotonic() - t0, job


def _migrate_with_virsh(api: Lab, name: str, src_uri: str, dest_uri: str) -> float:
    t0 = time.monotonic()
    p = virsh(src_uri, "migrate", "--live", "--persistent", "--undefinesource", "--p2p", name,
              dest_uri)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    return took


def test_a_live_migration_with_the_reference_payload(api: Lab) -> None:
    name = "lab-vm-01"
    api.ensure(name, "running")
    n1, n2 = api.host_id(NODE1), api.host_id(NODE2)
    api_times, virsh_times = [], []
    for _round in range(3):
        took, job = _migrate_through_the_api(api, name, NODE2)
        api_times.append(took)
        assert job["status"] == "completed", job
        p = job["progress"]
        assert p["percent"] == 100 and p["data_remaining_bytes"] == 0
        assert p["data_total_bytes"] >= 64 * 1024 * 1024 and p["data_processed_bytes"] > 0
        assert job["error"] is None and job["started_at"] and job["finished_at"]
        vm = api.vm(name)
        assert (vm["host_id"], vm["status"], vm["persistent"], vm["also_defined_on"],
                vm["migration_id"]) == (n2, "running", True, [], None)
        # Really there: virsh and a direct connection agree.
        assert domstate(api.uri2, name) == "running"
        assert domstate(api.uri1, name) is None  # undefined on the source
        conn = libvirt.open(api.uri2)
        try:
            dom = conn.lookupByName(name)
            assert dom.isActive() and dom.isPersistent()
            assert dom.UUIDString() == vm["id"]
        finally:
            conn.close()
        # Back with virsh, behind the API's back: events bring the inventory along, and the
        # migration libvirt ran is shown as a job (adopted), completed.
        virsh_times.append(_migrate_with_virsh(api, name, api.uri2, api.uri1))
        poll(lambda: (v := api.vm(name))["host_id"] == n1 and v["migration_id"] is None,
             timeout=10, interval=0.05)
        seen = [m for m in api.get(f"/migrations?vm_id={vm['id']}&limit=100")["migrations"]
                if m["source_host_id"] == n2]
        assert seen and seen[-1]["status"] == "completed", seen
    # The first migration after `up` is cold (the destination's first incoming QEMU): the API
    # does it, virsh never does. Compare the warm ones.
    TIMINGS["api_migration_s"] = [round(t, 3) for t in api_times]
    TIMINGS["virsh_migration_s"] = [round(t, 3) for t in virsh_times]
    TIMINGS["api_migration_warm_median_s"] = round(statistics.median(api_times[1:]), 3)
    TIMINGS["virsh_migration_median_s"] = round(statistics.median(virsh_times), 3)
    api.ensure(name, "shutoff")


def test_without_undefine_source_the_source_keeps_a_stale_definition(api: Lab) -> None:
    name = "lab-vm-02"
    n1, n2 = api.host_id(NODE1), api.host_id(NODE2)
    vm = api.ensure(name, "running")
    r = api.post(f"/vms/{vm['id']}/migrate", {"destination_host_id": n2,
                                              "undefine_source": False})
    job = api.wait_job(r.json()["migration_id"], {"completed", "failed", "cancelled"}, 30)
    assert job["status"] == "completed", job
    moved = api.vm(name)
    assert (moved["host_id"], moved["status"], moved["also_defined_on"]) == (
        n2, "running", [n1])
    assert domstate(api.uri1, name) == "shut off"  # the stale inactive definition
    # Back, offline-style (live: false pauses the guest while copying), undefining node 2's copy:
    # node 1's definition is replaced and nothing stale is left anywhere.
    r = api.post(f"/vms/{vm['id']}/migrate", {"destination_host_id": n1, "live": False})
    job = api.wait_job(r.json()["migration_id"], {"completed", "failed", "cancelled"}, 30)
    assert job["status"] == "completed", job
    back = api.vm(name)
    assert (back["host_id"], back["status"], back["also_defined_on"], back["persistent"]) == (
        n1, "running", [], True)
    assert domstate(api.uri2, name) is None
    api.ensure(name, "shutoff")


def _start_busy_guest(api: Lab) -> dict[str, Any]:
    vm = api.ensure("lab-vm-busy", "running")
    assert vm["host_id"] == api.host_id(NODE1)
    # Its kernel is dirtying memory once the vCPU burns (SeaBIOS hands over in ~1-2 s).
    # (>15 %, not ~100 %: the machine's two cores are shared, TCG gets what is left.)
    poll(lambda: any(p["cpu_percent"] > 15 for p in api.get(
        f"/vms/{vm['id']}/metrics?start={int(api.backend.now()) - 5}&step=1")["points"]),
        timeout=20)
    return vm


def _start_busy_migration(api: Lab, vm: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    r = api.post(f"/vms/{vm['id']}/migrate", {"destination_host_id": api.host_id(NODE2)})
    assert r.status_code == 202, r.text
    mid = r.json()["migration_id"]
    job = poll(lambda: (j := api.get(f"/migrations/{mid}"))["status"] == "running"
               and j["progress"]["data_processed_bytes"] > 0 and j, timeout=20, interval=0.05)
    assert 0 < job["progress"]["percent"] < 100
    assert job["progress"]["data_total_bytes"] >= job["progress"]["data_remaining_bytes"] > 0
    assert api.vm("lab-vm-busy")["migration_id"] == mid
    return mid, job


def test_a_cancelled_migration_leaves_the_guest_on_its_source(api: Lab) -> None:
    vm = _start_busy_guest(api)
    mid, running = _start_busy_migration(api, vm)
    TIMINGS["busy_progress_seen"] = running["progress"]
    r = api.post(f"/migrations/{mid}/cancel")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "cancelled" and job["error"] and job["finished_at"]
    TIMINGS["cancelled_error"] = job["error"]
    after = api.vm("lab-vm-busy")
    assert (after["host_id"], after["status"], after["migration_id"]) == (
        api.host_id(NODE1), "running", None)
    assert domstate(api.uri1, "lab-vm-busy") == "running"
    assert domstate(api.uri2, "lab-vm-busy") is None
    listed = api.get("/migrations?status=cancelled")["migrations"]
    assert mid in [m["id"] for m in listed]
    r = api.post(f"/migrations/{mid}/cancel")
    assert (r.status_code, r.json()["code"]) == (409, "migration_finished")


def test_a_killed_destination_fails_the_migration_and_comes_back(api: Lab) -> None:
    n1, n2 = api.host_id(NODE1), api.host_id(NODE2)
    vm = _start_busy_guest(api)
    mid, _ = _start_busy_migration(api, vm)
    lab("kill-daemon", "2")
    t_kill = time.monotonic()
    job = api.wait_job(mid, {"failed", "completed", "cancelled"}, 30)
    assert job["status"] == "failed" and job["error"], job
    TIMINGS["failed_after_kill_s"] = round(time.monotonic() - t_kill, 3)
    TIMINGS["killed_destination_error"] = job["error"]
    after = api.vm("lab-vm-busy")
    assert (after["host_id"], after["status"], after["migration_id"]) == (n1, "running", None)
    assert domstate(api.uri1, "lab-vm-busy") == "running"
    poll(lambda: api.get(f"/hosts/{n2}")["status"] == "disconnected", timeout=10)
    TIMINGS["disconnect_seen_after_kill_s"] = round(time.monotonic() - t_kill, 3)
    # Work that needs node 2 is refused at once, not hung.
    t0 = time.monotonic()
    r = api.post(f"/vms/{vm['id']}/migrate", {"destination_host_id": n2})
    assert (r.status_code, r.json()["code"]) == (409, "host_disconnected")
    assert time.monotonic() - t0 < 1
    lab("start-daemon", "2")
    t_start = time.monotonic()
    poll(lambda: api.get(f"/hosts/{n2}")["status"] == "connected", timeout=30, interval=0.05)
    TIMINGS["reconnect_after_start_daemon_s"] = round(time.monotonic() - t_start, 3)
    assert api.get(f"/vms?host_id={n2}")["vms"] == []  # nothing left behind on node 2
    api.ensure("lab-vm-busy", "shutoff")


# ---------------------------------------------------------------- differential: sim vs QEMU


def test_the_simulator_answers_like_the_lab(api: Lab) -> None:
    """One scripted sequence of actions and migrations, sent through the API to the lab
    (real QEMU) and to a simulator holding a copy of the lab's cluster: same answers."""
    from cockpit_api.app import create_app
    from cockpit_api.backends.sim import scenario
    from cockpit_api.backends.sim.backend import SimulatedBackend
    from cockpit_api.backends.sim.clock import VirtualClock
    from cockpit_api.config import Settings

    name = "lab-vm-03"
    api.ensure(name, "shutoff")
    n1, n2 = api.host_id(NODE1), api.host_id(NODE2)
    names = {n1: NODE1, n2: NODE2}
    mirror = {
        "name": "lab-mirror", "seed": 1,
        "users": [{"username": "admin", "password": "admin", "role": "admin"}],
        "hosts": [{"id": h["id"], "hostname": h["hostname"]} for h in api.get("/hosts")["hosts"]],
        "vms": [{"id": v["id"], "name": v["name"], "host": v["host_id"], "status": v["status"],
                 "vcpus": v["vcpus"], "memory_mib": v["memory_mib"], "persistent": v["persistent"]}
                for v in api.get("/vms?limit=1000")["vms"]],
    }
    sim = SimulatedBackend(scenario.load(mirror), VirtualClock(T0_SIM))
    sim_app = create_app(Settings(validate_responses=True, jwt_secret="s" * 40), backend=sim)

    def script(client: TestClient, headers: dict[str, str], settle: Any) -> list[Any]:
        def vm() -> dict[str, Any]:
            r = client.get(f"{API}/vms?limit=1000", headers=headers).json()["vms"]
            return next(v for v in r if v["name"] == name)

        def post(path: str, body: dict[str, Any]) -> Any:
            r = client.post(API + path, json=body, headers=headers)
            return r.status_code, (r.json().get("code") or r.json().get("status"))

        def where() -> tuple[str, str, bool, list[str]]:
            v = vm()
            return (v["status"], names[v["host_id"]], v["persistent"],
                    [names[h] for h in v["also_defined_on"]])

        def migrate(dest: str, **flags: Any) -> Any:
            r = client.post(f"{API}/vms/{vm()['id']}/migrate", headers=headers,
                            json={"destination_host_id": dest, **flags})
            if r.status_code != 202:
                return r.status_code, r.json()["code"]
            job = settle(r.json()["migration_id"])
            return 202, job["status"], where()

        vm_id = vm()["id"]
        out: list[Any] = [
            migrate(n2, **REFERENCE_PAYLOAD),                       # shut off: refused
            post(f"/vms/{vm_id}/action", {"action": "start"}),
            migrate(n1, **REFERENCE_PAYLOAD),                       # its own host
            migrate(n2, **REFERENCE_PAYLOAD),                       # the reference move
            migrate(n1, live=False, persistent=True, undefine_source=False, copy_storage="none"),
            post(f"/vms/{vm_id}/action", {"action": "suspend"}),
            post(f"/vms/{vm_id}/action", {"action": "stop"}),       # paused: refused
            post(f"/vms/{vm_id}/action", {"action": "resume"}),
            post(f"/vms/{vm_id}/action", {"action": "resume"}),     # running: no-op
            post(f"/vms/{vm_id}/action", {"action": "stop", "force": True}),
            where(),
        ]
        return out

    def lab_settle(mid: str) -> dict[str, Any]:
        return api.wait_job(mid, {"completed", "failed", "cancelled"}, timeout=60)

    real = script(api.client, api.headers, lab_settle)
    with TestClient(sim_app) as c:
        token = c.post(f"{API}/auth/login", json={"username": "admin", "password": "admin"})
        h = {"Authorization": f"Bearer {token.json()['token']}"}

        def sim_settle(mid: str) -> dict[str, Any]:
            sim.advance(120)
            job: dict[str, Any] = c.get(f"{API}/migrations/{mid}", headers=h).json()
            return job

        simulated = script(c, h, sim_settle)
    assert simulated == real
    assert real[3] == (202, "completed", ("running", NODE2, True, []))
    assert real[4] == (202, "completed", ("running", NODE1, True, [NODE2]))


T0_SIM = 1_800_000_000.0


# ---------------------------------------------------------------- conformance on real QEMU


def test_conformance_against_the_served_libvirt_backend(lab_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """`cockpit-api serve --backend libvirt` on the lab, checked by `cockpit-api conformance`
    with writes allowed on two real guests: actions and live migrations on real QEMU."""
    from tests.libvirt_support import conformance_of_served_libvirt, passed_cases

    t0 = time.monotonic()
    proc, log = conformance_of_served_libvirt(
        [(NODE1, lab_env["LAB_NODE1_URI"]), (NODE2, lab_env["LAB_NODE2_URI"])], tmp_path,
        vm_pattern="^lab-vm-0[12]$", max_examples=5, sample_seconds=2.0)
    TIMINGS["conformance_on_lab_s"] = round(time.monotonic() - t0, 1)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:] + log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    TIMINGS["conformance_on_lab_cases"] = passed_cases(proc.stdout)
