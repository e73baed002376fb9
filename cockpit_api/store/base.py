"""The store: what must outlive one process, behind one small interface.

Vocabulary
----------
signing key
    A secret that signs access tokens (HS256), named by its ``kid`` (the JWT
    header says which key signed a token). One key is *current* (signs new
    tokens); older keys stay until ``retire_after``, so tokens they signed keep
    verifying until they expire.
session
    What one login starts: a *family* of refresh tokens (each refresh rotates
    the token; only the newest one is valid) and a public session id ``sid``
    that access tokens carry. A refresh token is ``<family>.<secret>``; the store
    keeps only the SHA-256 of the current one, so a presented token of a live
    family that is not the current one is *reuse* (someone kept a copy): the
    session is revoked. Spent tokens are never stored, so the table has one row
    per session, however often it refreshes; only the digest of the token the last
    rotation replaced is kept, for a short *grace*: a client whose refresh answer was
    lost may retry it once (it gets a new pair) without revoking its session.
revocation
    A session's ``revoked_at``. Access tokens whose ``sid`` is revoked are
    refused; replicas learn of revocations by polling :meth:`Store.revocations_since`.
throttle counter
    A fixed-window counter per key (e.g. ``user|address``, ``address``):
    :meth:`Store.count_attempts` increments atomically *before* a password is
    checked, so concurrent attempts cannot overtake the limit.
job
    A migration job's durable record (request, owner, status, progress,
    timestamps, error). At most one *unfinished* job (``finished_at`` unset)
    per VM: :meth:`Store.create_job` raises :class:`JobConflict` otherwise, on
    every replica at once. A job is driven by the replica that holds its
    *lease* (``lease_owner`` until ``lease_expires_at``); when that owner dies
    its lease expires and another replica adopts the job
    (:meth:`Store.adoptable_jobs`, then :meth:`Store.acquire_lease`).
key/value
    Small named strings (e.g. libvirt host ids): :meth:`Store.kv_setdefault`
    is first-writer-wins across replicas.
audit entry
    One write request: who, when, what (operationId, method, path), from which
    address, the answer's status and the request id; whether it was a dry run.
    Rejects of unauthenticated requests are not a row each (anyone can send them):
    one row per window, method, operation and status counts them (``count``).
    ``keep`` caps the rows.

How a backend uses it (the libvirt backend: jobs, adoption, host ids). ``create_app``
opens the store before it builds the backend and keeps it as ``Services.store``
(also ``AuthService.store``). A replica names itself once (e.g. ``uuid4().hex``)
and then: ``create_job`` when it accepts a migration (``JobConflict`` is the
409, from any replica), with ``lease_owner`` set to itself; ``update_job`` as
progress comes (status, progress, started_at, error; a terminal status frees
the VM); ``renew_leases(me, now, ttl)`` every ttl/3 seconds; on start and then
periodically ``adoptable_jobs(now)`` and, for each, ``acquire_lease`` (only one
replica wins it) before reconciling the record with what libvirt says. Host ids:
``kv_setdefault(f"libvirt.host.{name}", uuid7(), now)`` gives every replica the
same id for a name; ``kv_items("libvirt.host.")`` lists them.

Every method is blocking (call it from a worker thread, never on the event
loop's hot path). Times are Unix seconds passed in by the caller, so tests
drive them. When the database cannot be reached, methods raise
:class:`StoreUnavailable` (503).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cockpit_api.backends.base import Unavailable

# The job record is the backends' word (they import nothing from the server); the store
# keeps it and implements their JobStore (cockpit_api/backends/jobstore.py).
from cockpit_api.backends.jobstore import (
    JobConflict as JobConflict,  # re-exported: the store raises it
)
from cockpit_api.backends.jobstore import JobRecord

# When a signing key was last revoked (key/value): servers poll it and drop the key at once.
KEYS_CHANGED = "jwt.keys_revoked_at"

RotateOutcome = Literal["rotated", "retried", "reused", "invalid"]


class StoreError(Exception):
    """The store cannot be opened or migrated; the message is one line, without secrets."""


class StoreUnavailable(Unavailable):
    """The database went away after start; writes that need it answer 503 (with Retry-After)."""

    def __init__(self, detail: str = "the state store is unavailable; retry shortly") -> None:
        super().__init__(detail, code="store_unavailable", retry_after=5)


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    secret: str
    created_at: float
    retire_after: float | None = None  # None: current or still signing


@dataclass(frozen=True, slots=True)
class Session:
    family: str
    sid: str
    username: str
    created_at: float
    expires_at: float
    generation: int = 0
    revoked_at: float | None = None
    revoked_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: RotateOutcome
    session: Session | None = None  # the session after the rotation (or the revoked one)


@dataclass(frozen=True, slots=True)
class Counter:
    key: str
    count: int  # attempts in the window, this one included
    window_start: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    operation: str
    method: str
    path: str
    status: int
    actor: str | None = None
    role: str | None = None
    address: str | None = None
    request_id: str | None = None
    dry_run: bool = False  # the request asked for dry_run=true: checked, nothing changed
    id: int | None = None  # assigned by the store, increasing
    count: int = 1  # requests the entry stands for (see Store.audit_count)


class Store(Protocol):
    """What outlives a process. Implemented once over SQLAlchemy Core (SQLite, PostgreSQL)."""

    kind: str  # "sqlite" or "postgresql"
    display_url: str  # the URL with any password masked: safe to log

    def ping(self) -> None: ...
    def close(self) -> None: ...

    # ---- signing keys
    def signing_keys(self) -> list[SigningKey]:
        """Every key that may still verify a token, current first."""
        ...

    def current_signing_key(self, now: float) -> SigningKey:
        """The key that signs new tokens; generated once, first writer wins across replicas."""
        ...

    def rotate_signing_key(self, now: float, retire_after: float) -> SigningKey:
        """Make a new current key; the old one verifies until ``retire_after``."""
        ...

    def revoke_signing_key(self, kid: str, now: float) -> bool:
        """Delete the key now (a new current key first, if it was current), and note
        when in the key/value ``jwt.keys_revoked_at`` that servers poll; False: no such key."""
        ...

    # ---- sessions and refresh tokens
    def create_session(self, session: Session, digest: str) -> None: ...

    def rotate_refresh(self, family: str, digest: str, new_digest: str, now: float,
                       expires_at: float, grace: float = 0.0) -> Rotation:
        """Atomically swap the current token of a live family; anything else is reuse or invalid.

        ``rotated``: ``digest`` was the family's current token; ``new_digest`` is now.
        ``retried``: ``digest`` is the token the last rotation replaced, at most ``grace``
        seconds ago, and that grace was not used yet: a client retrying a refresh whose
        answer it lost. ``new_digest`` is now current (the successor it missed is spent),
        once. ``reused``: the family is live but ``digest`` is not its current token; it is
        revoked here. ``invalid``: no such family, or it expired or was revoked.
        """
        ...

    def revoke_session(self, family: str, now: float, reason: str) -> Session | None: ...

    def revocations_since(self, since: float) -> list[tuple[str, float]]:
        """``(sid, revoked_at)`` of sessions revoked at or after ``since``."""
        ...

    def prune_sessions(self, now: float, keep_revoked: float) -> int:
        """Delete sessions expired before ``now`` or revoked more than ``keep_revoked`` s ago."""
        ...

    # ---- login throttling
    def count_attempts(self, keys: Sequence[str], now: float, window: float) -> list[Counter]:
        """Add one attempt to each key's window (a new window once the old one is over)."""
        ...

    def forgive(self, clear: Sequence[str], decrement: Sequence[str]) -> None:
        """After a good password: drop ``clear`` counters, take one back from ``decrement``."""
        ...

    def reset_throttling(self, keep_prefix: str | None = None) -> None:
        """Drop every counter, but those whose key starts with ``keep_prefix``."""
        ...

    def prune_throttling(self, before: float) -> int: ...

    # ---- migration jobs (and their leases)
    def create_job(self, job: JobRecord) -> None:
        """Insert an unfinished job; :class:`JobConflict` if its VM already has one."""
        ...

    def update_job(self, job_id: str, now: float, **fields: Any) -> JobRecord | None:
        """Change ``status``, ``progress``, ``started_at``, ``finished_at``, ``error``...

        A terminal status (completed, failed, cancelled) without ``finished_at`` sets it
        to ``now``, which frees the VM for its next job.
        """
        ...

    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, *, unfinished: bool = False) -> list[JobRecord]: ...

    def acquire_lease(self, job_id: str, owner: str, now: float, ttl: float) -> bool:
        """Take (or renew) the job's lease if it is free, expired or already ``owner``'s."""
        ...

    def renew_leases(self, owner: str, now: float, ttl: float) -> int:
        """Extend every unfinished job lease ``owner`` holds; how many."""
        ...

    def release_lease(self, job_id: str, owner: str) -> None: ...

    def adoptable_jobs(self, now: float) -> list[JobRecord]:
        """Unfinished jobs whose lease is free or expired: their owner is gone."""
        ...

    def prune_jobs(self, finished_before: float) -> int: ...

    # ---- key/value
    def kv_get(self, key: str) -> str | None: ...
    def kv_set(self, key: str, value: str, now: float) -> None: ...

    def kv_setdefault(self, key: str, value: str, now: float) -> str:
        """Store ``value`` unless ``key`` exists; the value that is stored (first writer wins)."""
        ...

    def kv_items(self, prefix: str) -> dict[str, str]: ...

    # ---- audit log
    def audit_append(self, entry: AuditEntry, keep: int | None = None) -> int:
        """Add one entry; with ``keep``, only the newest ``keep`` entries stay."""
        ...

    def audit_count(self, entry: AuditEntry, window: float, keep: int | None = None) -> int:
        """Count ``entry`` in the one row of its (window, method, operation, status).

        For rejects of unauthenticated requests: anyone can send them, so they must not
        grow the log by a row each. The row's ``at`` is the window's start, its other
        fields the first such request's; ``count`` says how many. Its id.
        """
        ...

    def probe_write(self, now: float) -> None:
        """Commit a tiny write: :class:`StoreUnavailable` if the store cannot write (a full
        disk answers reads but not this)."""
        ...

    def prune_audit(self, before: float) -> int: ...

    def audit_page(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        """Newest first; ``before`` is an entry id (exclusive) to page backwards."""
        ...
