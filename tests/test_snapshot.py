"""`cockpit-api snapshot` against served simulators: the fixed point, anonymizing, drift, bad input.

Every deployment here is a real server process on loopback (tests/serving.py)
with its clock pinned (``--speed 0``), moved only through the control plane,
and every snapshot is the real command in its own process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cockpit_api.backends.sim import scenario as scenarios
from tests.serving import ROOT, Server, free_port, serve_process

T0 = "2026-12-01T08:00:00Z"
WEB1 = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on node 1
NODE2 = "019e0014-ffff-7057-b326-000000000002"
DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d"  # db-primary-01, running on node 2


def _serve(*extra: str, clock: str | float = T0) -> Any:
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port), "--speed",
            "0", "--clock-start", str(clock), "--log-level", "warning", *extra]
    return serve_process(argv, port)


def snapshot(base: str, *args: str, password: str = "admin",
             user: str = "admin") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cockpit_api.cli", "snapshot", "--base-url", base, "--username",
         user, "--password-stdin", "--quiet", *args],
        input=password + "\n", cwd=ROOT, capture_output=True, text=True, timeout=120)


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        r = httpx.post(f"{base}/api/v1/auth/login", json={"username": "admin",
                                                            "password": "admin"})
        assert r.status_code == 200, r.text
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}

    def get(self, path: str) -> Any:
        r = httpx.get(self.base + path, headers=self.h, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        r = httpx.post(self.base + path, json=body, headers=self.h, timeout=30)
        assert r.status_code < 300, r.text
        return r.json()


def _migrate(api: Api, vm: str, dest: str) -> None:
    job = api.post(f"/api/v1/vms/{vm}/migrate", {"destination_host_id": dest, "live": True,
                                                 "persistent": True, "undefine_source": True,
                                                 "copy_storage": "none"})
    api.post("/_sim/clock", {"advance": 60})
    assert api.get(f"/api/v1/migrations/{job['migration_id']}")["status"] == "completed"


@pytest.fixture(scope="module")
def source() -> Iterator[Server]:
    """The default cluster after one completed live migration (web-frontend-01 to node 2)."""
    with _serve() as server:
        _migrate(Api(server.base), WEB1, NODE2)
        yield server


@pytest.fixture(scope="module")
def first(source: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("snap") / "cluster.yaml"
    p = snapshot(source.base, "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out


def _body(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# cockpit-api snapshot of http://127.0.0.1:")
    return lines[1:]  # all but the source URL (another port)


def _now(base: str) -> float:
    return float(Api(base).get("/_sim/state")["now"])


def test_snapshot_serve_snapshot_is_a_fixed_point(source: Server, first: Path,
                                                  tmp_path: Path) -> None:
    data = yaml.safe_load(first.read_text(encoding="utf-8"))
    # What it carries: the migration as history and its pair's speed, fitted charts.
    (job,) = data["migrations"]
    assert (job["vm"], job["destination"], job["status"]) == (WEB1, NODE2, "completed")
    (link,) = data["links"]
    assert link["destination"] == NODE2 and link["setup_seconds"] == 0.5
    assert link["bandwidth_bytes_per_s"] == pytest.approx(512 * 1024 * 1024, rel=0.01)
    web1 = next(v for v in data["vms"] if v["id"] == WEB1)
    assert web1["host"] == NODE2 and "cpu" in web1["guest"]
    with _serve("--scenario", str(first), clock=_now(source.base)) as mock:
        second = tmp_path / "again.yaml"
        p = snapshot(mock.base, "-o", str(second))
        assert p.returncode == 0, p.stderr
        assert _body(second) == _body(first)
        # A chart on the mock has its mean within 10 % of the source's.
        src, dst = Api(source.base), Api(mock.base)
        for vm in (WEB1, DB1):
            means = []
            for api in (src, dst):
                pts = api.get(f"/api/v1/vms/{vm}/metrics?start={int(_now(source.base)) - 86340}"
                              f"&end={int(_now(source.base))}&step=60")["points"]
                means.append(statistics.fmean(p["cpu_percent"] for p in pts))
            assert means[1] == pytest.approx(means[0], rel=0.10), (vm, means)
        # Same state through every GET, and the job history is listed.
        assert dst.get("/api/v1/hosts")["hosts"] == src.get("/api/v1/hosts")["hosts"]
        assert dst.get("/api/v1/vms?limit=1000")["vms"] == src.get("/api/v1/vms?limit=1000")["vms"]
        (seen,) = dst.get("/api/v1/migrations")["migrations"]
        (orig,) = src.get("/api/v1/migrations")["migrations"]
        assert {k: seen[k] for k in ("id", "vm_id", "status", "progress")} == \
            {k: orig[k] for k in ("id", "vm_id", "status", "progress")}


def test_a_snapshot_is_deterministic_and_loads_as_a_scenario(source: Server, first: Path,
                                                            tmp_path: Path) -> None:
    again = tmp_path / "again.yaml"
    assert snapshot(source.base, "-o", str(again)).returncode == 0
    assert again.read_bytes() == first.read_bytes()
    sc = scenarios.load(first)
    assert len(sc.vms) == 14 and len(sc.hosts) == 4 and len(sc.migrations) == 1
    text = first.read_text(encoding="utf-8")
    assert "password_hash" not in text and "token" not in text
    # The loader's fast path (JSON lines) reads exactly what YAML reads.
    assert scenarios._json_lines(text) == yaml.safe_load(text)
    # Also to stdout, the same bytes.
    p = snapshot(source.base)
    assert p.returncode == 0 and p.stdout == text


def test_a_sandbox_and_the_control_plane_take_a_snapshot_inline(source: Server,
                                                                first: Path) -> None:
    data = yaml.safe_load(first.read_text(encoding="utf-8"))
    api = Api(source.base)
    box = api.post("/_sim/sandboxes", {"scenario": data, "label": "inline snapshot"})
    inner = Api(source.base + box["path"])
    assert {v["id"]: v["host_id"] for v in inner.get("/api/v1/vms?limit=1000")["vms"]} == \
        {v["id"]: v["host"] for v in data["vms"]}
    assert len(inner.get("/api/v1/migrations")["migrations"]) == 1
    other = api.post("/_sim/sandboxes", {"label": "default, then the snapshot"})
    inner = Api(source.base + other["path"])
    assert inner.get(f"/api/v1/vms/{WEB1}")["host_id"] != NODE2
    inner.post("/_sim/scenario", {"data": data})
    assert inner.get(f"/api/v1/vms/{WEB1}")["host_id"] == NODE2


def test_anonymize_leaves_no_source_name_or_id(source: Server, tmp_path: Path) -> None:
    out = tmp_path / "anon.yaml"
    p = snapshot(source.base, "--anonymize", "--salt", "s3cret", "-o", str(out))
    assert p.returncode == 0, p.stderr
    text = out.read_text(encoding="utf-8")
    api = Api(source.base)
    secrets = []
    for h in api.get("/api/v1/hosts")["hosts"]:
        secrets += [h["id"], h["hostname"], h["hostname"].split(".")[0]]
    for v in api.get("/api/v1/vms?limit=1000")["vms"]:
        secrets += [v["id"], v["name"]]
    for m in api.get("/api/v1/migrations")["migrations"]:
        secrets += [m["id"]]
    secrets += ["corp.awan.io", "vapor"]
    assert len(secrets) > 40
    for s in secrets:
        assert s.lower() not in text.lower(), s
    # Stable: same input and salt, same file; another salt, other pseudonyms.
    again = tmp_path / "again.yaml"
    assert snapshot(source.base, "--anonymize", "--salt", "s3cret", "-o", str(again)) \
        .returncode == 0
    assert again.read_bytes() == out.read_bytes()
    other = snapshot(source.base, "--anonymize", "--salt", "pepper")
    assert other.returncode == 0 and other.stdout != text
    # And it still serves: the same shape of cluster.
    sc = scenarios.load(out)
    assert len(sc.vms) == 14 and sorted(v.status for v in sc.vms) == \
        sorted(v["status"] for v in api.get("/api/v1/vms?limit=1000")["vms"])


def test_diff_reports_each_kind_of_change(source: Server, tmp_path: Path) -> None:
    # A sandbox of the default cluster: its own world, snapshotted like any deployment.
    box = Api(source.base).post("/_sim/sandboxes", {"label": "diff", "clock_start": 1796112000})
    base = source.base + box["path"]
    api = Api(base)
    snap = tmp_path / "before.yaml"
    assert snapshot(base, "-o", str(snap)).returncode == 0
    p = snapshot(base, "--diff", str(snap))
    assert (p.returncode, p.stdout) == (0, ""), p.stderr
    _migrate(api, WEB1, NODE2)  # moved
    api.post(f"/api/v1/vms/{DB1}/action", {"action": "stop", "force": True})  # state
    api.post("/_sim/hosts/019e0014-1a2b-7057-b326-000000000003/disconnect", None)  # host
    # VMs added and removed: the file forgets one VM and names one that never was.
    data = yaml.safe_load(snap.read_text(encoding="utf-8"))
    gone = next(v for v in data["vms"] if v["name"] == "monitoring-01")
    data["vms"].remove(gone)
    data["vms"].append(dict(gone, id="00000000-0000-4000-8000-000000000001",
                            name="ghost-01"))
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data), encoding="utf-8")
    p = snapshot(base, "--diff", str(edited))
    assert p.returncode == 1, p.stderr
    lines = p.stdout.splitlines()
    assert "VM moved: web-frontend-01: vapor-node-01.corp.awan.io -> " \
           "vapor-node-02.corp.awan.io" in lines
    assert "VM state changed: db-primary-01: running -> shutoff" in lines
    assert "host changed: vapor-node-03.corp.awan.io: status connected -> disconnected" \
        in lines
    assert f"VM added: monitoring-01 ({gone['id']}) on vapor-node-03.corp.awan.io" in lines
    assert "VM removed: ghost-01 (00000000-0000-4000-8000-000000000001)" in lines
    assert len(lines) == 5, lines


def _one_line_exit_2(p: subprocess.CompletedProcess[str], out: Path, needle: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("cockpit-api snapshot: "), p.stderr
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "admin-wrong" not in p.stderr
    assert not out.exists() and list(out.parent.iterdir()) == []  # no file, no temporary


def test_an_unreachable_url(tmp_path: Path) -> None:
    out = tmp_path / "o" / "x.yaml"
    out.parent.mkdir()
    p = snapshot(f"http://127.0.0.1:{free_port()}", "-o", str(out))
    _one_line_exit_2(p, out, "cannot reach http://127.0.0.1:")


def test_wrong_credentials_and_a_throttled_login(source: Server, tmp_path: Path) -> None:
    out = tmp_path / "o" / "x.yaml"
    out.parent.mkdir()
    p = snapshot(source.base, "-o", str(out), user="viewer", password="admin-wrong")
    _one_line_exit_2(p, out, "login as viewer refused")
    for _ in range(4):  # five failures in all: the sixth attempt is throttled
        httpx.post(f"{source.base}/api/v1/auth/login",
                   json={"username": "viewer", "password": "admin-wrong"})
    # Throttled for minutes: more than the login may wait, so it says so at once.
    p = snapshot(source.base, "-o", str(out), user="viewer", password="viewer")
    _one_line_exit_2(p, out, "login as viewer is throttled")
    assert "retry after" in p.stderr


def test_a_short_throttle_is_waited_out(tmp_path: Path) -> None:
    config = tmp_path / "cockpit.toml"
    config.write_text("[auth]\nmax_failures_per_user = 1\nfailure_window = 2\n",
                      encoding="utf-8")
    with _serve("--config", str(config)) as server:
        httpx.post(f"{server.base}/api/v1/auth/login", json={"username": "admin",
                                                              "password": "nope"})
        r = httpx.post(f"{server.base}/api/v1/auth/login", json={"username": "admin",
                                                                  "password": "admin"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) <= 2
        out = tmp_path / "x.yaml"
        p = snapshot(server.base, "-o", str(out), "--metrics-vms", "0")
        assert p.returncode == 0, p.stderr
        assert len(scenarios.load(out).vms) == 14


def test_a_server_that_is_not_this_api(tmp_path: Path) -> None:
    port = free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hello</h1>", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(site)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        out = tmp_path / "o" / "x.yaml"
        out.parent.mkdir()
        p = snapshot(f"http://127.0.0.1:{port}", "-o", str(out))
        _one_line_exit_2(p, out, "does not look like a Cockpit API")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_listening(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling a real process's readiness, bounded by the deadline
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize("after", [1, 6])  # the host list itself; a VM's metrics, midway
def test_a_read_failing_midway(tmp_path: Path, after: int) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "tests.snapshot_broken_server", str(port), str(after)]
    with serve_process(argv, port) as server:
        out = tmp_path / "o" / "x.yaml"
        out.parent.mkdir()
        p = snapshot(server.base, "-o", str(out))
        _one_line_exit_2(p, out, "failed: 500 (internal: the disk fell off)")


# ---------------------------------------------------------------- fitting, in process


def _played_back(guest: dict[str, Any], memory_mib: int = 4096) -> dict[str, float] | None:
    """Serve one VM with ``guest`` in a simulator, read a whole day of its chart, fit it."""
    import asyncio
    from dataclasses import asdict

    from cockpit_api.backends.base import MetricsWindow
    from cockpit_api.backends.sim.backend import SimulatedBackend
    from cockpit_api.backends.sim.clock import VirtualClock
    from cockpit_api.snapshot.fit import fit_chart

    sc = scenarios.load({"seed": 3, "hosts": [{"hostname": "a"}], "vms": [
        {"id": WEB1, "name": "v", "host": "a", "status": "running", "memory_mib": memory_mib,
         "guest": guest}]})
    sim = SimulatedBackend(sc, VirtualClock(1_796_112_000.0, 0.0))
    end = int(sim.now()) // 120 * 120
    window = MetricsWindow.of(end - 719 * 120, end, 120, sim.now())
    series = asyncio.run(sim.vm_metrics(WEB1, window))
    assert len(series.points) == 720
    return fit_chart([asdict(p) for p in series.points], memory_mib)


@pytest.mark.parametrize("chart", [
    {"cpu": 37.5, "amplitude": 0.3, "peak_hour": 9.0, "noise": 0.12, "memory_share": 0.61,
     "disk_read_bps": 1.23e6, "disk_write_bps": 4.56e5, "net_rx_bps": 7.89e6, "net_tx_bps": 12.0},
    {"cpu": 2.4, "amplitude": 0.0, "peak_hour": 14.0, "noise": 0.05, "memory_share": 0.2,
     "disk_read_bps": 0.0, "disk_write_bps": 0.0, "net_rx_bps": 100.0, "net_tx_bps": 250.0},
    {"cpu": 71.0, "amplitude": 0.25, "peak_hour": 23.0, "noise": 0.0, "memory_share": 0.85,
     "disk_read_bps": 5e7, "disk_write_bps": 5e7, "net_rx_bps": 1e8, "net_tx_bps": 1e8},
])
def test_a_fitted_chart_plays_back_to_the_same_fit(chart: dict[str, float]) -> None:
    assert _played_back(chart) == chart


def test_a_chart_too_busy_to_play_back_is_narrowed_once() -> None:
    # Mean 90 % swinging by 40 %: the peaks would clip at 100 %, so the fit narrows the
    # swing and the noise, to values that then play back as themselves.
    first = _played_back({"load": 0.9})
    assert first is not None and first["cpu"] * (1 + first["amplitude"]) <= 100.0
    assert _played_back(first) == first


def test_host_pattern_and_users(source: Server, tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    users.write_text("- {username: dev, password: dev-pass, role: admin}\n", encoding="utf-8")
    out = tmp_path / "part.yaml"
    p = snapshot(source.base, "--host-pattern", "^vapor-node-0[12]", "--users", str(users),
                 "-o", str(out), "--window", "6h")
    assert p.returncode == 0, p.stderr
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    names = {h["hostname"] for h in data["hosts"]}
    assert names == {"vapor-node-01.corp.awan.io", "vapor-node-02.corp.awan.io"}
    ids = {h["id"] for h in data["hosts"]}
    every = Api(source.base).get("/api/v1/vms?limit=1000")["vms"]
    assert {v["id"] for v in data["vms"]} == {v["id"] for v in every if v["host_id"] in ids}
    assert data["users"] == [{"username": "dev", "password": "dev-pass", "role": "admin"}]
    assert "# tool cockpit-api" in out.read_text(encoding="utf-8").splitlines()[1]
    assert "window 21600 s" in out.read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {username: dev}\n", encoding="utf-8")
    p = snapshot(source.base, "--users", str(bad), "-o", str(tmp_path / "never.yaml"))
    assert p.returncode == 2 and "username, password, role" in p.stderr
    assert not (tmp_path / "never.yaml").exists()
