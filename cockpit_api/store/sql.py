"""The store over SQLAlchemy 2 Core: one implementation, two engines (SQLite, PostgreSQL).

What differs between the engines stays in this file: the upsert dialect, SQLite's
``BEGIN IMMEDIATE`` (a write transaction takes the lock up front, so two writers
never deadlock upgrading a read lock) and a process-wide lock around SQLite
transactions (one writer at a time anyway; it also makes ``sqlite://``, one
shared in-memory connection, safe from worker threads), and PostgreSQL's
advisory lock around schema migrations (replicas starting together).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from cockpit_api.store.base import (
    KEYS_CHANGED,
    AuditEntry,
    Counter,
    JobConflict,
    JobRecord,
    Rotation,
    Session,
    SigningKey,
    StoreError,
    StoreUnavailable,
)
from cockpit_api.store.migrations import HEAD
from cockpit_api.store.schema import (
    audit,
    jobs,
    kv,
    login_throttle,
    metadata,
    sessions,
    signing_keys,
)
from cockpit_api.store.statedir import private_file

log = logging.getLogger("cockpit_api.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
_CURRENT_KID = "jwt.current_kid"
_MIGRATION_LOCK = 0x636F636B  # "cock": the advisory lock id replicas migrate under

P = ParamSpec("P")
R = TypeVar("R")


def display_url(url: str) -> str:
    """The URL as logs may show it: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<unparsable store URL>"


