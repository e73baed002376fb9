"""Alembic's environment: runs on the connection ``cockpit_api.store.sql_engine`` hands it.

Programmatic only (no alembic.ini): ``SqlStore`` upgrades the schema to head at start.
To add a revision: copy the newest file in ``versions/``, give it a new ``revision`` and
set ``down_revision`` to the previous one; write ``upgrade`` and ``downgrade``.
"""

from __future__ import annotations

from alembic import context

from cockpit_api.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
