"""The store's migration jobs, their leases, and the key/value rows (host ids), over SQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from cockpit_api.store.base import (
    JobConflict,
    JobRecord,
)
from cockpit_api.store.schema import (
    jobs,
    kv,
)
from cockpit_api.store.sql_engine import TERMINAL, SqlEngine, unavailable


class SqlJobs(SqlEngine):
    """Jobs, leases and key/value rows (a part of :class:`SqlStore`)."""

    # --------------------------------------------------------------------- jobs

    @staticmethod
    def _job(row: Any) -> JobRecord:
        return JobRecord(
            id=row.id, vm_id=row.vm_id, owner=row.owner, request=dict(row.request),
            status=row.status, created_at=row.created_at, progress=dict(row.progress),
            source_host_id=row.source_host_id, started_at=row.started_at,
            finished_at=row.finished_at, error=row.error, updated_at=row.updated_at,
            lease_owner=row.lease_owner, lease_expires_at=row.lease_expires_at)

    @unavailable
    def create_job(self, job: JobRecord) -> None:
        j = job
        values = dict(
            id=j.id, vm_id=j.vm_id, owner=j.owner, source_host_id=j.source_host_id,
            request=j.request, status=j.status, progress=j.progress, created_at=j.created_at,
            started_at=j.started_at, finished_at=j.finished_at, error=j.error,
            updated_at=j.updated_at if j.updated_at is not None else j.created_at,
            lease_owner=j.lease_owner, lease_expires_at=j.lease_expires_at)
        try:
            with self._tx() as conn:
                conn.execute(jobs.insert().values(**values))
        except sa_exc.IntegrityError:
            with self._tx() as conn:
                other = conn.execute(sa.select(jobs.c.id).where(
                    jobs.c.vm_id == j.vm_id, jobs.c.finished_at.is_(None))).scalar()
                if other is None and conn.execute(
                        sa.select(jobs.c.id).where(jobs.c.id == j.id)).scalar() is None:
                    raise  # neither rule: a real integrity problem
            raise JobConflict(j.vm_id, other) from None

    _JOB_FIELDS = frozenset({"status", "progress", "started_at", "finished_at", "error",
                             "source_host_id", "lease_owner", "lease_expires_at", "request"})

    @unavailable
    def update_job(self, job_id: str, now: float, **fields: Any) -> JobRecord | None:
        unknown = set(fields) - self._JOB_FIELDS
        if unknown:
            raise TypeError(f"update_job: unknown fields {sorted(unknown)}")
        if fields.get("status") in TERMINAL and fields.get("finished_at") is None:
            fields["finished_at"] = now
        with self._tx() as conn:
            row = conn.execute(jobs.update().where(jobs.c.id == job_id)
                               .values(updated_at=now, **fields).returning(*jobs.c)).first()
        return None if row is None else self._job(row)

    @unavailable
    def get_job(self, job_id: str) -> JobRecord | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else self._job(row)

    @unavailable
    def list_jobs(self, *, unfinished: bool = False) -> list[JobRecord]:
        q = sa.select(jobs).order_by(jobs.c.created_at, jobs.c.id)
        if unfinished:
            q = q.where(jobs.c.finished_at.is_(None))
        with self._tx() as conn:
            return [self._job(r) for r in conn.execute(q).all()]

    @unavailable
    def acquire_lease(self, job_id: str, owner: str, now: float, ttl: float) -> bool:
        c = jobs.c
        with self._tx() as conn:
            got = conn.execute(jobs.update().where(
                c.id == job_id, c.finished_at.is_(None),
                sa.or_(c.lease_owner.is_(None), c.lease_owner == owner,
                       c.lease_expires_at <= now),
            ).values(lease_owner=owner, lease_expires_at=now + ttl, updated_at=now))
        return got.rowcount == 1

    @unavailable
    def renew_leases(self, owner: str, now: float, ttl: float) -> int:
        c = jobs.c
        with self._tx() as conn:
            return conn.execute(jobs.update().where(
                c.lease_owner == owner, c.finished_at.is_(None),
            ).values(lease_expires_at=now + ttl)).rowcount

    @unavailable
    def release_lease(self, job_id: str, owner: str) -> None:
        c = jobs.c
        with self._tx() as conn:
            conn.execute(jobs.update().where(c.id == job_id, c.lease_owner == owner)
                         .values(lease_owner=None, lease_expires_at=None))

    @unavailable
    def adoptable_jobs(self, now: float) -> list[JobRecord]:
        c = jobs.c
        q = sa.select(jobs).where(
            c.finished_at.is_(None),
            sa.or_(c.lease_owner.is_(None), c.lease_expires_at <= now),
        ).order_by(c.created_at)
        with self._tx() as conn:
            return [self._job(r) for r in conn.execute(q).all()]

    @unavailable
    def prune_jobs(self, finished_before: float) -> int:
        with self._tx() as conn:
            return conn.execute(jobs.delete().where(
                jobs.c.finished_at < finished_before)).rowcount

    # ---------------------------------------------------------------- key/value

    @unavailable
    def kv_get(self, key: str) -> str | None:
        with self._tx() as conn:
            value: str | None = conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar()
        return value

    @unavailable
    def kv_set(self, key: str, value: str, now: float) -> None:
        stmt = self._upsert(kv).values(key=key, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=[kv.c.key],
                                          set_={"value": value, "updated_at": now})
        with self._tx() as conn:
            conn.execute(stmt)

    @unavailable
    def kv_setdefault(self, key: str, value: str, now: float) -> str:
        stmt = self._upsert(kv).values(key=key, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_nothing(index_elements=[kv.c.key])
        with self._tx() as conn:
            conn.execute(stmt)
            stored: str = conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar_one()
        return stored

    @unavailable
    def kv_items(self, prefix: str) -> dict[str, str]:
        # A range, not LIKE: a prefix holding % or _ matches only itself.
        q = sa.select(kv.c.key, kv.c.value).where(kv.c.key >= prefix,
                                                  kv.c.key < prefix + "\U0010ffff")
        with self._tx() as conn:
            return {r.key: r.value for r in conn.execute(q).all()}
