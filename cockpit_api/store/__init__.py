"""State that outlives a process: sessions, signing keys, throttling, jobs, host ids, audit.

``open_store(url)`` gives a :class:`Store` (see ``base.py`` for the vocabulary);
``sqlite:///PATH`` (the default: a file in the state directory), ``sqlite://``
(in memory: programmatic apps and tests) or ``postgresql://USER:PASS@HOST/DB``
(replicas). The schema is upgraded to the newest Alembic revision on open.
"""

from __future__ import annotations

from pathlib import Path

from cockpit_api.store.base import (
    KEYS_CHANGED,
    AuditEntry,
    Counter,
    JobConflict,
    JobRecord,
    Rotation,
    Session,
    SigningKey,
    Store,
    StoreError,
    StoreUnavailable,
)

MEMORY_URL = "sqlite://"

__all__ = [
    "KEYS_CHANGED", "MEMORY_URL", "AuditEntry", "Counter", "JobConflict", "JobRecord",
    "Rotation", "Session", "SigningKey", "Store", "StoreError", "StoreUnavailable",
    "default_url", "open_store",
]


def default_url(state_dir: str | Path) -> str:
    """The embedded store: ``store.db`` in the state directory."""
    return f"sqlite:///{Path(state_dir) / 'store.db'}"


def open_store(url: str, *, create: bool = True) -> Store:
    """Connect, upgrade the schema, return the store; :class:`StoreError` (one line) if not.

    ``create=False``: a store that does not exist yet (no SQLite file, a database
    without the schema) is a :class:`StoreError`, not made empty (``rotate-key``)."""
    from cockpit_api.store.sql import SqlStore

    return SqlStore(url, create=create)
