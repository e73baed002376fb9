"""`cockpit-api serve` as a process: what it prints on start, how it stops, what it answers.

Each test starts real servers on loopback ports (tests/serving.py).
"""

from __future__ import annotations

import sys

from tests.serving import free_port, serve_process


def _argv(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port), *args]


def test_a_normal_start_prints_the_banner_and_little_else() -> None:
    """At the default log level, on a fresh state directory (the store is created and
    migrated): no Alembic narration (it printed seven "setup plugin" lines), no Connexion
    "Adding spec json" lines."""
    port = free_port()
    with serve_process(_argv(port, "--speed", "0"), port) as server:
        log = server.log()
    assert "Cockpit API (sim backend) on" in log and "schema upgraded" in log
    assert "alembic" not in log, log
    assert "Adding spec json" not in log, log
