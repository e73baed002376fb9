"""The store over SQLAlchemy 2 Core: the engine under every table group (sql_keys.py,
sql_jobs.py, sql_audit.py; sql.py puts them together as SqlStore).

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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from cockpit_api.store.base import (
    StoreError,
    StoreUnavailable,
)
from cockpit_api.store.migrations import HEAD
from cockpit_api.store.schema import (
    metadata,
)
from cockpit_api.store.statedir import private_file

log = logging.getLogger("cockpit_api.store")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
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


def unavailable(fn: Callable[P, R]) -> Callable[P, R]:
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


class SqlEngine:
    """The engine, its transactions and migrations: what every table group's queries run on."""

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

    @unavailable
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

