"""`cockpit-api conformance` against `cockpit-api serve --backend libvirt` over loopback.

The server manages three hosts on libvirt's test driver (tests/data/), configured
the way an operator would: a TOML file with [[hosts]] and [[users]]. The run
sends writes, limited to the test-driver VMs, so actions and migrations are
fuzzed against the real backend code too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.libvirt_support import NODES, conformance_of_served_libvirt, node_file, passed_cases

pytest.importorskip("libvirt", reason="libvirt-python is not installed: run lab/install-deps.sh")


def test_conformance_of_the_libvirt_backend(tmp_path: Path) -> None:
    hosts = [(name, f"test://{shutil.copy(node_file(name), tmp_path / node_file(name).name)}")
             for name in NODES]
    proc, log = conformance_of_served_libvirt(hosts, tmp_path, vm_pattern=".", max_examples=15)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:] + log[-3000:]
    assert "writes allowed" in proc.stdout
    assert "Traceback" not in log, log[-3000:]
    assert passed_cases(proc.stdout) > 500
