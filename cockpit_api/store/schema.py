"""The tables, as SQLAlchemy Core metadata: what the queries in ``sql_*.py`` are written against.

The database schema itself is made by the Alembic revisions in ``migrations/versions/``;
``tests/test_store.py`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Unbounded 64-bit ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

signing_keys = sa.Table(
    "signing_keys", metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("retire_after", sa.Float, nullable=True),
)

kv = sa.Table(
    "kv", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("family", sa.String(64), primary_key=True),
    sa.Column("sid", sa.String(64), nullable=False, unique=True),
    sa.Column("username", sa.String(255), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("current_digest", sa.String(64), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
    sa.Column("revoked_at", sa.Float, nullable=True, index=True),
    sa.Column("revoked_reason", sa.String(32), nullable=True),
    # The token the last rotation replaced, and when: its retry within the grace is not
    # reuse (once; the grace is used up by it). NULL: no retry is allowed.
    sa.Column("previous_digest", sa.String(64), nullable=True),
    sa.Column("rotated_at", sa.Float, nullable=True),
)

login_throttle = sa.Table(
    "login_throttle", metadata,
    sa.Column("key", sa.String(600), primary_key=True),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("vm_id", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("source_host_id", sa.String(64), nullable=True),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
)
# The rule "one unfinished job per VM", kept by the database for every replica at once.
sa.Index("jobs_one_unfinished_per_vm", jobs.c.vm_id, unique=True,
         sqlite_where=jobs.c.finished_at.is_(None),
         postgresql_where=jobs.c.finished_at.is_(None))

audit = sa.Table(
    "audit", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("actor", sa.String(255), nullable=True),
    sa.Column("role", sa.String(16), nullable=True),
    sa.Column("address", sa.String(64), nullable=True),
    sa.Column("operation", sa.String(128), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("dry_run", sa.Boolean, nullable=False, server_default=sa.false()),
    # How many requests the row stands for: 1, or the rejects of unauthenticated requests
    # counted in one row per window; ``bucket`` names that row (NULL for the others).
    sa.Column("count", sa.Integer, nullable=False, server_default="1"),
    sa.Column("bucket", sa.String(200), nullable=True),
)
sa.Index("ix_audit_bucket", audit.c.bucket, unique=True)
