"""`cockpit-api twin` against the served libvirt backend on the two-daemon lab (real QEMU).

The deployment is `cockpit-api serve --backend libvirt` in front of the lab's
two libvirtd + QEMU daemons (tests/test_libvirt_faults.py's ``served_lab``);
the twin is the embedded simulator built from its snapshot. Two canaries
(lab-vm-01, lab-vm-02) take every action in every state they reach (a paused
guest among them; the lab's guests ignore ACPI, as the known-differences file
models), live and offline migrations with each option, cancels, and time
passing; every VM, lab-vm-busy included, is dry-run. At least 50 steps, a
fixed seed, and no divergence outside docs/twin-known-differences.yaml.
The step count and the real/twin time ratios go to the lab's timings (printed
at the end of the session) and to the terminal.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cockpit_api import cli
from cockpit_api.twin import worlds as twin
from tests.lab_support import NODE1, NODE2, TIMINGS
from tests.test_libvirt_faults import served_lab

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]

STEPS = 60
SEED = 7


def test_the_twin_of_the_lab_does_not_diverge(lab_env: dict[str, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "twin.md"
    # No bandwidth cap: a lab guest's 64 MiB cross in about half a second, as the
    # simulator's model has it (setup + memory x 1.1 at 512 MiB/s).
    with served_lab(lab_env, tmp_path / "served", bandwidth=0) as s:
        # Both running, one on each node: most migrations are then accepted, not refused.
        s.place("lab-vm-01", NODE1, "running")
        s.place("lab-vm-02", NODE2, "running")
        monkeypatch.setenv("COCKPIT_PASSWORD", "qa-password")
        t0 = time.monotonic()
        code = cli.main(["twin", "--base-url", s.base, "--username", "qa",
                         "--vm-pattern", "^lab-vm-0[12]$", "--steps", str(STEPS),
                         "--seed", str(SEED), "--max-rate", "25", "--max-time", "200",
                         "--known-differences", str(twin.KNOWN_DIFFERENCES),
                         "--report", str(report), "--junit", str(tmp_path / "twin.xml")])
        took = time.monotonic() - t0
        s.alive()
    text = report.read_text(encoding="utf-8")
    steps = int(text.split("steps run: ")[1].split(" ")[0])
    ratios = text.split("## Time")[1].split("##")[0]
    TIMINGS["twin_lab"] = {"steps": steps, "seconds": round(took, 1),
                           "ratios": [line for line in ratios.splitlines()
                                      if line.startswith("| ") and "---" not in line]}
    with capsys.disabled():
        print(f"\ntwin on the lab: {steps} steps in {took:.1f} s\n{ratios}")
    assert code == 0, text
    assert steps >= 50, text
    # Real migrations were compared, not only refusals: the twin's time is theirs.
    migrations = [line for line in ratios.splitlines() if line.startswith("| migrate |")]
    assert migrations and "twin instant" not in migrations[0], text


def test_a_host_lost_mid_migration_ends_alike_on_the_lab_and_the_twin(
        lab_env: dict[str, str], tmp_path: Path) -> None:
    """The fault script: lab-vm-busy (its migration never converges) migrating to node 2
    when node 2's daemon is killed (the lab) / node 2 is disconnected (the twin's control
    plane): the same answers, the same job end state, the VM running on its source, and
    the same cluster once the host is back."""
    import httpx

    from cockpit_api.twin import machine as twin_machine
    from tests.lab_support import lab
    from tests.libvirt_support import poll

    with served_lab(lab_env, tmp_path / "served", bandwidth=20) as s:
        busy = s.place("lab-vm-busy", NODE1, "running")
        # Its kernel dirties memory once SeaBIOS hands over (~1-2 s): from then on the
        # migration never converges, so the fault meets it mid-way.
        poll(lambda: any(p["cpu_percent"] > 15 for p in s.get(
            f"/vms/{busy['id']}/metrics?start={int(time.time()) - 5}&step=1")["points"]),
            timeout=20)
        with httpx.Client(timeout=60) as http:
            api = twin.Api(http, f"{s.base}/api/v1", "qa", "qa-password")
            api.login()
            deployment = twin.Deployment(api)
            known = twin.KnownDifferences.load(twin.KNOWN_DIFFERENCES)
            the_twin = twin.EmbeddedTwin(twin.twin_scenario(twin.snapshot_of(api),
                                                            known.guests))
            try:
                def lose(lost: bool) -> None:
                    lab("kill-daemon" if lost else "start-daemon", "2")

                found, seen = twin_machine.host_lost_mid_migration(
                    deployment, the_twin, busy["id"], s.ids[NODE2], lose)
            finally:
                the_twin.close()
        TIMINGS["twin_fault_host_lost"] = {k: list(v) for k, v in seen.items()}
        assert not found, (found, seen)
        assert seen["job"][:2] == ("failed", "failed"), seen
        s.alive()
        s.place("lab-vm-busy", NODE1, "shutoff")
