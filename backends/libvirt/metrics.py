"""Performance logs of the libvirt backend: samples in bounded buffers, windows out of them.

A sampler reads ``getAllDomainStats`` (and the node's CPU and memory counters)
of every connected host every ``sample_seconds``. Cumulative counters become
rates here: ``cpu.time`` deltas give the share of the VM's vCPUs in use,
``block.N.rd/wr.bytes`` and ``net.N.rx/tx.bytes`` deltas give bytes per
second. Each VM and each host keeps its samples for ``retention_seconds``.

A :class:`~cockpit_api.backends.base.MetricsWindow` is answered from the buffer: for each
sample instant, the latest sample at or before it, if that sample is less than
one step older; otherwise the instant is a gap (the host was unreachable, or
the sampler had not run yet).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from cockpit_api.backends.base import MetricPoint, MetricSeries, MetricsWindow

MIB = 1024 * 1024

# (cpu_percent, memory_used_bytes, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps)
Values = tuple[float, int, float, float, float, float]
ZERO: Values = (0.0, 0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class HostSample:
    """One host's raw counters, read in a worker thread at ``t`` (Unix seconds)."""

    t: float
    domains: dict[str, dict[str, Any]]  # domain UUID -> getAllDomainStats record
    cpu: dict[str, int] | None  # getCPUStats(ALL_CPUS), None when unsupported
    memory: dict[str, int] | None  # getMemoryStats(ALL_CELLS), KiB, None when unsupported


@dataclass(slots=True)
class _Counters:
    t: float
    host_id: str
    cpu_ns: int | None
    io: tuple[int, int, int, int]  # block rd, block wr, net rx, net tx (bytes)


@dataclass(slots=True)
class Series:
    """Samples of one VM or host, oldest first, trimmed to the retention."""

    ts: list[float] = field(default_factory=list)
    values: list[Values] = field(default_factory=list)

    def add(self, t: float, values: Values, cutoff: float) -> None:
        if self.ts and t <= self.ts[-1]:
            return  # the clock went back: keep the series ordered
        self.ts.append(t)
        self.values.append(values)
        if self.ts[0] < cutoff:
            i = bisect.bisect_left(self.ts, cutoff)
            del self.ts[:i], self.values[:i]

    def window(self, resource_id: str, window: MetricsWindow, now: float) -> MetricSeries:
        points = []
        for t in window.times():
            if t > now:
                break
            i = bisect.bisect_right(self.ts, t) - 1
            if i >= 0 and t - self.ts[i] < window.step:
                points.append(MetricPoint(t, *self.values[i]))
        return MetricSeries(resource_id, window.start, window.end, window.step, tuple(points))


def _total(stats: dict[str, Any], group: str, key: str) -> int:
    n = int(stats.get(f"{group}.count", 0) or 0)
    return sum(int(stats.get(f"{group}.{i}.{key}", 0) or 0) for i in range(n))


def _rate(new: int, old: int, dt: float) -> float:
    # A counter that went back (the guest restarted, a device was unplugged) gives 0, not < 0.
    return round(max(0.0, (new - old) / dt), 1) if dt > 0 else 0.0


def _clamp_percent(x: float) -> float:
    return round(min(100.0, max(0.0, x)), 2)


