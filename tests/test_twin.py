"""`cockpit-api twin` sim against sim: a served mock as the deployment, the embedded twin.

The served mock (`cockpit-api serve --speed 10`, a real process over loopback)
plays the deployment; the twin is built from its GETs and runs in this process.
Unpatched, the two must agree on every step. Patched (the twin's simulator
answering one step differently), the run must fail with a shrunk reproduction.
The same run on real QEMU is tests/test_twin_lab.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cockpit_api import cli
from cockpit_api.backends.base import Vm
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.twin import worlds as twin
from tests.serving import served

DATA = Path(__file__).resolve().parent / "data"
SPEED = 10  # the served mock's clock: ten virtual seconds per second of wall time


def _serve(**env: str | None) -> Any:
    return served("--scenario", str(DATA / "twin-scenario.yaml"), "--speed", str(SPEED),
                  env=env)


@pytest.fixture(scope="module")
def deployment() -> Iterator[str]:
    # Access tokens live 4 s: the runs below outlive several, so the twin must refresh.
    with _serve(COCKPIT_TOKEN_TTL="4") as base:
        yield base


@pytest.fixture
def fresh_deployment() -> Iterator[str]:
    """canary-01 running, canary-02 shut off: as the scenario says."""
    with _serve() as base:
        yield base


def run_twin(base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str,
             steps: int = 30, seed: int = 1) -> tuple[int, str]:
    monkeypatch.setenv("COCKPIT_PASSWORD", "admin")
    report = tmp_path / "twin.md"
    code = cli.main(["twin", "--base-url", base, "--username", "admin",
                     "--vm-pattern", "^canary-", "--steps", str(steps), "--seed", str(seed),
                     "--max-rate", "0", "--deployment-speed", str(SPEED),
                     # The mock's clock runs ten times the wall's, so a hiccup of this
                     # shared machine (0.3 s) reads as 3 s: a wider slack than the default.
                     "--time-slack", "6",
                     "--known-differences", str(DATA / "twin-known.yaml"),
                     "--report", str(report), "--junit", str(tmp_path / "twin.xml"), *extra])
    return code, report.read_text(encoding="utf-8") if report.exists() else ""


def test_the_twin_of_a_mock_does_not_diverge(deployment: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # At most 25 requests a second: the run's ~150 requests outlive the 4 s tokens whatever
    # the machine's speed, so the twin must renew its session (asserted below).
    code, text = run_twin(deployment, tmp_path, monkeypatch, "--max-rate", "25", steps=40)
    print(text)
    assert code == 0, text
    assert "**no divergence**" in text
    steps = int(text.split("steps run: ")[1].split(" ")[0])
    assert steps >= 30  # skipped steps (a stop of a transient canary) are few
    # Writes and time passing were compared, not only reads.
    for kind in ("| migrate", "| wait"):
        assert kind in text, text
    assert "failures=\"0\"" in (tmp_path / "twin.xml").read_text(encoding="utf-8")
    renewed = int(text.split("401: ")[1].split(" ")[0])
    assert renewed >= 1, text


def test_a_divergence_fails_with_a_shrunk_reproduction(fresh_deployment: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin's simulator is patched to treat a resume of a paused VM as a no-op."""
    plan = SimulatedBackend._plan_action

    def patched(self: SimulatedBackend, vm: Vm, action: Any, force: bool) -> Any:
        if action == "resume" and vm.status == "paused":
            return lambda t: vm
        return plan(self, vm, action, force)

    monkeypatch.setattr(SimulatedBackend, "_plan_action", patched)
    code, text = run_twin(fresh_deployment, tmp_path, monkeypatch, "--max-time", "240",
                          steps=50)
    print(text)
    assert code == 1, text
    assert "**DIVERGED**" in text and "## Reproduction (shrunk)" in text
    repro = text.split("## Reproduction (shrunk)")[1].split("##")[0]
    steps = [line for line in repro.splitlines() if line[:1].isdigit()]
    # Shrunk from 50 steps to a handful: the canary is running at the start (every replay
    # begins from the restored cluster), so a suspend must come before the resume.
    assert 2 <= len(steps) <= 4, repro
    assert '"action": "resume"' in steps[-1], repro
    assert any('"action": "suspend"' in s for s in steps[:-1]), repro
    # What diverged is the resumed VM's state, named, with both sides' values.
    assert "answered VM" in text or "settled vm canary-" in text, text
    assert "failures=\"1\"" in (tmp_path / "twin.xml").read_text(encoding="utf-8")


