"""The simulator's performance logs: what a real machine's chart looks like, computed on demand.

A sample is a pure function of (seed, VM, time) and of the VM's recorded
history, so any window can be asked for in any order and the same seed always
draws the same chart; nothing is stored per sample. Realism comes from:

- **smooth variation**: value noise (hash values at lattice points, smoothly
  interpolated) at two time scales (30 min, 2 h) summed, like a slowly
  wandering AR process, plus a small per-sample jitter, and 10-minute bursts
  of disk and network traffic;
- **a daily cycle**: activity peaks at 14:00 UTC and bottoms out at 02:00;
- **memory that follows load** (slowly), ramps up after a boot and stays frozen
  while the guest is paused;
- **events**: a boot burns CPU for a minute; a running migration costs the
  guest CPU (dirty-page tracking) and shows as the copy's traffic on the two
  hosts' network counters.

States are honoured exactly: no CPU, disk or network when shut off, memory only
when paused or PM-suspended; the callers leave gaps while a host is unreachable.

**Fitted behaviour** (:class:`Behaviour`, written by ``cockpit-api snapshot``)
replaces the shape above with one made of a daily cosine and a few faster
harmonics of the day, so that a chart's statistics are exactly the fitted ones
over any whole day of samples: the mean is the fitted mean, the first daily
harmonic gives back the amplitude and peak hour, and what is left has the fitted
noise. That is what makes snapshot -> serve -> snapshot a fixed point. Without a
``Behaviour`` every sample is what it always was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cockpit_api.backends.base import MetricPoint

MIB = 1024 * 1024
_MASK64 = (1 << 64) - 1
_DAY = 86_400
_PEAK = 14 * 3600  # the busiest time of day, UTC
_OCTAVES = ((1800, 0.45), (7200, 0.55))  # (period s, weight); weights sum to 1
_SLOW = ((7200, 1.0),)  # memory: the page cache lags behind CPU
_IO = ((600, 1.0),)  # disk and network bursts on top of the shared level
_BOOT_SECONDS = 60
_RAMP_SECONDS = 180
RUNNING = ("running", "blocked", "shutdown")
HOLDING = ("paused", "pmsuspended")


@dataclass(slots=True)
class Interval:
    """A migration copying a VM's memory: its traffic and the guest's extra CPU."""

    start: float
    end: float | None  # None: still running
    source: str
    destination: str
    bytes_per_s: float

    def covers(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


def noise(salt: int, t: int) -> float:
    """A stable pseudo-random number in [0, 1) from (salt, t): splitmix64."""
    x = (salt * 0x9E3779B97F4A7C15 + t) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) / 2.0**64


def smooth(salt: int, t: float, octaves: tuple[tuple[int, float], ...] = _OCTAVES) -> float:
    """Value noise in [0, 1): continuous in t, wandering at each octave's time scale."""
    total = 0.0
    for k, (period, weight) in enumerate(octaves):
        u = t / period
        i = math.floor(u)
        f = u - i
        f = f * f * (3.0 - 2.0 * f)  # smoothstep: no corners at the lattice points
        a, b = noise(salt + k, i), noise(salt + k, i + 1)
        total += weight * (a + (b - a) * f)
    return total


def daily(t: float) -> float:
    """0.6 at 02:00 UTC to 1.4 at 14:00 UTC, mean 1: how busy people make a machine."""
    return 1.0 + 0.4 * math.cos(2.0 * math.pi * ((t - _PEAK) % _DAY) / _DAY)


# Harmonics of the day for fitted noise: none is 1 or 2 apart from another, nor below 4,
# so their products with the daily cosine (and with each other) never land on the mean
# or the first daily harmonic, which a fit reads back.
_HARMONICS = (5, 17, 53, 151)
_H_AMP = math.sqrt(2.0 / len(_HARMONICS))  # each harmonic's amplitude: unit mean square
NOISE_BOUND = len(_HARMONICS) * _H_AMP  # |unit noise| never exceeds this
IO_NOISE = 0.3  # disk and network wander by this share (times the unit noise)
MEM_NOISE = 0.05
# Today's model's mean rates at 100 % CPU (bytes/s): a fitted VM without rates uses these.
IO_PER_CPU = (4e6, 2e6, 8e6, 5e6)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """A VM's fitted chart: means and daily shape while it runs (see the module docstring).

    ``cpu`` is the mean CPU percent; ``amplitude`` the daily swing as a share of it,
    peaking at ``peak_hour`` UTC; ``noise`` the root mean square of the rest, as a share
    of the daily level; ``memory_share`` the mean share of its memory in use; the four
    rates are mean bytes per second.
    """

    cpu: float
    amplitude: float = 0.4
    peak_hour: float = 14.0
    noise: float = 0.2
    memory_share: float = 0.5
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None

    def rates(self) -> tuple[float, float, float, float]:
        own = (self.disk_read_bps, self.disk_write_bps, self.net_rx_bps, self.net_tx_bps)
        return tuple(  # type: ignore[return-value]
            r if r is not None else k * self.cpu / 100.0
            for r, k in zip(own, IO_PER_CPU, strict=True))


