"""Migration jobs: started here, or found running in libvirt, each ending in a true state.

A migration this server starts is ``migrateToURI3`` peer-to-peer on the
source, over a connection of its own (a :class:`~cockpit_api.backends.libvirt.link.Link`
used for that one call, so the host's link stays free for progress, cancel and
reads). Progress comes from ``jobStats()`` polled through the source's link
(the last non-zero numbers are kept: the first ~200 ms report zeros and the last
moments fail), final numbers from the JOB_COMPLETED event; a cancel is
``abortJob()`` on the source.

A migration found running with no job (started by someone else, or by this
server before it restarted: libvirt keeps a peer-to-peer migration going when
its client dies) is seen as an incoming copy on a destination; it becomes an
*adopted* job, which is reconciled with libvirt rather than remembered: each
poll asks the source for its job (``jobStats``: still migrating out, with
progress) and otherwise looks where the domain is active (the destination's
own, resumed copy: completed; only the source: failed, or cancelled if a cancel
was asked). It can be cancelled like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import libvirt

from cockpit_api.backends.base import (
    ACTIVE_STATUSES,
    FINAL_MIGRATION_STATUSES,
    BackendError,
    Conflict,
    Migration,
    MigrationProgress,
    MigrationRequest,
    MigrationStatus,
    NotFound,
    Unavailable,
    dry_run_job,
)
from cockpit_api.backends.inventory import JobTable
from cockpit_api.backends.libvirt import calls, durable
from cockpit_api.backends.libvirt.durable import Durable
from cockpit_api.backends.libvirt.errors import ABORTED, HOST_DISCONNECTED, translate
from cockpit_api.backends.libvirt.hosts import Hosts, HostState
from cockpit_api.backends.libvirt.link import Link

log = logging.getLogger("cockpit_api.libvirt")


@dataclass(eq=False)
class Job:
    id: str
    seq: int
    vm_id: str
    source_host_id: str
    request: MigrationRequest
    created_at: float
    status: MigrationStatus = "initiated"
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    total: int = 0
    processed: int = 0
    remaining: int = 0
    percent: float = 0.0
    adopted: bool = False  # found running in libvirt, not started by this process
    mirror: bool = False  # another replica drives it: shown from its record
    cancel_requested: bool = False
    ending: bool = False  # _finish has begun
    dest_lost: bool = False
    final_stats: dict[str, Any] | None = None
    completed_event: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # look at libvirt now
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> Migration:
        return Migration.of(
            id=self.id, vm_id=self.vm_id, source_host_id=self.source_host_id,
            request=self.request, status=self.status,
            progress=MigrationProgress(self.total, self.processed, self.remaining, self.percent),
            created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, error=self.error,
        )

    def take_progress(self, stats: dict[str, Any], final: bool = False) -> None:
        """Keep jobStats' numbers unless they are the setup phase's zeros."""
        total = int(stats.get("data_total") or stats.get("memory_total") or 0)
        if total <= 0:
            return
        processed = int(stats.get("data_processed") or stats.get("memory_processed") or 0)
        remaining = 0 if final else int(stats.get("data_remaining")
                                        or stats.get("memory_remaining") or 0)
        self.total, self.processed, self.remaining = total, processed, remaining
        done = 100.0 * (total - min(remaining, total)) / total
        # 100 % means completed; a job still running reads at most 99.9.
        self.percent = 100.0 if final else round(min(done, 99.9), 1)


def migration_flags(r: MigrationRequest) -> int:
    flags = libvirt.VIR_MIGRATE_PEER2PEER
    if r.live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if r.persistent:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if r.undefine_source:
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if r.copy_storage == "all":
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    elif r.copy_storage == "inc":
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    return flags


class Migrations:
    """The job table, the runs of the jobs started here and the watch over adopted ones."""

    def __init__(self, hosts: Hosts, jobs_by_vm: dict[str, Job],
                 records: Durable | None = None) -> None:
        self.hosts = hosts
        self.records = records or Durable(None)
        self.tuning = hosts.tuning
        self.jobs: JobTable[Job] = JobTable()
        self.by_vm = jobs_by_vm
        self.bandwidth_mib = 0
        self._seq = itertools.count(1)
        hosts.on_lost = self._host_lost
        hosts.on_job_event = self._job_event
        hosts.on_unrecorded = self._adopt
        hosts.on_domain_event = self._domain_event

    def get(self, migration_id: str) -> Job:
        return self.jobs.get(migration_id)

    def migrating_on(self, h: HostState) -> frozenset[str]:
        return frozenset(job.vm_id for job in self.by_vm.values()
                         if h.id in (job.source_host_id, job.request.destination_host_id))

    def _new(self, vm_id: str, source: HostState, request: MigrationRequest,
             adopted: bool = False) -> Job:
        job_id = secrets.token_hex(6)
        while job_id in self.jobs:
            job_id = secrets.token_hex(6)
        seq = next(self._seq)
        job = Job(job_id, seq, vm_id, source.id, request, time.time(), adopted=adopted)
        self.jobs.add(job, seq)
        self.by_vm[vm_id] = job
        return job

    # ------------------------------------------------------------ starting

    async def start(self, vm_id: str, request: MigrationRequest,
                    dry_run: bool = False) -> Migration:
        hosts, inv = self.hosts, self.hosts.inv
        vm = inv.get_vm(vm_id)
        dest = hosts.by_id.get(request.destination_host_id)
        if dest is None:
            raise NotFound(f"no host with id {request.destination_host_id}",
                           code="host_not_found")
        src = hosts.by_id[vm.host_id]
        hosts.require_connected(src)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is already migrating ({vm.migration_id})",
                           code="vm_migrating")
        if dest is src:
            raise Conflict("Attempt to migrate guest to the same host", code="same_host")
        if not hosts.connected(dest):
            raise Conflict(f"destination host {dest.name} is disconnected",
                           code="host_disconnected")
        # Decide on libvirt's state now, not on the last event.
        await hosts.refresh(src, vm_id)
        await self.reconcile_now(vm_id)
        vm = inv.get_vm(vm_id)
        if vm.migration_id is not None:
            raise Conflict(f"VM {vm.name} is already migrating ({vm.migration_id})",
                           code="vm_migrating")
        if vm.host_id == dest.id:
            raise Conflict("Attempt to migrate guest to the same host", code="same_host")
        src = hosts.by_id[vm.host_id]
        hosts.require_connected(src)
        if vm.status not in ACTIVE_STATUSES:
            raise Conflict("domain is not running", code="vm_not_running")
        if vm.status == "pmsuspended":
            raise Conflict("domain is PM-suspended", code="vm_pmsuspended")
        if dry_run:
            await self.records.check_free(vm.id)  # another replica's unfinished job: 409
            return dry_run_job(vm, request, time.time())
        job = self._new(vm.id, src, request)
        try:
            await self.records.create(job)  # the store's word: one unfinished job per VM
        except BaseException:  # refused (409), or the store is away (503): no job then
            self._forget(job)
            raise
        hosts.recompute(vm.id)
        hosts.spawn(self._run(job))
        return job.snapshot()

    def _forget(self, job: Job) -> None:
        self.jobs.remove(job.id, job.seq)
        if self.by_vm.get(job.vm_id) is job:
            del self.by_vm[job.vm_id]

    async def _run(self, job: Job) -> None:
        src = self.hosts.by_id[job.source_host_id]
        dest = self.hosts.by_id[job.request.destination_host_id]
        status: MigrationStatus = "completed"
        error: str | None = None
        try:
            if job.cancel_requested:
                raise Conflict("migration job was cancelled by the client", code=ABORTED)
            self.hosts.require_connected(src)
            # Its own connection: the host's link stays free for progress, cancel and reads.
            link = Link(f"{src.name}-migrate", src.uri, asyncio.get_running_loop(),
                        queue_limit=1, keepalive=self.tuning.keepalive)
            try:
                async with asyncio.timeout(self.tuning.connect_timeout):
                    await asyncio.shield(link.opened)
                if job.cancel_requested:
                    raise Conflict("migration job was cancelled by the client", code=ABORTED)
                params: dict[str, Any] = {}
                if self.bandwidth_mib > 0:
                    params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mib
                call = link.call(functools.partial(
                    calls.migrate, uuid=job.vm_id, dest_uri=dest.migration_uri, params=params,
                    flags=migration_flags(job.request)), "migrate")
                job.status, job.started_at = "running", time.time()
                self.jobs.changed(job)
                poller = self.hosts.spawn(self._poll_progress(job, src))
                t0, ok = time.perf_counter(), False
                try:
                    await call
                    ok = True
                finally:
                    poller.cancel()
                    self.hosts.observe("migrate", time.perf_counter() - t0, ok)
            except TimeoutError:
                raise Unavailable(f"host {src.name} did not answer a new connection within "
                                  f"{self.tuning.connect_timeout:g} s",
                                  code=HOST_DISCONNECTED) from None
            finally:
                link.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure becomes the job's outcome, never an escape
            err = translate(exc)
            if err.code == ABORTED or job.cancel_requested:
                status, error = "cancelled", err.detail
            else:
                status, error = "failed", err.detail
                if err.code == HOST_DISCONNECTED and job.status == "running":
                    # A connection broke (ours to the source, or the source's to the
                    # destination): the call's end is not the migration's. libvirt keeps a
                    # peer-to-peer migration going without its client; ask it how it ends.
                    status = await self._settle(job)
                    if status == "cancelled":
                        error = "operation aborted: migration job cancelled by the client"
                if status == "failed" and job.dest_lost:
                    error = f"lost connection to the destination host during migration: {error}"
                elif status == "completed":
                    error = None
        if status == "completed":
            await _wait(job.completed_event, 1.0)  # final numbers come with the event
        await self._finish(job, status, error)

    async def _finish(self, job: Job, status: MigrationStatus, error: str | None) -> None:
        if job.ending:
            return  # ending already (reconcile_now and the job's own watch can race)
        job.ending = True
        if status == "completed":
            job.take_progress(job.final_stats or {}, final=True)
            job.remaining, job.percent = 0, 100.0
        src = self.hosts.by_id[job.source_host_id]
        dest = self.hosts.by_id[job.request.destination_host_id]
        # The VM is where libvirt says it is: read both hosts before answering the outcome.
        await asyncio.gather(*(self.hosts.resync(h) for h in (src, dest) if h.link is not None),
                             return_exceptions=True)
        job.status, job.error, job.finished_at = status, error, time.time()
        if self.by_vm.get(job.vm_id) is job:
            del self.by_vm[job.vm_id]
        self.jobs.changed(job)  # the feed hears the outcome now, before the VM's event
        self.hosts.recompute(job.vm_id)
        job.done.set()
        if not job.mirror:
            await self.records.finish(job)
        log.info("migration %s of %s: %s%s", job.id, job.vm_id, status,
                 f" ({error})" if error else "")

    async def _poll_progress(self, job: Job, src: HostState) -> None:
        while True:
            await asyncio.sleep(self.tuning.progress_seconds)
            try:
                stats = await self.hosts.run(
                    src, functools.partial(calls.job_stats, uuid=job.vm_id), "job stats",
                    timeout=max(5.0, self.tuning.progress_seconds))
            except BackendError:
                continue  # the job's last moments (55, then 42): keep the last good numbers
            if stats:
                job.take_progress(stats)

    # ------------------------------------------------------------ adopted jobs

    def _adopt(self, uuid: str) -> None:
        """An incoming copy with no job: show the migration libvirt is running as a job."""
        if uuid in self.by_vm or self.hosts.closed:
            return
        # Only what connected hosts say now: a lost host's snapshot is from before it went.
        up = [h for h in self.hosts.order if self.hosts.fresh(h)]
        dests = [h for h in up if (d := h.domains.get(uuid)) is not None and d.migration == "in"]
        sources = [h for h in up
                   if (d := h.domains.get(uuid)) is not None and d.active and d.migration != "in"]
        if not dests or not sources:
            return  # the source is not one of ours: nothing to show it under
        src, dest = sources[0], dests[0]
        job = self._new(uuid, src, MigrationRequest(dest.id), adopted=True)
        job.status, job.started_at = "running", job.created_at
        self.jobs.changed(job)
        log.warning("migration of %s from %s to %s is running with no job here: adopted as %s",
                    uuid, src.name, dest.name, job.id)
        self.hosts.spawn(self._record_adopted(job))

    async def _record_adopted(self, job: Job) -> None:
        """Give an adopted job its record; if the store holds one for the VM, that is the job."""
        try:
            await self.records.create(job)
        except Conflict as conflict:
            other = getattr(conflict, "job_id", None)
            self._forget(job)
            rec = await self.records.get(other) if other else None
            if rec is not None:
                self._mirror(rec)
            return
        except Exception as exc:  # the store is away: the job is watched all the same
            log.warning("migration %s: no record written: %s", job.id, exc)
        await self._watch(job)

    async def reconcile_now(self, vm_id: str) -> None:
        """If the VM's job is adopted and libvirt says it completed, end it now."""
        job = self.by_vm.get(vm_id)
        if job is not None and job.adopted and await self._verdict(job) == "completed":
            await self._finish(job, "completed", None)

    async def _watch(self, job: Job) -> None:
        """An adopted job: reconciled with libvirt until it ends."""
        verdict = await self._settle(job)
        error = None
        if verdict == "failed":
            error = "the migration ended without moving the VM (reconciled with libvirt)"
        elif verdict == "cancelled":
            error = "operation aborted: migration job cancelled by the client"
        await self._finish(job, verdict, error)

    async def _settle(self, job: Job) -> MigrationStatus:
        """Ask libvirt until it tells how the job ended (and meanwhile keep its progress).

        It looks every ``progress_seconds`` and at each event of the domain. Completed is
        final at once (the destination runs its own copy); failed or cancelled must be seen
        twice, a poll apart (the source's job can end a moment before the destination's
        copy is resumed).
        """
        job.adopted = True  # from now on, libvirt's word decides (cancel, reconcile_now)
        last: MigrationStatus | None = None
        while True:
            verdict = await self._verdict(job)
            if job.ending:
                return verdict or "failed"  # ended meanwhile by reconcile_now: not used
            if verdict == "completed" or (verdict is not None and verdict == last):
                return verdict
            last = verdict
            await _wait(job.wake, self.tuning.progress_seconds)
            job.wake.clear()

    async def _verdict(self, job: Job) -> MigrationStatus | None:
        """What libvirt says of the job now: None while it runs or cannot be told.

        A source that runs the guest with no migration job means the migration is over and
        did not move it, whatever the destination (which may be unreachable) would say: a
        guest does not run in two places.
        """
        hosts = self.hosts
        src = hosts.by_id[job.source_host_id]
        dest = hosts.by_id[job.request.destination_host_id]
        over: MigrationStatus = "cancelled" if job.cancel_requested else "failed"
        if hosts.connected(src):
            try:
                stats = await hosts.run(src, functools.partial(calls.job_stats, uuid=job.vm_id),
                                        "job stats", timeout=max(5.0, self.tuning.progress_seconds))
            except Unavailable:
                return None
            except BackendError:
                stats = None  # no job statistics here (the test driver): no migration job
            if calls.is_migrating_out(stats):
                job.take_progress(stats or {})
                if job.status == "initiated":
                    # Its owner died before writing `running`: libvirt's word is that it runs.
                    job.status, job.started_at = "running", job.started_at or time.time()
                    self.jobs.changed(job)
                return None
            try:
                await hosts.refresh(src, job.vm_id)
            except BackendError:
                return None
            on_src = src.domains.get(job.vm_id)
            if on_src is not None and on_src.active and on_src.migration is None:
                return over
        if not hosts.connected(dest):
            return None  # one side cannot be asked: the job stays running
        try:
            await hosts.refresh(dest, job.vm_id)
        except BackendError:
            return None
        on_dest = dest.domains.get(job.vm_id)
        if on_dest is not None and on_dest.migration == "in":
            return None
        if on_dest is not None and on_dest.active:
            return "completed"
        if hosts.connected(src):
            return over  # neither side runs it as migrating: over (the guest stopped)
        return None

    # ------------------------------------------------------------ records (the store)

    def _from_record(self, rec: Any) -> Job:
        seq = next(self._seq)
        job = Job(rec.id, seq, rec.vm_id, rec.source_host_id or "", durable.request_of(rec),
                  rec.created_at)
        durable.apply_record(job, rec)
        return job

    def _mirror(self, rec: Any) -> Job | None:
        """Show a job another replica drives (or drove: the loop adopts it once its lease
        has run out)."""
        if rec.id in self.jobs or rec.source_host_id not in self.hosts.by_id or (
                rec.request.get("destination_host_id") not in self.hosts.by_id):
            return None
        job = self._from_record(rec)
        job.mirror = True
        self.jobs.add(job, job.seq)
        if rec.finished_at is None:
            self.by_vm.setdefault(job.vm_id, job)
            self.hosts.recompute(job.vm_id)
        else:
            job.done.set()
        return job

    async def load(self) -> None:
        """On start, before any host: every record, the unfinished ones as mirrors."""
        try:
            async with asyncio.timeout(10):
                records = await self.records.records()
        except Exception as exc:
            log.warning("job records not loaded: %s", exc)
            return
        for rec in records:
            self._mirror(rec)

    async def records_loop(self) -> None:
        """Write back this replica's jobs, renew their leases, follow and adopt the others'."""
        if not self.records.enabled:
            return
        renewed = 0.0
        while True:
            await asyncio.sleep(durable.FLUSH_SECONDS)
            try:
                await self.records.flush([j for j in self.by_vm.values() if not j.mirror])
                if time.monotonic() - renewed >= durable.LEASE_SECONDS / 3:
                    await self.records.renew()
                    renewed = time.monotonic()
                await self._follow()
            except Exception as exc:  # the store is away for now: try again next round
                log.warning("job records: %s", exc)

    async def _follow(self) -> None:
        unfinished = {rec.id: rec for rec in await self.records.unfinished()}
        now = time.time()
        for rec in unfinished.values():
            job = self.jobs.get(rec.id) if rec.id in self.jobs else None
            if job is None:
                job = self._mirror(rec)
            if job is None or not job.mirror:
                continue
            durable.apply_record(job, rec)
            self.jobs.changed(job)  # the other replica's progress, for the feed
            expired = rec.lease_owner is None or (rec.lease_expires_at or 0) <= now
            if expired and await self.records.take_lease(rec.id):
                job.mirror = False
                log.warning("migration %s: its owner is gone; adopted here", job.id)
                self.hosts.spawn(self._watch(job))
        for job in [j for j in self.by_vm.values() if j.mirror and j.id not in unfinished]:
            final = await self.records.get(job.id)  # it ended on the replica that drove it
            if final is not None:
                durable.apply_record(job, final)
                self.jobs.changed(job)
            if self.by_vm.get(job.vm_id) is job:
                del self.by_vm[job.vm_id]
            with contextlib.suppress(BackendError):
                await self.hosts.refresh(self.hosts.by_id[job.source_host_id], job.vm_id)
            self.hosts.recompute(job.vm_id)
            job.done.set()

    async def release_all(self) -> None:
        """On a clean stop: hand this replica's running jobs over at once."""
        for job in [j for j in self.by_vm.values() if not j.mirror]:
            with contextlib.suppress(Exception):
                await self.records.release(job.id)

    # ------------------------------------------------------------ cancel

    async def cancel(self, migration_id: str) -> Migration:
        job = self.get(migration_id)
        if job.status in FINAL_MIGRATION_STATUSES:
            raise Conflict(f"migration {job.id} already {job.status}", code="migration_finished")
        job.cancel_requested = True
        src = self.hosts.by_id[job.source_host_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.tuning.cancel_timeout
        while not job.done.is_set() and loop.time() < deadline:
            if job.status != "running" or not self.hosts.connected(src):
                # Not begun (the job sees the request before it calls libvirt), or the source
                # is gone (the migration call fails by itself).
                await _wait(job.done, deadline - loop.time())
                break
            try:
                await self.hosts.run(src, functools.partial(calls.abort_job, uuid=job.vm_id),
                                     "abort migration")
                break
            except Conflict:
                # No libvirt job yet (still setting up) or already over: look again shortly.
                await _wait(job.done, min(0.1, deadline - loop.time()))
            except BackendError as err:
                log.warning("migration %s: abortJob on %s failed: %s", job.id, src.name,
                            err.detail)
                break
        await _wait(job.done, deadline - loop.time())
        if job.status == "completed":
            raise Conflict(f"migration {job.id} already completed", code="migration_finished")
        return job.snapshot()

    # ------------------------------------------------------------ hooks from the hosts

    def _host_lost(self, h: HostState) -> None:
        for job in self.by_vm.values():
            if job.request.destination_host_id == h.id:
                job.dest_lost = True

    def _domain_event(self, uuid: str) -> None:
        job = self.by_vm.get(uuid)
        if job is not None and job.adopted:
            job.wake.set()

    def _job_event(self, h: HostState, uuid: str, stats: dict[str, Any]) -> None:
        job = self.by_vm.get(uuid)
        if job is not None and job.source_host_id == h.id:
            job.final_stats = stats
            job.completed_event.set()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()
