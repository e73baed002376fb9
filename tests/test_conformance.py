"""`cockpit-api conformance` against real servers over loopback.

- against the served mock it reports no failure;
- against a deliberately broken server it fails and names the operation;
- read-only mode sends no write; write mode touches only the VMs it was given.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import ROOT, free_port, serve_process

ALLOWED = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01
# Our access log's lines (cockpit_api/http/access.py):
# `INFO cockpit_api.http.access: POST /api/v1/...`
WRITE = re.compile(r"access: POST /api/v1/(vms/[^/ ]+/(action|migrate)|migrations/[^/ ]+/cancel)")


def _conformance(base: str, *extra: str, examples: int = 8) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cockpit_api.cli", "conformance", "--base-url", base,
         "--username", "admin", "--password", "admin", "--max-examples", str(examples), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


def _serve(*args: str) -> tuple[list[str], int]:
    port = free_port()
    return [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
            "--log-level", "info", "--access-log", *args], port


def test_read_only_run_passes_and_sends_no_write(tmp_path: Path) -> None:
    argv, port = _serve()
    junit = tmp_path / "report.xml"
    with serve_process(argv, port) as server:
        proc = _conformance(server.base, "--junit", str(junit))
        log = server.log()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "read-only run" in proc.stdout and "no failures" in proc.stdout
    assert junit.exists() and "<testsuite" in junit.read_text()
    assert "access: GET /api/v1/vms" in log  # the log does record the run's requests
    assert not WRITE.findall(log), WRITE.findall(log)[:5]


def test_write_run_touches_only_the_named_vms() -> None:
    argv, port = _serve()
    with serve_process(argv, port) as server:
        proc = _conformance(server.base, "--allow-writes", "--vm", ALLOWED,
                            "--phases", "examples,fuzzing,stateful")
        log = server.log()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    paths = re.findall(r"access: POST /api/v1/vms/([^/ ]+)/(?:action|migrate)", log)
    assert paths, "no action or migration was sent"
    assert set(paths) == {ALLOWED}


def test_writes_need_named_vms() -> None:
    proc = _conformance("http://127.0.0.1:9", "--allow-writes")
    assert proc.returncode == 2


def test_a_broken_server_fails_and_the_operation_is_named() -> None:
    port = free_port()
    with serve_process([sys.executable, "-m", "tests.broken_server", str(port)], port) as server:
        proc = _conformance(server.base, "--phases", "examples,fuzzing")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAILED" in proc.stdout
    # The per-operation summary names the operation, counts its failure, shows a curl line.
    summary = proc.stdout[proc.stdout.index("conformance: per operation"):]
    row = next(line for line in summary.splitlines() if line.startswith("GET /vms/{id} "))
    assert int(row.split()[-1]) >= 1
    assert "reproduce: curl -X GET" in summary and "/api/v1/vms/" in summary
    others = [line for line in summary.splitlines()[2:]
              if line.startswith(("GET", "POST")) and not line.startswith("GET /vms/{id} ")]
    assert others and all(line.split()[-1] == "0" for line in others)


@pytest.mark.parametrize("base", ["http://127.0.0.1:9"])
def test_an_unreachable_server_is_a_usage_error(base: str) -> None:
    proc = _conformance(base)
    assert proc.returncode == 2 and "cannot reach" in proc.stderr