def unit_noise(salt: int, t: float, harmonics: tuple[int, ...] = _HARMONICS) -> float:
    """Zero mean, unit mean square over any whole day of evenly spaced samples."""
    total = 0.0
    for k in harmonics:
        phase = 2.0 * math.pi * noise(salt + 101 + k, 0)
        total += math.cos(2.0 * math.pi * k * (t % _DAY) / _DAY + phase)
    return _H_AMP * total


def _fitted_daily(b: Behaviour, t: float) -> float:
    return 1.0 + b.amplitude * math.cos(2.0 * math.pi * ((t - b.peak_hour * 3600) % _DAY) / _DAY)


def fitted_point(salt: int, b: Behaviour, mem_mib: int, t: int, status: str, since: float,
                 booted: bool, migrating: bool) -> MetricPoint:
    """:func:`vm_point` for a VM with fitted behaviour (same states, same events)."""
    if status in HOLDING:
        return MetricPoint(t, 0.0, _fitted_memory(salt, b, mem_mib, since, None),
                           0.0, 0.0, 0.0, 0.0)
    if status not in RUNNING:
        return MetricPoint(t, 0.0, 0, 0.0, 0.0, 0.0, 0.0)
    day = _fitted_daily(b, t)
    cpu = b.cpu * day * (1.0 + b.noise * unit_noise(salt, t))
    up = t - since if booted else math.inf
    if up < _BOOT_SECONDS:
        cpu += 60.0 * (1.0 - up / _BOOT_SECONDS)
    if migrating:
        cpu += 8.0 + 10.0 * b.cpu / 100.0
    cpu = round(min(100.0, max(0.0, cpu)), 2)
    io = day * (1.0 + IO_NOISE * unit_noise(salt + 11, t))
    rates = [_r(r * io) for r in b.rates()]
    return MetricPoint(t, cpu, _fitted_memory(salt, b, mem_mib, t, up), *rates)


def _fitted_memory(salt: int, b: Behaviour, mem_mib: int, t: float, up: float | None) -> int:
    share = b.memory_share * (1.0 + MEM_NOISE * unit_noise(salt + 23, t, _HARMONICS[:2]))
    if up is not None and up < _RAMP_SECONDS:
        share *= 0.3 + 0.7 * up / _RAMP_SECONDS
    return int(mem_mib * MIB * share)


def vm_point(salt: int, load: float, mem_mib: int, t: int, status: str, since: float,
             booted: bool, migrating: bool) -> MetricPoint:
    """One sample of a VM in ``status`` since ``since`` (``booted``: it was off before)."""
    if status in HOLDING:
        # A paused guest's memory stays where it was when it stopped.
        return MetricPoint(t, 0.0, _memory(salt, load, mem_mib, since, None), 0.0, 0.0, 0.0, 0.0)
    if status not in RUNNING:
        return MetricPoint(t, 0.0, 0, 0.0, 0.0, 0.0, 0.0)
    level = load * daily(t) * (0.4 + 1.2 * smooth(salt, t))
    jitter = noise(salt + 7, t)
    cpu = 100.0 * level * (0.9 + 0.2 * jitter)
    up = t - since if booted else math.inf
    if up < _BOOT_SECONDS:
        cpu += 60.0 * (1.0 - up / _BOOT_SECONDS)  # services starting
    if migrating:
        cpu += 8.0 + 10.0 * load  # dirty-page tracking and the copy
    cpu = round(min(100.0, max(0.1, cpu)), 2)
    io = level * (0.4 + 1.2 * smooth(salt + 11, t, _IO))
    # Reads and writes, receives and sends move together, each a little apart.
    return MetricPoint(
        t, cpu, _memory(salt, load, mem_mib, t, up),
        _r(4e6 * io * (0.8 + 0.4 * jitter)), _r(2e6 * io * (1.2 - 0.4 * jitter)),
        _r(8e6 * io * (0.9 + 0.2 * jitter)), _r(5e6 * io * (1.1 - 0.2 * jitter)))


def _memory(salt: int, load: float, mem_mib: int, t: float, up: float | None) -> int:
    # The working set follows the slow part of the load...
    slow = smooth(salt + 23, t, _SLOW)
    share = min(0.95, 0.25 + 0.35 * load + 0.25 * slow * daily(t))
    if up is not None and up < _RAMP_SECONDS:
        share *= 0.3 + 0.7 * up / _RAMP_SECONDS  # ...and fills up after a boot
    return int(mem_mib * MIB * share)


def _r(x: float) -> float:
    return round(x, 1)
