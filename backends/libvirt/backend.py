"""The facade: :class:`LibvirtBackend`, the :class:`~cockpit_api.backends.base.Backend` over
real hosts.

It owns the parts (hosts and their links, migrations, the sampler, the
inventory they feed) and answers the interface's calls from them: reads from
the inventory alone, actions on the VM's host's link, migrations through
:class:`~cockpit_api.backends.libvirt.jobs.Migrations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import libvirt

from cockpit_api.backends.base import (
    ActionName,
    BackendError,
    BackendInfo,
    Conflict,
    Host,
    InvalidArgument,
    MetricSeries,
    MetricsWindow,
    Migration,
    MigrationFilter,
    MigrationRequest,
    NotFound,
    Page,
    PageRequest,
    Unavailable,
    Vm,
    VmFilter,
)
from cockpit_api.backends.inventory import Inventory, JobTable
from cockpit_api.backends.jobstore import JobStore as Store
from cockpit_api.backends.libvirt import calls, durable
from cockpit_api.backends.libvirt.hostids import HostIdError
from cockpit_api.backends.libvirt.hosts import HostConfigLike, Hosts, HostState, Tuning
from cockpit_api.backends.libvirt.jobs import Job, Migrations
from cockpit_api.backends.libvirt.link import ensure_event_loop
from cockpit_api.backends.libvirt.metrics import MetricsStore, Series
from cockpit_api.backends.libvirt.sampler import Sampler

log = logging.getLogger("cockpit_api.libvirt")

T = TypeVar("T")


class LibvirtBackend:
    """A Backend over real libvirt hosts (see the package docstring)."""

    def __init__(
        self,
        hosts: Sequence[HostConfigLike],
        *,
        state_file: str,
        resync_seconds: float = 30.0,
        sample_seconds: float = 10.0,
        retention_seconds: float = 86400,
        migration_bandwidth_mib: int = 0,
        call_timeout: float = 30.0,
        connect_timeout: float = 15.0,
        reconnect_min_seconds: float = 0.5,
        reconnect_max_seconds: float = 30.0,
        progress_seconds: float = 0.5,
        cancel_timeout: float = 15.0,
        queue_limit: int = 64,
        keepalive: tuple[int, int] | None = None,
        start_wait_seconds: float = 0.0,
        store: Store | None = None,
    ) -> None:
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise HostIdError(f"host names must be unique: {names}")
        ids = durable.host_ids(store, state_file, names)
        ensure_event_loop()
        reconnect_min = float(reconnect_min_seconds)
        tuning = Tuning(
            resync_seconds=max(0.05, float(resync_seconds)),
            sample_seconds=max(0.05, float(sample_seconds)),
            call_timeout=float(call_timeout), connect_timeout=float(connect_timeout),
            reconnect_min=reconnect_min,
            reconnect_max=max(float(reconnect_max_seconds), reconnect_min),
            progress_seconds=float(progress_seconds), cancel_timeout=float(cancel_timeout),
            queue_limit=int(queue_limit), **({"keepalive": keepalive} if keepalive else {}))
        self.tuning = tuning
        # How long start() may wait for hosts to connect (0: not at all; serve at once).
        self._start_wait = float(start_wait_seconds)
        self._inv = Inventory()
        self._metrics = MetricsStore(retention_seconds)
        jobs_by_vm: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hosts = Hosts(hosts, ids, self._inv, self._metrics, tuning, self._spawn, jobs_by_vm)
        self.migrations = Migrations(self.hosts, jobs_by_vm, durable.Durable(store))
        # The per-migration bandwidth cap in MiB/s (0: none); read when a migration starts.
        self.migration_bandwidth_mib = int(migration_bandwidth_mib)
        self.sampler = Sampler(self.hosts, self.migrations, self._metrics)
        self.hosts.on_connected = self._first_sample
        self._started = False
        self._closed = False
        self.info = BackendInfo("libvirt", {
            "hosts": names, "libvirt_version": libvirt.getVersion(),
            **({"store": store.display_url} if store is not None else
               {"state_file": str(state_file)}),
        })

    @property
    def migration_bandwidth_mib(self) -> int:
        return self.migrations.bandwidth_mib

    @migration_bandwidth_mib.setter
    def migration_bandwidth_mib(self, value: int) -> None:
        self.migrations.bandwidth_mib = int(value)

    @property
    def _hosts(self) -> dict[str, HostState]:
        return self.hosts.by_id

    @property
    def inventory(self) -> Inventory:
        """What the hosts report, as the API lists it (the change feed observes it)."""
        return self._inv

    @property
    def jobs(self) -> JobTable[Job]:
        """The migration jobs (the change feed observes them)."""
        return self.migrations.jobs

    @property
    def call_observer(self) -> Callable[[str, float, bool], None] | None:
        """Told (call, seconds, ok) after each libvirt call; create_app sets it to metrics."""
        return self.hosts.call_observer

    @call_observer.setter
    def call_observer(self, observer: Callable[[str, float, bool], None] | None) -> None:
        self.hosts.call_observer = observer

    def now(self) -> float:
        return time.time()

    def host_id(self, name: str) -> str:
        """The stable id of the configured host ``name``."""
        for h in self.hosts.order:
            if h.name == name:
                return h.id
        raise NotFound(f"no configured host named {name}", code="host_not_found")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start connecting to every host and return (at most ``start_wait_seconds`` later)."""
        if self._started:
            return
        self._started, self._closed = True, False
        await self.migrations.load()  # the records first: a VM they move is never re-adopted
        self.hosts.start()
        self._spawn(self.migrations.records_loop())
        self._spawn(self.hosts.resync_loop())
        self._spawn(self.sampler.loop(self.tuning.sample_seconds))
        if self._start_wait > 0:
            await self.wait_connected(self._start_wait)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until every host has connected (True) or ``timeout`` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self.hosts.connected(h) for h in self.hosts.order):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        if not self._started or self._closed:
            return
        self._closed = True
        self.hosts.closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.migrations.release_all()  # another replica may take over at once
        pending = set(self._tasks)
        for _ in range(20):  # cancel until every task is gone (bounded)
            if not pending:
                break
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.5)
        if pending:
            log.warning("%d background tasks did not stop", len(pending))
        await self.hosts.close()
        self._started = False

    def _first_sample(self, h: HostState) -> None:
        """A host just connected: sample it now (no empty first window)."""
        self._spawn(self.sampler.sample_host(h))

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ reads

    async def list_hosts(self, page: PageRequest) -> Page[Host]:
        return self._inv.page_hosts(page)

    async def get_host(self, host_id: str) -> Host:
        return self._inv.get_host(host_id)

    async def list_vms(self, page: PageRequest, flt: VmFilter) -> Page[Vm]:
        return self._inv.page_vms(page, flt)

    async def get_vm(self, vm_id: str) -> Vm:
        return self._inv.get_vm(vm_id)

    async def list_migrations(self, page: PageRequest, flt: MigrationFilter) -> Page[Migration]:
        return self.migrations.jobs.page(page, flt, lambda job: job.snapshot())

    async def get_migration(self, migration_id: str) -> Migration:
        return self.migrations.get(migration_id).snapshot()

    # ------------------------------------------------------------ actions

    async def vm_action(self, vm_id: str, action: ActionName, force: bool,
                        dry_run: bool = False) -> Vm:
        if action not in calls.ACTIONS:
            raise InvalidArgument(f"unknown action {action}", code="bad_action")
        vm = self._inv.get_vm(vm_id)
        h = self.hosts.by_id[vm.host_id]
        self.hosts.require_connected(h)
        if vm.migration_id is not None:
            await self.migrations.reconcile_now(vm_id)  # one started elsewhere may be over
            vm = self._inv.get_vm(vm_id)
            h = self.hosts.by_id[vm.host_id]
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is migrating ({vm.migration_id})", code="vm_migrating")
        try:
            await self.hosts.call(h, functools.partial(calls.do_action, vm_id=vm_id,
                                                       action=action, force=force,
                                                       dry_run=dry_run),
                                  "dry run" if dry_run else action)
        except NotFound:
            self.hosts.resync_all_soon()  # it is not where we thought: look everywhere
            raise
        if dry_run:
            return vm  # checked against libvirt's state of now; nothing was called
        with contextlib.suppress(BackendError):
            await self.hosts.refresh(h, vm_id)
        self.hosts.resync_soon(h)
        current = self._inv.vms.get(vm_id)
        if current is not None:
            return current
        # A transient domain that powered off is gone; answer its last state.
        return replace(vm, status="shutoff", migration_id=None)

    async def migrate(self, vm_id: str, request: MigrationRequest,
                      dry_run: bool = False) -> Migration:
        return await self.migrations.start(vm_id, request, dry_run)

    async def cancel_migration(self, migration_id: str) -> Migration:
        return await self.migrations.cancel(migration_id)

    # ------------------------------------------------------------ metrics

    async def vm_metrics(self, vm_id: str, window: MetricsWindow) -> MetricSeries:
        self._inv.get_vm(vm_id)
        return self._metrics.vms.get(vm_id, Series()).window(vm_id, window, self.now())

    async def host_metrics(self, host_id: str, window: MetricsWindow) -> MetricSeries:
        self._inv.get_host(host_id)
        return self._metrics.hosts.get(host_id, Series()).window(host_id, window, self.now())

    async def sample_now(self) -> None:
        """Take one metrics sample of every connected host (the sampler's step, for tests too)."""
        if not self._started:
            raise Unavailable("the libvirt backend is not started", code="backend_stopped")
        await self.sampler.sample_now()

    async def resync_now(self) -> None:
        """Re-read every connected host's domains now."""
        await self.hosts.resync_connected()