def test_it_cannot_start_without_canaries_or_a_deployment(deployment: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    monkeypatch.setenv("COCKPIT_PASSWORD", "admin")
    assert cli.main(["twin", "--base-url", deployment, "--username", "admin",
                     "--vm-pattern", "^nothing-matches$"]) == 2
    assert "name the canary VMs" in capsys.readouterr().err
    assert cli.main(["twin", "--base-url", "http://127.0.0.1:9", "--username", "admin",
                     "--vm-pattern", "."]) == 2
    assert "cannot reach" in capsys.readouterr().err
    monkeypatch.setenv("COCKPIT_PASSWORD", "wrong")
    assert cli.main(["twin", "--base-url", deployment, "--username", "admin",
                     "--vm-pattern", "."]) == 2
    assert "login as admin" in capsys.readouterr().err


def test_the_scenario_is_the_deployments_snapshot(fresh_deployment: str) -> None:
    """The twin's scenario is `cockpit-api snapshot`'s data, taken through the twin's own
    session (no second login), with the guest models and the twin's admin on top."""
    import httpx

    from cockpit_api.backends.sim import scenario as scenarios

    with httpx.Client(timeout=30) as http:
        api = twin.Api(http, f"{fresh_deployment}/api/v1", "admin", "admin")
        api.login()
        before = api.requests
        model = twin.KnownDifferences.load(DATA / "twin-known.yaml")
        doc = twin.twin_scenario(twin.snapshot_of(api), model.guests)
        reads = api.requests - before
        vms, _ = api.all("/vms", "vms")
    # Three GETs (hosts, VMs, migrations: one page each), no login of its own, no metrics.
    assert reads == 3
    assert sorted(v["id"] for v in doc["vms"]) == sorted(v["id"] for v in vms)
    canary = next(v for v in doc["vms"] if v["name"] == "canary-01")
    assert canary["guest"] == {"acpi": "obey", "shutdown_seconds": 1.0, "disk_gib": 1}
    assert "guest" not in next(v for v in doc["vms"] if v["name"] == "other-01")
    assert {h["hostname"] for h in doc["hosts"]} == {"node-a", "node-b"}
    assert doc["users"] == [{"username": "admin", "password": "twin", "role": "admin"}]
    hid = {h["hostname"]: h["id"] for h in doc["hosts"]}
    # What GETs of state alone could not give the twin: the stale definition, the job
    # history and the host pair's migration speed fitted from it.
    stale = next(v for v in doc["vms"] if v["name"] == "canary-02")
    assert stale["also_defined_on"] == [hid["node-b"]]
    assert [j["id"] for j in doc["migrations"]] == ["7a1b2c3d4e5f"]
    assert doc["links"] == [{"source": hid["node-a"], "destination": hid["node-b"],
                             "bandwidth_bytes_per_s": 2.46e7, "setup_seconds": 0.5}]
    # And the twin's simulator loads it as such.
    loaded = scenarios.load(doc)
    assert [ln.setup_seconds for ln in loaded.links] == [0.5]
    assert next(v for v in loaded.vms if v.name == "canary-02").also_defined_on == (
        hid["node-b"],)


def test_the_known_differences_file_explains_every_entry() -> None:
    known = twin.KnownDifferences.load(twin.KNOWN_DIFFERENCES)
    assert known.guests and known.differences
    assert all(g.reason for g in known.guests)
    assert all(d.reason and d.id for d in known.differences)
    # The strict xfail of tests/test_differential.py is listed, by its id.
    diff = (Path(__file__).parent / "test_differential.py").read_text(encoding="utf-8")
    for d in known.differences:
        if d.id == "testdriver-reboot-of-a-paused-vm":
            assert d.id in diff
            break
    else:
        pytest.fail("the paused guest's reboot is not in the known differences")


def test_the_end_leaves_every_canary_settled_and_says_where(tmp_path: Path) -> None:
    """What Ctrl-C (and the end of a run) does: this run's unfinished migration is
    cancelled, waited for, and each canary's state is told. The mock's clock is frozen,
    so the migration would never end on its own."""
    import httpx

    from cockpit_api.twin import machine as twin_machine

    with served("--scenario", str(DATA / "twin-scenario.yaml"), "--speed", "0") as base, \
            httpx.Client(timeout=30) as http:
        api = twin.Api(http, f"{base}/api/v1", "admin", "admin")
        api.login()
        vms = {v["name"]: v for v in api.all("/vms", "vms")[0]}
        hosts = {h["hostname"]: h["id"] for h in api.all("/hosts", "hosts")[0]}
        r = api.call("POST", f"/vms/{vms['canary-01']['id']}/migrate",
                     json={"destination_host_id": hosts["node-b"]})
        assert r.status == 202
        result = twin_machine.Result(real_jobs=[r.body["migration_id"]])
        left = twin_machine.leave_settled(twin.Deployment(api),
                                          [vms["canary-01"]["id"], vms["canary-02"]["id"]],
                                          result, timeout=10)
        assert api.get(f"/migrations/{r.body['migration_id']}").body["status"] == "cancelled"
    assert left == {vms["canary-01"]["id"]: "running on node-a",
                    vms["canary-02"]["id"]: "shutoff on node-a"}


def test_the_pacer_keeps_to_the_rate_and_the_budget() -> None:
    slept: list[float] = []
    clock = [100.0]

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 3))
        clock[0] += seconds

    pacer = twin.Pacer(5.0, None, sleep=sleep, clock=lambda: clock[0])
    for _ in range(4):
        pacer.wait()
    assert slept == [0.2, 0.2, 0.2]  # 5 requests a second: one every 0.2 s
    clock[0] += 10  # idle for a while: no burst owed, no sleep
    pacer.wait()
    assert slept == [0.2, 0.2, 0.2]
    pacer.deadline = clock[0] - 1
    with pytest.raises(twin.TimeUp):
        pacer.wait()


def test_a_twin_in_a_sandbox_of_a_served_mock(deployment: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--mock-url: the twin is a sandbox (frozen clock, moved by the control plane) on a
    served mock, here the deployment's own server, over HTTP."""
    monkeypatch.setenv("COCKPIT_MOCK_PASSWORD", "admin")
    code, text = run_twin(deployment, tmp_path, monkeypatch, "--mock-url", deployment,
                          steps=15, seed=3)
    print(text)
    assert code == 0, text
    assert "**no divergence**" in text
