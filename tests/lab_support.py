"""The two-daemon lab for tests: bring it up once per session, drive its daemons, ask virsh.

``lab_env`` (session) runs ``lab/libvirt-lab.sh up`` and ``down`` around every
lab test module (tests/conftest.py imports it, so it is one lab for them all).
Nothing here imports libvirt.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LAB = Path(__file__).resolve().parent.parent / "lab" / "libvirt-lab.sh"
LAB_DIR = Path(os.environ.get("LAB_DIR", "/tmp/cockpit-lab"))
NODE1, NODE2 = "lab-node-01", "lab-node-02"
TIMINGS: dict[str, Any] = {}


def lab(*args: str) -> str:
    p = subprocess.run([str(LAB), *args], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError(f"libvirt-lab.sh {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stderr[-3000:]}")
    return p.stdout


@pytest.fixture(scope="session")
def lab_env() -> Iterator[dict[str, str]]:
    # One lab per machine (fixed netns names): a second session waits for the first
    # instead of tearing its lab down under it (`up` first removes any earlier lab).
    lock = open("/tmp/cockpit-lab.lock", "w")  # noqa: SIM115 - held for the whole session
    deadline = time.monotonic() + 900
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.skip("another session holds the libvirt lab (/tmp/cockpit-lab.lock)")
            time.sleep(1)  # polling another process's lock, bounded by the deadline
    try:
        yield from _lab_session()
    finally:
        lock.close()


def _lab_session() -> Iterator[dict[str, str]]:
    t0 = time.monotonic()
    out = lab("up")
    TIMINGS["lab_up_s"] = round(time.monotonic() - t0, 3)
    env = {}
    for line in out.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    try:
        yield env
    finally:
        t0 = time.monotonic()
        lab("down")
        TIMINGS["lab_down_s"] = round(time.monotonic() - t0, 3)
        print("\nlibvirt lab timings:", json.dumps(TIMINGS, indent=2))
        target = os.environ.get("LAB_TIMINGS_FILE")
        if target:
            Path(target).write_text(json.dumps(TIMINGS, indent=2) + "\n", encoding="utf-8")


def daemon_pid(node: int) -> int:
    """The PID of node ``node``'s libvirtd now (it changes with start-daemon)."""
    return int((LAB_DIR / f"node{node}" / "run" / "libvirtd.pid").read_text().strip())


def freeze(node: int) -> None:
    os.kill(daemon_pid(node), signal.SIGSTOP)


def thaw(node: int) -> None:
    os.kill(daemon_pid(node), signal.SIGCONT)


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60)


def domstate(uri: str, name: str) -> str | None:
    p = virsh(uri, "domstate", name)
    return p.stdout.strip() if p.returncode == 0 else None
