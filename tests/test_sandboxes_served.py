"""Sandboxes over real HTTP, one served process: concurrent conflicting flows never cross.

Threads drive two sandboxes and the default world at once; then several pytest
processes (the way a UI team's end-to-end runner shards its tests), each with
its own sandbox, run against the same server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.sandbox_flows import World, actions_flow, migrations_flow, new_sandbox, noisy_root_flow
from tests.serving import Server, free_port, serve_process

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 12
WORKERS = 3


@pytest.fixture(scope="module")
def served_process() -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port)]
    with serve_process(argv, port) as proc:
        yield proc


@pytest.fixture(scope="module")
def server(served_process: Server) -> str:
    return served_process.base


def test_start_up_prints_no_deprecation_noise(served_process: Server) -> None:
    log = served_process.log()
    assert "Uvicorn running on" in log, log
    assert "eprecat" not in log and "Warning" not in log, log


def _run_together(*jobs: Callable[[], None]) -> None:
    """Run each job in its own thread, all released at once; re-raise the first failure."""
    start = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            start.wait(timeout=30)
            job()
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a flow did not finish in 120 s"
    if errors:
        raise errors[0]


def test_concurrent_conflicting_flows_never_see_each_other(server: str) -> None:
    root = World(server)
    a, b = new_sandbox(root, "threads a"), new_sandbox(root, "threads b")
    try:
        # Each sandbox runs both kinds of flow, in two threads of its own, while the other
        # sandbox and the default world reset, arm faults and add latency.
        _run_together(lambda: migrations_flow(a, "a", ROUNDS),
                      lambda: actions_flow(b, "b", ROUNDS),
                      lambda: noisy_root_flow(root, ROUNDS))
        _run_together(lambda: actions_flow(a, "a", ROUNDS),
                      lambda: migrations_flow(b, "b", ROUNDS),
                      lambda: noisy_root_flow(root, ROUNDS))
    finally:
        for w in (a, b):
            root.sim("DELETE", f"/sandboxes/{w.base.rsplit('/', 1)[1]}", expect=204)
            w.close()
        root.close()


def test_parallel_workers_one_sandbox_each(server: str) -> None:
    # Plain workers: no third-party plugins, no conftest (it builds apps), so they start fast.
    env = dict(os.environ, COCKPIT_TEST_SERVER=server, PYTHONPATH=str(ROOT),
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
            str(ROOT / "tests" / "sandbox_worker.py")]
    procs = [subprocess.Popen(argv, cwd=ROOT, env=dict(env, COCKPIT_TEST_WORKER=str(n)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in range(WORKERS)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        outputs.append((proc.returncode, out))
    for code, out in outputs:
        assert code == 0, out
        assert "1 passed" in out, out
    root = World(server)
    try:
        # Every worker deleted its sandbox; the default world saw none of their jobs.
        assert root.sim("GET", "/sandboxes")["count"] == 0
    finally:
        root.close()