class MetricsStore:
    """Every VM's and host's series, and the last counters the rates are taken from."""

    def __init__(self, retention_seconds: float) -> None:
        self.retention = float(retention_seconds)
        self.vms: dict[str, Series] = {}
        self.hosts: dict[str, Series] = {}
        self._vm_prev: dict[str, _Counters] = {}
        self._host_prev: dict[str, tuple[float, int, int]] = {}  # t, busy ns, total ns

    def record_host(self, host_id: str, sample: HostSample, *, host_cpus: int,
                    vm_info: dict[str, tuple[int, int]], listed_here: set[str],
                    inactive_here: set[str]) -> None:
        """Turn one host sample into points.

        ``vm_info`` gives (vcpus, memory_mib) per VM UUID; ``listed_here`` are the
        VMs the inventory lists under this host (only those get VM points from it:
        a domain that is arriving in a migration is still the source's);
        ``inactive_here`` are listed VMs that are shut off (points of zeros).
        """
        t = sample.t
        cutoff = t - self.retention
        sums = [0.0, 0, 0.0, 0.0, 0.0, 0.0]
        for vm_id, stats in sample.domains.items():
            vcpus, memory_mib = vm_info.get(vm_id, (1, 0))
            vcpus = int(stats.get("vcpu.current", 0) or 0) or vcpus or 1
            values = self._vm_values(vm_id, host_id, t, stats, vcpus, memory_mib)
            sums[0] += values[0] * vcpus
            for k in range(1, 6):
                sums[k] += values[k]
            if vm_id in listed_here:
                self.vms.setdefault(vm_id, Series()).add(t, values, cutoff)
        for vm_id in inactive_here - set(sample.domains):
            self._vm_prev.pop(vm_id, None)
            self.vms.setdefault(vm_id, Series()).add(t, ZERO, cutoff)
        cpus = max(1, host_cpus)
        cpu = self._host_cpu(host_id, t, sample.cpu)
        if cpu is None:
            cpu = sums[0] / cpus
        memory = int(sums[1])
        if sample.memory:
            m = sample.memory
            used_kib = m.get("total", 0) - m.get("free", 0) - m.get("buffers", 0) \
                - m.get("cached", 0)
            if m.get("total", 0) > 0 and used_kib >= 0:
                memory = used_kib * 1024
        self.hosts.setdefault(host_id, Series()).add(
            t, (_clamp_percent(cpu), max(0, memory), round(sums[2], 1), round(sums[3], 1),
                round(sums[4], 1), round(sums[5], 1)), cutoff)

    def _vm_values(self, vm_id: str, host_id: str, t: float, stats: dict[str, Any],
                   vcpus: int, memory_mib: int) -> Values:
        cpu_ns = stats.get("cpu.time")
        cur = _Counters(t, host_id, int(cpu_ns) if cpu_ns is not None else None, (
            _total(stats, "block", "rd.bytes"), _total(stats, "block", "wr.bytes"),
            _total(stats, "net", "rx.bytes"), _total(stats, "net", "tx.bytes")))
        prev = self._vm_prev.get(vm_id)
        self._vm_prev[vm_id] = cur
        # Memory the guest holds on the host: QEMU's resident set, else its balloon size,
        # else (drivers without memory stats) what it was given.
        kib = stats.get("balloon.rss") or stats.get("balloon.current")
        memory = int(kib) * 1024 if kib else memory_mib * MIB
        if prev is None or prev.host_id != host_id or t <= prev.t:
            return (0.0, memory, 0.0, 0.0, 0.0, 0.0)
        dt = t - prev.t
        cpu = 0.0
        if cur.cpu_ns is not None and prev.cpu_ns is not None:
            cpu = 100.0 * (cur.cpu_ns - prev.cpu_ns) / (dt * 1e9 * vcpus)
        rates = [_rate(a, b, dt) for a, b in zip(cur.io, prev.io, strict=True)]
        return (_clamp_percent(cpu), memory, rates[0], rates[1], rates[2], rates[3])

    def _host_cpu(self, host_id: str, t: float, cpu: dict[str, int] | None) -> float | None:
        if not cpu:
            return None
        busy = int(cpu.get("kernel", 0)) + int(cpu.get("user", 0))
        total = busy + int(cpu.get("idle", 0)) + int(cpu.get("iowait", 0))
        prev = self._host_prev.get(host_id)
        self._host_prev[host_id] = (t, busy, total)
        if prev is None or total - prev[2] <= 0:
            return None  # no delta yet (or a driver whose counters never move)
        return 100.0 * (busy - prev[1]) / (total - prev[2])

    def forget_host(self, host_id: str) -> None:
        """The host went away: its next sample starts new deltas (a gap, not a spike)."""
        self._host_prev.pop(host_id, None)
        for vm_id in [v for v, c in self._vm_prev.items() if c.host_id == host_id]:
            del self._vm_prev[vm_id]

    def trim(self, now: float, keep_vms: set[str]) -> None:
        """Drop series whose newest sample is older than the retention, and stale counters."""
        cutoff = now - self.retention
        for store in (self.vms, self.hosts):
            for key in [k for k, s in store.items() if not s.ts or s.ts[-1] < cutoff]:
                del store[key]
        for vm_id in [v for v in self._vm_prev if v not in keep_vms]:
            del self._vm_prev[vm_id]
