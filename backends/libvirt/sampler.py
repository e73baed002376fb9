"""The sampler: every ``sample_seconds``, each connected host's counters into the metrics store.

Each host is read on its own link (a frozen host's sample waits on that host
alone) and a host that cannot be read leaves a gap. Domains that are migrating
are skipped (see :func:`cockpit_api.backends.libvirt.calls.read_stats`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from cockpit_api.backends.base import ACTIVE_STATUSES, BackendError
from cockpit_api.backends.libvirt import calls
from cockpit_api.backends.libvirt.hosts import Hosts, HostState
from cockpit_api.backends.libvirt.jobs import Migrations
from cockpit_api.backends.libvirt.metrics import MetricsStore

log = logging.getLogger("cockpit_api.libvirt")


class Sampler:
    def __init__(self, hosts: Hosts, migrations: Migrations, store: MetricsStore) -> None:
        self.hosts = hosts
        self.migrations = migrations
        self.store = store

    async def sample_now(self) -> None:
        """Take one sample of every connected host (the loop's step, for tests too)."""
        await asyncio.gather(*(self.sample_host(h) for h in self.hosts.order
                               if h.link is not None))
        self.store.trim(time.time(), set(self.hosts.inv.vms))

    async def sample_host(self, h: HostState) -> None:
        try:
            sample = await self.hosts.run(h, functools.partial(
                calls.read_stats, skip=self.migrations.migrating_on(h)), "sample statistics")
        except BackendError:
            return  # a gap: the host could not be sampled
        inv = self.hosts.inv
        listed = self.hosts.listed_on(h)
        self.store.record_host(
            h.id, sample, host_cpus=inv.hosts[h.id].cpus,
            vm_info={u: (d.vcpus, d.memory_mib) for u, d in h.domains.items()},
            listed_here={v.id for v in listed},
            inactive_here={v.id for v in listed if v.status not in ACTIVE_STATUSES})

    async def loop(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.sample_now()
            except Exception:  # the sampler must outlive any one bad sample
                log.exception("metrics sampling failed")
