"""Shared helpers for the libvirt backend's tests: test-driver hosts, the mirrored sim, polling.

The test-driver hosts are the XML files in ``tests/data/`` (``test:///<path>``
gives every connection a private copy of the file's state, so every backend
starts from the same cluster). :func:`sim_scenario` builds the simulator's
scenario from the same files, and :data:`HOST_IDS` is written into the libvirt
backend's state file, so both backends hold the same hosts and VMs under the
same ids.

Nothing here imports libvirt at module level: the shared suite must still run
its simulator half where libvirt-python is missing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cockpit_api.auth.service import hash_password
from cockpit_api.config import HostConfig, Settings, UserConfig
from tests.serving import login

if TYPE_CHECKING:
    from cockpit_api.app import CockpitApp
    from cockpit_api.backends.libvirt import LibvirtBackend

DATA = Path(__file__).resolve().parent / "data"
NODES = ("node-a", "node-b", "node-c")
# node-c is served from a copy in the test's tmp_path so that a test can take it away.
REMOVABLE = "node-c"
HOST_IDS = {
    "node-a": "019e0014-a0a0-7057-b326-00000000000a",
    "node-b": "019e0014-b0b0-7057-b326-00000000000b",
    "node-c": "019e0014-c0c0-7057-b326-00000000000c",
}
RUNSTATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
             5: "shutoff", 6: "crashed", 7: "pmsuspended"}
TEST_NS = "{http://libvirt.org/schemas/domain/test/1.0}"

ADMIN = ("admin", "admin-password")
JWT_SECRET = "libvirt-tests-secret-that-is-long-enough-for-hmac-0123456789"
LIBVIRT_MISSING = ("libvirt-python is not installed: run lab/install-deps.sh "
                   "(or pip install -e '.[libvirt]' with Debian's libvirt-dev)")


def node_file(name: str) -> Path:
    return DATA / f"testdriver-{name}.xml"


def host_configs(tmp_path: Path) -> list[HostConfig]:
    """The three test-driver hosts; node-c's file is a copy under ``tmp_path``."""
    out = []
    for name in NODES:
        path = node_file(name)
        if name == REMOVABLE:
            path = Path(shutil.copy(path, tmp_path / path.name))
        out.append(HostConfig(name, f"test://{path}"))
    return out


def write_state_file(path: Path, ids: dict[str, str] = HOST_IDS) -> Path:
    path.write_text(json.dumps({"version": 1, "hosts": ids}), encoding="utf-8")
    return path


def make_backend(tmp_path: Path, **overrides: Any) -> LibvirtBackend:
    """A libvirt backend over the test-driver hosts (not started), with fixed host ids."""
    from cockpit_api.backends.libvirt import LibvirtBackend

    state = tmp_path / "hosts.json"
    if not state.exists():
        write_state_file(state)
    kwargs: dict[str, Any] = {
        "state_file": str(state),
        "sample_seconds": 3600,  # one sample at start; tests take more with sample_now()
        "resync_seconds": 3600,
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.2,
        "progress_seconds": 0.05,
        "start_wait_seconds": 10,  # the test-driver hosts connect in milliseconds
    }
    kwargs.update(overrides)
    return LibvirtBackend(host_configs(tmp_path), **kwargs)


def domains_in(name: str) -> list[dict[str, Any]]:
    """The domains a node's XML defines, as the API would list them."""
    out = []
    root = ET.parse(node_file(name)).getroot()
    for d in root.findall("domain"):
        runstate = d.find(f"{TEST_NS}runstate")
        out.append({
            "id": d.findtext("uuid"),
            "name": d.findtext("name"),
            "status": RUNSTATES[int(runstate.text or 0) if runstate is not None else 5],
            "vcpus": int(d.findtext("vcpu") or 1),
            "memory_mib": int(d.findtext("memory") or 0),
            "persistent": d.find(f"{TEST_NS}transient") is None,
            "host": name,
        })
    return out


def expected_vms() -> dict[str, dict[str, Any]]:
    """VM name -> what the API lists: one record per UUID, the active copy wins."""
    by_id: dict[str, dict[str, Any]] = {}
    also: dict[str, list[str]] = {}
    for node in NODES:
        for d in domains_in(node):
            seen = by_id.get(d["id"])
            if seen is None:
                by_id[d["id"]] = d
            elif d["status"] == "shutoff":
                also.setdefault(d["id"], []).append(HOST_IDS[node])
            else:
                also.setdefault(d["id"], []).append(HOST_IDS[seen["host"]])
                by_id[d["id"]] = d
    for vm_id, hosts in also.items():
        by_id[vm_id]["also_defined_on"] = sorted(hosts)
    return {d["name"]: d for d in by_id.values()}


