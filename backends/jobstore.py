"""What a backend keeps in the server's store: job records, leases, host ids.

The backends import nothing from the server. The libvirt backend needs a few calls of the
store (cockpit_api/store/), so it names them here, as a protocol, and the store implements
it (its ``Store`` protocol has these methods, and its job rows are these records). The
server builds the backend and hands it its store (cockpit_api/world.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cockpit_api.backends.base import Conflict


class JobConflict(Conflict):
    """Another unfinished job already moves this VM (409)."""

    code = "vm_migrating"

    def __init__(self, vm_id: str, job_id: str | None) -> None:
        super().__init__(f"VM {vm_id} already has an unfinished migration job"
                         + (f" ({job_id})" if job_id else ""))
        self.vm_id = vm_id
        self.job_id = job_id


@dataclass(slots=True)
class JobRecord:
    """A migration job as the store keeps it; ``request`` and ``progress`` are JSON objects."""

    id: str
    vm_id: str
    owner: str  # the user who asked
    request: dict[str, Any]
    status: str
    created_at: float
    progress: dict[str, Any] = field(default_factory=dict)
    source_host_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    updated_at: float | None = None
    lease_owner: str | None = None  # the replica driving it
    lease_expires_at: float | None = None


class JobStore(Protocol):
    """The store's calls the libvirt backend makes (blocking: run in a worker thread).

    ``create_job`` raises :class:`JobConflict` (409 ``vm_migrating``) when the VM already
    has an unfinished job.
    """

    display_url: str  # the store's URL with any password masked: safe to log

    def create_job(self, job: JobRecord) -> None: ...
    def update_job(self, job_id: str, now: float, **fields: Any) -> JobRecord | None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, *, unfinished: bool = False) -> list[JobRecord]: ...
    def acquire_lease(self, job_id: str, owner: str, now: float, ttl: float) -> bool: ...
    def renew_leases(self, owner: str, now: float, ttl: float) -> int: ...
    def release_lease(self, job_id: str, owner: str) -> None: ...
    def kv_setdefault(self, key: str, value: str, now: float) -> str: ...
