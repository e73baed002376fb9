"""What outlives the process: job records, their leases and host ids, through the store.

The store (``cockpit_api/store``) is optional: without one (apps built in code,
the test-driver tests) jobs live in memory and host ids in ``state_file``.

Jobs
    A migration this replica accepts is a record first (``create_job``: the
    store refuses a second unfinished job of a VM from any replica, 409), with
    this replica's *lease* (``LEASE_SECONDS``, renewed every third of it). Its
    status, progress and error are written back within ``FLUSH_SECONDS`` of a
    change, and at once when it ends (which releases the lease). Jobs other
    replicas hold are *mirrored*: shown from their records (refreshed every
    ``FLUSH_SECONDS``), their VM refused for actions and new migrations, and
    cancellable (``abortJob`` on the source is libvirt's, whoever asks). A record
    whose lease has run out (its owner died, or this process restarted) is
    adopted by the first replica to take the lease, within ``LEASE_SECONDS +
    FLUSH_SECONDS``, and reconciled with libvirt (see :mod:`.jobs`); the record
    never decides over libvirt.
Host ids
    ``libvirt.host.<name>`` keys, first writer wins, so every replica names a
    host alike; ids of an existing ``state_file`` are taken over once (it is
    read, never written, when there is a store).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from cockpit_api.backends.base import MigrationRequest, MigrationStatus
from cockpit_api.backends.jobstore import JobConflict, JobRecord
from cockpit_api.backends.jobstore import JobStore as Store
from cockpit_api.backends.libvirt.hostids import HostIdError, _read, load_host_ids, uuid7


class Job(Protocol):
    """What a record is made of and written back to: the fields of a job
    (:class:`~cockpit_api.backends.libvirt.jobs.Job`) this module reads and sets."""

    id: str
    vm_id: str
    source_host_id: str
    request: MigrationRequest
    created_at: float
    status: MigrationStatus
    started_at: float | None
    finished_at: float | None
    error: str | None
    total: int
    processed: int
    remaining: int
    percent: float

log = logging.getLogger("cockpit_api.libvirt")

LEASE_SECONDS = 10.0
FLUSH_SECONDS = 1.0
HOST_KEY = "libvirt.host."


def host_ids(store: Store | None, state_file: str, names: Sequence[str]) -> dict[str, str]:
    """The stable id of every configured host name (blocking: called before serving)."""
    if store is None:
        return load_host_ids(state_file, names)
    try:
        seed = _read(Path(state_file))
    except HostIdError as exc:
        log.warning("%s; host ids come from the store only", exc)
        seed = {}
    now = time.time()
    ids = {name: store.kv_setdefault(HOST_KEY + name, seed.get(name) or uuid7(), now)
           for name in names}
    if len(set(ids.values())) != len(ids):
        raise HostIdError(f"the store gives two host names one id: {ids}")
    return ids


def record_of(job: Job, owner: str) -> JobRecord:
    r = job.request
    return JobRecord(
        id=job.id, vm_id=job.vm_id, owner="api", source_host_id=job.source_host_id,
        request={"destination_host_id": r.destination_host_id, "live": r.live,
                 "persistent": r.persistent, "undefine_source": r.undefine_source,
                 "copy_storage": r.copy_storage},
        status=job.status, created_at=job.created_at, progress=progress_of(job),
        started_at=job.started_at, finished_at=job.finished_at, error=job.error,
        lease_owner=owner, lease_expires_at=time.time() + LEASE_SECONDS)


def progress_of(job: Job) -> dict[str, Any]:
    return {"total": job.total, "processed": job.processed, "remaining": job.remaining,
            "percent": job.percent}


def request_of(rec: JobRecord) -> MigrationRequest:
    r = rec.request
    return MigrationRequest(str(r["destination_host_id"]), bool(r.get("live", True)),
                            bool(r.get("persistent", True)),
                            bool(r.get("undefine_source", True)),
                            r.get("copy_storage", "none"))


def apply_record(job: Job, rec: JobRecord) -> None:
    """A mirrored job takes its record's word (status, progress, times, error)."""
    job.status = rec.status  # type: ignore[assignment]
    job.started_at, job.finished_at, job.error = rec.started_at, rec.finished_at, rec.error
    p = rec.progress or {}
    job.total, job.processed = int(p.get("total", 0)), int(p.get("processed", 0))
    job.remaining, job.percent = int(p.get("remaining", 0)), float(p.get("percent", 0.0))


class Durable:
    """The jobs' side of the store for one replica (a no-op without a store)."""

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self.me = uuid.uuid4().hex  # this replica, for leases
        self._saved: dict[str, tuple[Any, ...]] = {}

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def create(self, job: Job) -> None:
        """The record of a new job (raises the store's JobConflict: 409 vm_migrating)."""
        if self.store is None:
            return
        await self._call(self.store.create_job, record_of(job, self.me))
        self._saved[job.id] = _state(job)

    async def check_free(self, vm_id: str) -> None:
        """What :meth:`create` would refuse, without writing: a dry run's check of the store."""
        if self.store is None:
            return
        for rec in await self.unfinished():
            if rec.vm_id == vm_id:
                raise JobConflict(vm_id, rec.id)

    async def records(self) -> list[JobRecord]:
        if self.store is None:
            return []
        result: list[JobRecord] = await self._call(self.store.list_jobs)
        return result

    async def unfinished(self) -> list[JobRecord]:
        if self.store is None:
            return []
        result: list[JobRecord] = await self._call(self.store.list_jobs, unfinished=True)
        return result

    async def get(self, job_id: str) -> JobRecord | None:
        if self.store is None:
            return None
        result: JobRecord | None = await self._call(self.store.get_job, job_id)
        return result

    async def take_lease(self, job_id: str) -> bool:
        if self.store is None:
            return True
        got: bool = await self._call(self.store.acquire_lease, job_id, self.me, time.time(),
                                     LEASE_SECONDS)
        return got

    async def release(self, job_id: str) -> None:
        if self.store is not None:
            await self._call(self.store.release_lease, job_id, self.me)

    async def renew(self) -> None:
        if self.store is not None:
            await self._call(self.store.renew_leases, self.me, time.time(), LEASE_SECONDS)

    async def flush(self, jobs: Sequence[Job]) -> None:
        """Write back what changed in the jobs this replica drives."""
        if self.store is None:
            return
        for job in jobs:
            state = _state(job)
            if self._saved.get(job.id) == state:
                continue
            await self._call(self.store.update_job, job.id, time.time(), status=job.status,
                             progress=progress_of(job), started_at=job.started_at,
                             error=job.error, source_host_id=job.source_host_id)
            self._saved[job.id] = state

    async def finish(self, job: Job) -> None:
        if self.store is None:
            return
        try:
            # One write: the end and the lease's release together.
            await self._call(self.store.update_job, job.id, time.time(), status=job.status,
                             progress=progress_of(job), started_at=job.started_at,
                             finished_at=job.finished_at, error=job.error, lease_owner=None,
                             lease_expires_at=None)
        except Exception as exc:  # the outcome stands in memory; the next owner reconciles
            log.warning("migration %s: its record was not updated: %s", job.id, exc)
        self._saved.pop(job.id, None)


def _state(job: Job) -> tuple[Any, ...]:
    return (job.status, job.total, job.processed, job.remaining, job.percent, job.started_at,
            job.error)
