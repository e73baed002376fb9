"""`cockpit-api conformance` against `cockpit-api serve --backend libvirt` over loopback.

The server manages three hosts on libvirt's test driver (tests/data/), configured
the way an operator would: a TOML file with [[hosts]] and [[users]]. The run
sends writes, limited to the test-driver VMs, so actions and migrations are
fuzzed against the real backend code too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cockpit_api.auth import hash_password
from tests.libvirt_support import NODES, node_file
from tests.serving import ROOT, free_port, serve_process

pytest.importorskip("libvirt", reason="libvirt-python is not installed: run lab/install-deps.sh")


def test_conformance_of_the_libvirt_backend(tmp_path: Path) -> None:
    hosts = ""
    for name in NODES:
        path = shutil.copy(node_file(name), tmp_path / node_file(name).name)
        hosts += f'[[hosts]]\nname = "{name}"\nuri = "test://{path}"\n\n'
    config = tmp_path / "cockpit.toml"
    config.write_text(
        'backend = "libvirt"\n\n[libvirt]\n'
        f'state_file = "{tmp_path / "hosts.json"}"\nsample_seconds = 1.0\n\n'
        f'{hosts}[[users]]\nusername = "qa"\npassword_hash = "{hash_password("qa-password")}"\n'
        'role = "admin"\n', encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--config", str(config),
            "--port", str(port), "--log-level", "warning"]
    with serve_process(argv, port) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "cockpit_api.cli", "conformance", "--base-url", server.base,
             "--username", "qa", "--password", "qa-password", "--max-examples", "15",
             "--allow-writes", "--vm-pattern", "."],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        log = server.log()
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:] + log[-3000:]
    assert "writes allowed" in proc.stdout
    assert "Traceback" not in log, log[-3000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 500, proc.stdout[-1500:]
