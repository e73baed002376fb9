"""Fitting a deployment's behaviour for ``cockpit-api snapshot``: charts and migration speeds.

Every estimate here is one the simulator plays back exactly (see
backends/sim/metrics.py, "Fitted behaviour"): fitted from a whole day of
samples, a served snapshot's chart gives back the same numbers, so snapshot ->
serve -> snapshot is a fixed point. Values are rounded to what a chart can show,
and kept inside the range the simulator plays back without clipping (a busy
VM's noise is narrowed rather than cut off at 100 %).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cockpit_api.backends.sim.metrics import IO_NOISE, MEM_NOISE, NOISE_BOUND

DAY = 86_400
MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT_DISK_GIB = 20  # the simulator's, when a scenario does not say (the API never does)

# Bounds that keep every fitted sample strictly inside (0, 100] without clipping:
# the lowest sample is cpu * (1 - amplitude) * (1 - noise * NOISE_BOUND) >= cpu * 0.1.
MIN_CPU = 0.5
MAX_AMPLITUDE = 0.8
MAX_NOISE = math.floor(500.0 / NOISE_BOUND) / 1000.0  # noise * NOISE_BOUND <= 0.5
MAX_MEMORY_SHARE = 0.85
RUNNING = ("running", "blocked")
assert IO_NOISE * NOISE_BOUND < 1.0 and MAX_MEMORY_SHARE * (1 + MEM_NOISE * NOISE_BOUND) <= 1.0


def fit_chart(points: Sequence[Mapping[str, Any]], memory_mib: int) -> dict[str, float] | None:
    """A VM's fitted chart (the guest keys of a scenario) from its metric points, or None.

    Only samples with CPU in use count (a shut-off or paused VM's samples say nothing
    about how it behaves while it runs). The daily cycle is a least-squares fit of
    ``mean + a cos + b sin`` of the time of day, which on a whole day of evenly spaced
    samples is exactly the first Fourier harmonic.
    """
    run = [p for p in points if p["cpu_percent"] > 0]
    if not run:
        return None
    n = len(run)
    cpu = [float(p["cpu_percent"]) for p in run]
    mean = sum(cpu) / n
    if n >= 3:
        c0, a, b = _cosine_fit([int(p["t"]) for p in run], cpu)
    else:
        c0, a, b = mean, 0.0, 0.0
    c = max(MIN_CPU, c0)
    amplitude = min(MAX_AMPLITUDE, math.hypot(a, b) / c)
    theta = math.atan2(b, a) % (2.0 * math.pi)
    peak = round(theta / (2.0 * math.pi) * 24.0) % 24
    resid = [x - (c0 + a * cs + b * sn) for x, (cs, sn) in zip(cpu, _angles(run), strict=True)]
    rms = math.sqrt(sum(r * r for r in resid) / n)
    noise = rms / (c * math.sqrt(1.0 + amplitude * amplitude / 2.0))
    # Round to what a chart shows, then keep it playable (no clipping at 100 %).
    c = max(MIN_CPU, round(c, 1))
    amplitude = round(amplitude, 2)
    if amplitude == 0:
        peak = 14  # no daily cycle: its phase is noise, and the simulator's default is stable
    if c * (1.0 + amplitude) > 100.0:
        amplitude = math.floor(100.0 * (100.0 / c - 1.0)) / 100.0
    room = (100.0 / (c * (1.0 + amplitude)) - 1.0) / NOISE_BOUND
    noise = min(round(noise, 3), MAX_NOISE, math.floor(room * 1000.0) / 1000.0)
    memory = [float(p["memory_used_bytes"]) for p in run]
    share = sum(memory) / n / (memory_mib * MIB) if memory_mib else 0.0
    out = {"cpu": c, "amplitude": amplitude, "peak_hour": float(peak), "noise": max(0.0, noise),
           "memory_share": min(MAX_MEMORY_SHARE, round(share, 3))}
    for key in ("disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps"):
        out[key] = _sig3(sum(float(p[key]) for p in run) / n)
    return out


def _angles(points: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    out = []
    for p in points:
        th = 2.0 * math.pi * (int(p["t"]) % DAY) / DAY
        out.append((math.cos(th), math.sin(th)))
    return out


def _cosine_fit(ts: list[int], ys: list[float]) -> tuple[float, float, float]:
    """Least squares of y = c + a cos(day angle) + b sin(day angle); (mean, 0, 0) if singular."""
    rows = _angles({"t": t} for t in ts)
    # The normal equations, 3 x 3, solved by Cramer's rule.
    s = [[0.0] * 3 for _ in range(3)]
    r = [0.0] * 3
    for (cs, sn), y in zip(rows, ys, strict=True):
        v = (1.0, cs, sn)
        for i in range(3):
            r[i] += v[i] * y
            for j in range(3):
                s[i][j] += v[i] * v[j]
    det = _det(s)
    if abs(det) < 1e-9 * len(ys) ** 3:
        return sum(ys) / len(ys), 0.0, 0.0  # too short a window to see a day's cycle
    out = []
    for k in range(3):
        m = [[r[i] if j == k else s[i][j] for j in range(3)] for i in range(3)]
        out.append(_det(m) / det)
    return out[0], out[1], out[2]


def _det(m: list[list[float]]) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def _sig3(x: float) -> float:
    return float(f"{x:.3g}") if x > 0 else 0.0


def model_bytes(memory_mib: int, live: bool, copy_storage: str) -> int:
    """What the simulator copies for a migration (backends/sim/backend.py ``migrate``)."""
    total = memory_mib * MIB
    if live:
        total += total // 10
    if copy_storage == "all":
        total += DEFAULT_DISK_GIB * GIB
    elif copy_storage == "inc":
        total += DEFAULT_DISK_GIB * GIB // 10
    return total


def fit_links(jobs: Iterable[Mapping[str, Any]],
              memory_of: Mapping[str, int]) -> list[dict[str, Any]]:
    """Per host pair: the bandwidth and setup time of its typical (median) completed job.

    ``jobs`` are scenario migration entries (durations already rounded to the
    millisecond, as written, so that a served snapshot fits the same numbers);
    the bandwidth is in the simulator's bytes (``model_bytes``), so that its
    migrations take as long as the source's did, whatever the source counted.
    """
    pairs: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for j in jobs:
        if j["status"] != "completed" or j["vm"] not in memory_of:
            continue
        size = model_bytes(memory_of[j["vm"]], bool(j["live"]), str(j["copy_storage"]))
        pairs.setdefault((j["source"], j["destination"]), []).append(
            (size, float(j["setup_seconds"]), float(j["copy_seconds"])))
    links = []
    for (src, dst), runs in sorted(pairs.items()):
        # Medians: a pair's first migration is often cold (the destination's first incoming
        # QEMU) and one slow job should not make every mock migration slow.
        rates = [size / copy for size, _, copy in runs if copy > 0]
        link: dict[str, Any] = {"source": src, "destination": dst}
        link["bandwidth_bytes_per_s"] = _sig3(statistics.median(rates)) if rates else None
        link["setup_seconds"] = round(statistics.median(u for _, u, _ in runs), 3)
        links.append(link)
    return links
