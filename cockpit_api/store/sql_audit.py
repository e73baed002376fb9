"""The store's audit rows, over SQL: appended, counted, trimmed, paged."""

from __future__ import annotations

import math
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cockpit_api.store.base import (
    AuditEntry,
)
from cockpit_api.store.schema import (
    audit,
    kv,
)
from cockpit_api.store.sql_engine import SqlEngine, unavailable


class SqlAudit(SqlEngine):
    """The audit rows (a part of :class:`SqlStore`)."""

    # -------------------------------------------------------------------- audit

    @staticmethod
    def _audit_values(e: AuditEntry) -> dict[str, Any]:
        return dict(at=e.at, actor=e.actor, role=e.role, address=e.address,
                    operation=e.operation, method=e.method, path=e.path[:2000],
                    status=e.status, request_id=e.request_id, dry_run=e.dry_run, count=1)

    @staticmethod
    def _trim_audit(conn: Connection, newest: int, keep: int | None) -> None:
        # Ids increase (PostgreSQL's may skip some): this keeps at most ``keep`` rows,
        # one indexed range delete per append (nothing to delete: a single seek).
        if keep is not None:
            conn.execute(audit.delete().where(audit.c.id <= newest - keep))

    @unavailable
    def audit_append(self, entry: AuditEntry, keep: int | None = None) -> int:
        with self._tx() as conn:
            new_id: int = conn.execute(audit.insert().values(**self._audit_values(entry))
                                       .returning(audit.c.id)).scalar_one()
            self._trim_audit(conn, new_id, keep)
        return new_id

    @unavailable
    def audit_count(self, entry: AuditEntry, window: float, keep: int | None = None) -> int:
        a = audit.c
        start = math.floor(entry.at / window) * window
        bucket = f"{start:.0f}|{entry.method}|{entry.operation}|{entry.status}"
        stmt = self._upsert(audit).values(**dict(self._audit_values(entry), at=start,
                                                 bucket=bucket))
        stmt = stmt.on_conflict_do_update(index_elements=[a.bucket],
                                          set_={"count": a.count + 1})
        with self._tx() as conn:
            row_id: int = conn.execute(stmt.returning(a.id)).scalar_one()
            self._trim_audit(conn, row_id, keep)
        return row_id

    @unavailable
    def probe_write(self, now: float) -> None:
        # A real write, committed, and larger than an audit row (16 KiB: several pages, as
        # many log frames): where it succeeds, an entry fits. On a full disk it fails
        # where ping (a read) still succeeds.
        value = f"{now:.3f} " + secrets.token_hex(8192)
        stmt = self._upsert(kv).values(key="store.write_probe", value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=[kv.c.key],
                                          set_={"value": value, "updated_at": now})
        with self._tx() as conn:
            conn.execute(stmt)

    @unavailable
    def prune_audit(self, before: float) -> int:
        with self._tx() as conn:
            return conn.execute(audit.delete().where(audit.c.at < before)).rowcount

    @unavailable
    def audit_page(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        q = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
        if before is not None:
            q = q.where(audit.c.id < before)
        with self._tx() as conn:
            rows = conn.execute(q).all()
        return [AuditEntry(at=r.at, operation=r.operation, method=r.method, path=r.path,
                           status=r.status, actor=r.actor, role=r.role, address=r.address,
                           request_id=r.request_id, dry_run=bool(r.dry_run), id=r.id,
                           count=r._mapping["count"]) for r in rows]  # (.count: tuple's)
