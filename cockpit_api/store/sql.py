"""The store over SQLAlchemy 2 Core: one implementation, two engines (SQLite, PostgreSQL).

:class:`SqlStore` is the engine (sql_engine.py: what differs between SQLite and PostgreSQL)
with one part per table group: signing keys, sessions and throttling (sql_keys.py), jobs,
leases and key/value rows (sql_jobs.py), audit rows (sql_audit.py).
"""

from __future__ import annotations

from cockpit_api.store.sql_audit import SqlAudit
from cockpit_api.store.sql_jobs import SqlJobs
from cockpit_api.store.sql_keys import SqlKeys


class SqlStore(SqlKeys, SqlJobs, SqlAudit):
    """:class:`cockpit_api.store.base.Store` on SQLite or PostgreSQL."""
