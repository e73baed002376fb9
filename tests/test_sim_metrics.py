"""The simulator's metrics look like a real machine's chart, and stay true to the VM's state."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from collections.abc import Coroutine
from typing import Any, TypeVar

from cockpit_api.backends.base import (
    MetricPoint,
    MetricsWindow,
    MigrationFilter,
    MigrationRequest,
    PageRequest,
)
from cockpit_api.backends.sim.backend import SimulatedBackend
from tests.conftest import NODE1, NODE2, T0

T = TypeVar("T")
DAY = 86_400
WEB1 = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d"  # db-primary-01, running on NODE2, 16 GiB
BUILD1 = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off
CACHE = "b79db4df-2694-41f7-bd79-1a3ca63cf5f9"  # cache-redis-01, paused


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def points(sim: SimulatedBackend, vm_id: str, start: float, end: float,
           step: int = 60) -> tuple[MetricPoint, ...]:
    window = MetricsWindow.of(int(start), int(end), step, sim.now())
    return run(sim.vm_metrics(vm_id, window)).points


def test_cpu_wanders_smoothly_rather_than_jumping(sim: SimulatedBackend) -> None:
    cpu = [p.cpu_percent for p in points(sim, DB1, T0 - DAY, T0)]
    assert len(cpu) > 1000
    # Neighbouring minutes are strongly related (fresh noise every minute would give ~0).
    mean = statistics.fmean(cpu)
    dev = [c - mean for c in cpu]
    lag1 = sum(a * b for a, b in itertools.pairwise(dev)) / sum(d * d for d in dev)
    assert lag1 > 0.8
    assert statistics.pstdev(cpu) > 3  # and it does move


def test_a_daily_cycle_peaks_in_the_afternoon(sim: SimulatedBackend) -> None:
    # T0 is 08:00 UTC: the window [T0 - 1 day, T0] holds every hour of one day once.
    def mean_cpu(vm: str, hour: int) -> float:
        start = T0 - DAY + ((hour - 8) % 24) * 3600
        return statistics.fmean(p.cpu_percent for p in points(sim, vm, start, start + 4 * 3600))
    for vm in (DB1, WEB1):
        assert mean_cpu(vm, 12) > 1.3 * mean_cpu(vm, 0)


def test_memory_moves_with_load_but_holds_while_paused(sim: SimulatedBackend) -> None:
    mem = [p.memory_used_bytes for p in points(sim, DB1, T0 - DAY, T0)]
    assert max(mem) - min(mem) > 0.05 * 16384 * 2**20
    held = {p.memory_used_bytes for p in points(sim, CACHE, T0 - 3600, T0)}
    assert len(held) == 1 and held.pop() > 0


def test_a_boot_burns_cpu_and_fills_memory(sim: SimulatedBackend) -> None:
    run(sim.vm_action(BUILD1, "start", False))
    sim.advance(900)
    pts = points(sim, BUILD1, T0, T0 + 900)
    assert pts[0].cpu_percent > 40  # services starting
    assert pts[0].memory_used_bytes < pts[-1].memory_used_bytes / 2
    assert all(p.cpu_percent > 0 for p in pts)


def test_a_migration_shows_on_both_hosts_and_costs_the_guest_cpu(
        sim: SimulatedBackend) -> None:
    sim.advance(600)
    run(sim.migrate(DB1, MigrationRequest(NODE1)))
    sim.advance(600)  # ~35 s of copying at 512 MiB/s, then settled on NODE1
    m = run(sim.list_migrations(PageRequest(100, None), MigrationFilter())).items[0]
    assert m.status == "completed" and m.started_at is not None and m.finished_at is not None
    during = [int(m.started_at) + 5, int(m.finished_at) - 5]
    src = run(sim.host_metrics(NODE2, MetricsWindow.of(during[0], during[1], 5, sim.now())))
    dst = run(sim.host_metrics(NODE1, MetricsWindow.of(during[0], during[1], 5, sim.now())))
    assert all(p.net_tx_bps >= 512 * 2**20 for p in src.points)
    assert all(p.net_rx_bps >= 512 * 2**20 for p in dst.points)
    after = run(sim.host_metrics(NODE2, MetricsWindow.of(during[1] + 60, int(sim.now()), 60,
                                                         sim.now())))
    assert all(p.net_tx_bps < 100 * 2**20 for p in after.points)
    cpu_during = statistics.fmean(p.cpu_percent for p in points(sim, DB1, *during, step=5))
    before = points(sim, DB1, during[0] - 300, during[0] - 60, step=5)
    assert cpu_during > statistics.fmean(p.cpu_percent for p in before) + 5

