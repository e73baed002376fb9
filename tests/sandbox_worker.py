"""One worker of tests/test_sandboxes_served.py::test_parallel_workers_one_sandbox_each.

Not collected by a normal run (the name does not start with test_): that test
starts several pytest processes on this file against one server, as a UI
team's runner starts its workers, each in a sandbox of its own.
"""

from __future__ import annotations

import os

import pytest

from tests.sandbox_flows import World, actions_flow, migrations_flow, new_sandbox

SERVER = os.environ.get("COCKPIT_TEST_SERVER")
WORKER = os.environ.get("COCKPIT_TEST_WORKER", "0")


@pytest.mark.skipif(SERVER is None, reason="started by test_parallel_workers_one_sandbox_each")
def test_a_worker_in_its_own_sandbox() -> None:
    assert SERVER is not None
    root = World(SERVER)
    w = new_sandbox(root, f"worker {WORKER}")
    try:
        migrations_flow(w, f"worker {WORKER}", 4)
        actions_flow(w, f"worker {WORKER}", 4)
    finally:
        root.sim("DELETE", f"/sandboxes/{w.base.rsplit('/', 1)[1]}", expect=204)
        w.close()
        root.close()