def sim_scenario() -> dict[str, Any]:
    """The simulator's scenario holding the test-driver cluster (same ids, names, states)."""
    hosts = []
    for name in NODES:
        root = ET.parse(node_file(name)).getroot()
        hosts.append({"id": HOST_IDS[name], "hostname": name,
                      "cpus": int(root.findtext("cpu/active") or 1),
                      "memory_mib": int(root.findtext("memory") or 0) // 1024})
    vms = [{"id": d["id"], "name": d["name"], "host": d["host"], "status": d["status"],
            "vcpus": d["vcpus"], "memory_mib": d["memory_mib"], "persistent": d["persistent"]}
           for d in expected_vms().values()]
    return {"name": "libvirt-testdriver-mirror", "seed": 7, "hosts": hosts, "vms": vms}


async def take_away(backend: LibvirtBackend, tmp_path: Path, name: str = REMOVABLE) -> None:
    """Play a lost host: its file goes (reconnects fail) and its connection 'closes'."""
    (tmp_path / node_file(name).name).unlink()
    h = backend._hosts[backend.host_id(name)]
    backend.hosts.lose(h, "taken away by the test")


def bring_back(tmp_path: Path, name: str = REMOVABLE) -> None:
    shutil.copy(node_file(name), tmp_path / node_file(name).name)


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool],
                     timeout: float = 5.0, interval: float = 0.02) -> None:
    """Bounded polling inside a running loop: ``check()`` becomes true within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        await asyncio.sleep(interval)


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Bounded polling from synchronous code: the first truthy ``check()`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s (last: {result!r})")
        time.sleep(interval)


def libvirt_settings(hosts: list[HostConfig], state_file: Path, **overrides: Any) -> Settings:
    return Settings(
        backend="libvirt", hosts=hosts, jwt_secret=JWT_SECRET, validate_responses=True,
        users=[UserConfig(ADMIN[0], hash_password(ADMIN[1]), "admin")],
        state_file=str(state_file), **overrides)


def libvirt_app(settings: Settings, backend: LibvirtBackend) -> CockpitApp:
    from cockpit_api.app import create_app

    return create_app(settings, backend=backend)


def login_headers(client: Any) -> dict[str, str]:
    return login(client, *ADMIN)


def write_serve_config(tmp_path: Path, hosts: list[tuple[str, str]], libvirt: str) -> Path:
    """``tmp_path/cockpit.toml`` for ``serve`` on the libvirt backend, as an operator writes
    it: the ``[libvirt]`` table (its state file in ``tmp_path``, then the lines ``libvirt``),
    ``hosts`` (name, URI) and one admin, qa / qa-password."""
    entries = "".join(f'[[hosts]]\nname = "{name}"\nuri = "{uri}"\n\n' for name, uri in hosts)
    config = tmp_path / "cockpit.toml"
    config.write_text(
        'backend = "libvirt"\n\n[libvirt]\n'
        f'state_file = "{tmp_path / "hosts.json"}"\n{libvirt}\n'
        f'{entries}[[users]]\nusername = "qa"\npassword_hash = "{hash_password("qa-password")}"\n'
        'role = "admin"\n', encoding="utf-8")
    return config


def conformance_of_served_libvirt(hosts: list[tuple[str, str]], tmp_path: Path, *,
                                  vm_pattern: str, max_examples: int,
                                  sample_seconds: float = 1.0) -> tuple[Any, str]:
    """Serve the libvirt backend over ``hosts`` (name, URI) from a TOML config, as an
    operator would, and run ``cockpit-api conformance`` against it with writes allowed
    on the VMs matching ``vm_pattern``. Returns (the conformance process, the server log)."""
    import subprocess
    import sys

    from tests.serving import ROOT, free_port, serve_process

    config = write_serve_config(tmp_path, hosts, f"sample_seconds = {sample_seconds}\n")
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--config", str(config),
            "--port", str(port), "--log-level", "warning"]
    with serve_process(argv, port) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "cockpit_api.cli", "conformance", "--base-url", server.base,
             "--username", "qa", "--password", "qa-password", "--max-examples",
             str(max_examples), "--allow-writes", "--vm-pattern", vm_pattern],
            cwd=ROOT, capture_output=True, text=True, timeout=900)
        return proc, server.log()


def passed_cases(stdout: str) -> int:
    """How many cases a conformance run passed; asserts that none failed."""
    import re

    counts = re.search(r"(\d+) generated, (\d+) passed", stdout)
    assert counts and counts[1] == counts[2], stdout[-1500:]
    return int(counts[1])