def _one_line(exc: BaseException, secret: str | None = None) -> str:
    """The driver's first line, with the URL's password masked should a driver echo it."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    line = text[0] if text else type(orig).__name__
    return line.replace(secret, "***") if secret else line


def _secret(args: Any) -> str | None:
    store = args[0] if args else None
    return getattr(store, "_password", None)


def _unavailable(fn: Callable[P, R]) -> Callable[P, R]:
    """Database connection failures become :class:`StoreUnavailable` (503); each call is
    timed for ``SqlStore.observer`` (the app's metrics), by method name."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        observer = getattr(args[0], "observer", None) if args else None
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            log.error("store unavailable: %s", _one_line(exc, _secret(args)))
            raise StoreUnavailable() from None
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated:
                log.error("store connection lost: %s", _one_line(exc, _secret(args)))
                raise StoreUnavailable() from None
            raise
        finally:
            if observer is not None:
                observer(name, time.perf_counter() - t0)

    return wrapper


class SqlStore:
    """:class:`cockpit_api.store.base.Store` on SQLite or PostgreSQL."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.display_url = display_url(url)
        # Called with (method name, seconds) after every call: the app's metrics.
        self.observer: Callable[[str, float], None] | None = None
        try:
            parsed = make_url(url)
        except sa_exc.ArgumentError:
            raise StoreError(f"the store URL {self.display_url} is not a database URL "
                             "(sqlite:///PATH or postgresql://USER@HOST/DB)") from None
        self._password = parsed.password or None
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            self.kind = "sqlite"
            if not create and parsed.database not in (None, "", ":memory:") and \
                    not Path(parsed.database).is_file():
                raise StoreError(f"there is no store at {parsed.database}: is the state "
                                 "directory right? (`serve` makes the store)")
            try:
                self.engine = self._sqlite_engine(parsed)
            except OSError as exc:
                raise StoreError(f"the store {self.display_url} cannot be opened: "
                                 f"{exc.strerror}: {exc.filename}") from None
            self._lock: threading.Lock | None = threading.Lock()
        elif backend == "postgresql":
            self.kind = "postgresql"
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            connect_args = {"connect_timeout": 5}
            self.engine = sa.create_engine(parsed, pool_pre_ping=True, pool_size=8,
                                           max_overflow=8, pool_timeout=10,
                                           connect_args=connect_args)
            self._lock = None
        else:
            raise StoreError(f"the store URL {self.display_url} is neither sqlite:// nor "
                             "postgresql://")
        try:
            if not create and self._current_revision() is None:
                self.engine.dispose()
                raise StoreError(f"the database {self.display_url} holds no store (no "
                                 "schema): is the URL right? (`serve` makes the store)")
            self._migrate()
        except (sa_exc.DBAPIError, OSError) as exc:
            self.engine.dispose()
            raise StoreError(f"the store {self.display_url} cannot be opened: "
                             f"{_one_line(exc, self._password)}") from None

    @staticmethod
    def _sqlite_engine(parsed: sa.URL) -> Engine:
        memory = parsed.database in (None, "", ":memory:")
        if not memory and parsed.database:
            Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # 0600 before SQLite opens it (it gives -wal and -shm the file's mode): the
            # signing keys are in it. An older, wider file is narrowed.
            private_file(Path(parsed.database))
        engine = sa.create_engine(
            parsed, connect_args={"check_same_thread": False, "timeout": 30},
            **({"poolclass": StaticPool, "query_cache_size": 0} if memory else {}))

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, say when transactions begin (see "begin").
            dbapi.isolation_level = None
            cur = dbapi.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        lock = self._lock or contextlib.nullcontext()
        with lock, self.engine.begin() as conn:
            yield conn

    def _current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            revision: str | None = conn.execute(
                sa.text("SELECT version_num FROM alembic_version")).scalar()
            conn.rollback()
        return revision

    def _migrate(self) -> None:
        # The usual start is at head: checked with one query, without importing Alembic
        # (a third of a second). HEAD is asserted against the revisions by the tests.
        current = self._current_revision()
        if current == HEAD:
            return
        # Alembic narrates every step at INFO, its import included (seven "setup plugin"
        # lines): quiet before importing it; one line of ours below says what changed.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic import command
        from alembic.config import Config

        with self.engine.begin() as conn:
            if self.kind == "postgresql":
                # Replicas starting together migrate one after the other.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("store %s: schema upgraded %s -> %s", self.display_url, current, HEAD)

    def _upsert(self, table: sa.Table) -> Any:
        # Imported here: the embedded default never loads the PostgreSQL dialect.
        if self.kind == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    @_unavailable
    def ping(self) -> None:
        # Through _tx, like every call: sqlite:// is one connection shared by threads.
        with self._tx() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()

    def drop_everything(self) -> None:
        """Tests only: an empty schema at head again."""
        with self._tx() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())

    # ------------------------------------------------------------- signing keys

    @_unavailable
    def signing_keys(self) -> list[SigningKey]:
        with self._tx() as conn:
            current = conn.execute(sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar()
            rows = conn.execute(sa.select(signing_keys).order_by(
                signing_keys.c.created_at.desc())).all()
        keys = [SigningKey(r.kid, r.secret, r.created_at, r.retire_after) for r in rows]
        keys.sort(key=lambda k: k.kid != current)
        return keys

    @_unavailable
    def current_signing_key(self, now: float) -> SigningKey:
        with self._tx() as conn:
            kid = conn.execute(sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar()
            if kid is None:
                kid = self._new_key(conn, now, replace=False)
            row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == kid)).one()
        return SigningKey(row.kid, row.secret, row.created_at, row.retire_after)

    def _new_key(self, conn: Connection, now: float, *, replace: bool) -> str:
        kid = secrets.token_hex(8)
        conn.execute(signing_keys.insert().values(
            kid=kid, secret=secrets.token_urlsafe(48), created_at=now))
        stmt = self._upsert(kv).values(key=_CURRENT_KID, value=kid, updated_at=now)
        if replace:
            stmt = stmt.on_conflict_do_update(index_elements=[kv.c.key],
                                              set_={"value": kid, "updated_at": now})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[kv.c.key])
        conn.execute(stmt)
        winner: str = conn.execute(
            sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar_one()
        if winner != kid:  # another replica made the first key meanwhile
            conn.execute(signing_keys.delete().where(signing_keys.c.kid == kid))
        return winner

    @_unavailable
    def rotate_signing_key(self, now: float, retire_after: float) -> SigningKey:
        with self._tx() as conn:
            conn.execute(signing_keys.update().where(signing_keys.c.retire_after.is_(None))
                         .values(retire_after=retire_after))
            kid = self._new_key(conn, now, replace=True)
            conn.execute(signing_keys.delete().where(signing_keys.c.retire_after < now))
            row = conn.execute(sa.select(signing_keys).where(signing_keys.c.kid == kid)).one()
        return SigningKey(row.kid, row.secret, row.created_at, row.retire_after)

    @_unavailable
    def revoke_signing_key(self, kid: str, now: float) -> bool:
        with self._tx() as conn:
            if conn.execute(sa.select(signing_keys.c.kid)
                            .where(signing_keys.c.kid == kid)).first() is None:
                return False
            current = conn.execute(sa.select(kv.c.value).where(kv.c.key == _CURRENT_KID)).scalar()
            if current == kid:
                self._new_key(conn, now, replace=True)
            conn.execute(signing_keys.delete().where(signing_keys.c.kid == kid))
            stmt = self._upsert(kv).values(key=KEYS_CHANGED, value=f"{now:.6f}", updated_at=now)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=[kv.c.key], set_={"value": f"{now:.6f}", "updated_at": now}))
        return True

    # ----------------------------------------------------------------- sessions

    @staticmethod
    def _session(row: Any) -> Session:
        return Session(row.family, row.sid, row.username, row.created_at, row.expires_at,
                       row.generation, row.revoked_at, row.revoked_reason)

    @_unavailable
    def create_session(self, session: Session, digest: str) -> None:
        s = session
        with self._tx() as conn:
            conn.execute(sessions.insert().values(
                family=s.family, sid=s.sid, username=s.username, created_at=s.created_at,
                expires_at=s.expires_at, current_digest=digest, generation=0))

    @_unavailable
    def rotate_refresh(self, family: str, digest: str, new_digest: str, now: float,
                       expires_at: float, grace: float = 0.0) -> Rotation:
        c = sessions.c
        live = (c.family == family, c.revoked_at.is_(None), c.expires_at > now)
        with self._tx() as conn:
            # One conditional UPDATE: of two concurrent refreshes with one token,
            # exactly one matches; the other then sees reuse (or, in the grace, a retry).
            row = conn.execute(
                sessions.update()
                .where(*live, c.current_digest == digest)
                .values(current_digest=new_digest, generation=c.generation + 1,
                        expires_at=expires_at, previous_digest=digest, rotated_at=now)
                .returning(*sessions.c)).first()
            if row is not None:
                return Rotation("rotated", self._session(row))
            if grace > 0:
                # The token the last rotation replaced, again and soon: the client never got
                # that answer (a crash, a lost connection) and retries. Once: the grace is
                # used up (previous_digest cleared), and the successor it missed is spent.
                row = conn.execute(
                    sessions.update()
                    .where(*live, c.previous_digest == digest, c.rotated_at >= now - grace)
                    .values(current_digest=new_digest, generation=c.generation + 1,
                            expires_at=expires_at, previous_digest=None, rotated_at=now)
                    .returning(*sessions.c)).first()
                if row is not None:
                    return Rotation("retried", self._session(row))
            row = conn.execute(sa.select(sessions).where(c.family == family)).first()
            if row is None or row.revoked_at is not None or row.expires_at <= now:
                return Rotation("invalid", None if row is None else self._session(row))
            row = conn.execute(
                sessions.update().where(c.family == family, c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason="reuse").returning(*sessions.c)).first()
        return Rotation("reused", None if row is None else self._session(row))

    @_unavailable
    def revoke_session(self, family: str, now: float, reason: str) -> Session | None:
        c = sessions.c
        with self._tx() as conn:
            row = conn.execute(
                sessions.update().where(c.family == family, c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason).returning(*sessions.c)).first()
        return None if row is None else self._session(row)

    @_unavailable
    def get_session(self, family: str) -> Session | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(sessions).where(sessions.c.family == family)).first()
        return None if row is None else self._session(row)

    @_unavailable
    def revocations_since(self, since: float) -> list[tuple[str, float]]:
        c = sessions.c
        with self._tx() as conn:
            rows = conn.execute(sa.select(c.sid, c.revoked_at).where(c.revoked_at >= since)).all()
        return [(r.sid, r.revoked_at) for r in rows]

    @_unavailable
    def prune_sessions(self, now: float, keep_revoked: float) -> int:
        c = sessions.c
        with self._tx() as conn:
            gone = conn.execute(sessions.delete().where(
                sa.or_(sa.and_(c.revoked_at.is_(None), c.expires_at <= now),
                       c.revoked_at < now - keep_revoked,
                       c.expires_at <= now - keep_revoked)))
        return gone.rowcount

    # --------------------------------------------------------------- throttling

    @_unavailable
    def count_attempts(self, keys: Sequence[str], now: float, window: float) -> list[Counter]:
        t = login_throttle.c
        out: list[Counter] = []
        with self._tx() as conn:
            for key in keys:
                stale = t.window_start <= now - window
                stmt = self._upsert(login_throttle).values(key=key, window_start=now, count=1)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[t.key],
                    set_={"count": sa.case((stale, 1), else_=t.count + 1),
                          "window_start": sa.case((stale, now), else_=t.window_start)},
                ).returning(t.count, t.window_start)
                count, start = conn.execute(stmt).one()  # (a Row's .count is tuple.count)
                out.append(Counter(key, int(count), float(start)))
        return out

    @_unavailable
    def forgive(self, clear: Sequence[str], decrement: Sequence[str]) -> None:
        t = login_throttle.c
        with self._tx() as conn:
            if clear:
                conn.execute(login_throttle.delete().where(t.key.in_(list(clear))))
            if decrement:
                conn.execute(login_throttle.update()
                             .where(t.key.in_(list(decrement)), t.count > 0)
                             .values(count=t.count - 1))

    @_unavailable
    def reset_throttling(self, keep_prefix: str | None = None) -> None:
        stmt = login_throttle.delete()
        if keep_prefix:
            stmt = stmt.where(~login_throttle.c.key.startswith(keep_prefix, autoescape=True))
        with self._tx() as conn:
            conn.execute(stmt)

    @_unavailable
    def prune_throttling(self, before: float) -> int:
        with self._tx() as conn:
            return conn.execute(login_throttle.delete().where(
                login_throttle.c.window_start < before)).rowcount

    # --------------------------------------------------------------------- jobs

    @staticmethod
    def _job(row: Any) -> JobRecord:
        return JobRecord(
            id=row.id, vm_id=row.vm_id, owner=row.owner, request=dict(row.request),
            status=row.status, created_at=row.created_at, progress=dict(row.progress),
            source_host_id=row.source_host_id, started_at=row.started_at,
            finished_at=row.finished_at, error=row.error, updated_at=row.updated_at,
            lease_owner=row.lease_owner, lease_expires_at=row.lease_expires_at)

    @_unavailable
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

    @_unavailable
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

    @_unavailable
    def get_job(self, job_id: str) -> JobRecord | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else self._job(row)

    @_unavailable
    def list_jobs(self, *, unfinished: bool = False) -> list[JobRecord]:
        q = sa.select(jobs).order_by(jobs.c.created_at, jobs.c.id)
        if unfinished:
            q = q.where(jobs.c.finished_at.is_(None))
        with self._tx() as conn:
            return [self._job(r) for r in conn.execute(q).all()]

    @_unavailable
    def acquire_lease(self, job_id: str, owner: str, now: float, ttl: float) -> bool:
        c = jobs.c
        with self._tx() as conn:
            got = conn.execute(jobs.update().where(
                c.id == job_id, c.finished_at.is_(None),
                sa.or_(c.lease_owner.is_(None), c.lease_owner == owner,
                       c.lease_expires_at <= now),
            ).values(lease_owner=owner, lease_expires_at=now + ttl, updated_at=now))
        return got.rowcount == 1

    @_unavailable
    def renew_leases(self, owner: str, now: float, ttl: float) -> int:
        c = jobs.c
        with self._tx() as conn:
            return conn.execute(jobs.update().where(
                c.lease_owner == owner, c.finished_at.is_(None),
            ).values(lease_expires_at=now + ttl)).rowcount

    @_unavailable
    def release_lease(self, job_id: str, owner: str) -> None:
        c = jobs.c
        with self._tx() as conn:
            conn.execute(jobs.update().where(c.id == job_id, c.lease_owner == owner)
                         .values(lease_owner=None, lease_expires_at=None))

    @_unavailable
    def adoptable_jobs(self, now: float) -> list[JobRecord]:
        c = jobs.c
        q = sa.select(jobs).where(
            c.finished_at.is_(None),
            sa.or_(c.lease_owner.is_(None), c.lease_expires_at <= now),
        ).order_by(c.created_at)
        with self._tx() as conn:
            return [self._job(r) for r in conn.execute(q).all()]

    @_unavailable
    def prune_jobs(self, finished_before: float) -> int:
        with self._tx() as conn:
            return conn.execute(jobs.delete().where(
                jobs.c.finished_at < finished_before)).rowcount

    # ---------------------------------------------------------------- key/value

    @_unavailable
    def kv_get(self, key: str) -> str | None:
        with self._tx() as conn:
            value: str | None = conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar()
        return value

    @_unavailable
    def kv_set(self, key: str, value: str, now: float) -> None:
        stmt = self._upsert(kv).values(key=key, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=[kv.c.key],
                                          set_={"value": value, "updated_at": now})
        with self._tx() as conn:
            conn.execute(stmt)

    @_unavailable
    def kv_setdefault(self, key: str, value: str, now: float) -> str:
        stmt = self._upsert(kv).values(key=key, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_nothing(index_elements=[kv.c.key])
        with self._tx() as conn:
            conn.execute(stmt)
            stored: str = conn.execute(sa.select(kv.c.value).where(kv.c.key == key)).scalar_one()
        return stored

    @_unavailable
    def kv_items(self, prefix: str) -> dict[str, str]:
        # A range, not LIKE: a prefix holding % or _ matches only itself.
        q = sa.select(kv.c.key, kv.c.value).where(kv.c.key >= prefix,
                                                  kv.c.key < prefix + "\U0010ffff")
        with self._tx() as conn:
            return {r.key: r.value for r in conn.execute(q).all()}

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

    @_unavailable
    def audit_append(self, entry: AuditEntry, keep: int | None = None) -> int:
        with self._tx() as conn:
            new_id: int = conn.execute(audit.insert().values(**self._audit_values(entry))
                                       .returning(audit.c.id)).scalar_one()
            self._trim_audit(conn, new_id, keep)
        return new_id

    @_unavailable
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

    @_unavailable
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

    @_unavailable
    def prune_audit(self, before: float) -> int:
        with self._tx() as conn:
            return conn.execute(audit.delete().where(audit.c.at < before)).rowcount

    @_unavailable
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
