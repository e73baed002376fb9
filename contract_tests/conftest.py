"""Fixtures for the contract tests; the shared machinery is in ``harness.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cockpit_api.http import pipeline
from contract_tests.harness import JWT_SECRET, MAX_EXAMPLES, MAX_STEPS, ROOT, SEED, free_port

# Every fuzzed request also checks the compiled pipeline's handler arguments against
# Connexion's own get_arguments (cockpit_api/http/pipeline.py).
pipeline.Pipeline.crosscheck = True

STARTUP_TIMEOUT = 30.0


def pytest_report_header() -> str:
    return (f"contract tests: max-examples={MAX_EXAMPLES} max-steps={MAX_STEPS} seed={SEED} "
            "(CONTRACT_MAX_EXAMPLES, CONTRACT_MAX_STEPS, CONTRACT_SEED)")


@dataclass
class LiveServer:
    """``cockpit-api serve`` running in a subprocess on a free loopback port."""

    base: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _wait_until_serving(server: LiveServer) -> None:
    """Poll the spec URL until it answers 200, the process dies, or the deadline passes."""
    url = f"{server.base}/api/v1/openapi.json"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    delay = 0.05
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer within {STARTUP_TIMEOUT} s:\n{server.log_text()}")
        time.sleep(delay)  # back-off between polls, bounded by the deadline above
        delay = min(delay * 2, 0.5)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real CLI entry point serving the simulator, stopped by its PID afterwards."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COCKPIT_")}
    env["COCKPIT_JWT_SECRET"] = JWT_SECRET
    env["COCKPIT_STATE_DIR"] = str(tmp_path / "state")  # never the user's own state
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cockpit_api.cli", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--validate-responses", "--access-log"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        if process.poll() is None:
            os.kill(process.pid, 15)  # SIGTERM: uvicorn shuts down gracefully
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, 9)
                process.wait(timeout=15)
