"""Refresh retry grace (the predecessor's digest) and aggregated audit rows (count, bucket).

``sessions.previous_digest``/``rotated_at``: the token the last rotation replaced and
when, so that a client's retry of that refresh (its answer was lost) is recognised
once, within the grace, instead of being taken for reuse. ``audit.count``: how many
requests a row stands for (1, or many for rejects of unauthenticated requests, which
are counted per window in the row named by its ``bucket``).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("previous_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rotated_at", sa.Float, nullable=True))
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("count", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("bucket", sa.String(200), nullable=True))
    op.create_index("ix_audit_bucket", "audit", ["bucket"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audit_bucket", "audit")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("bucket")
        batch.drop_column("count")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("rotated_at")
        batch.drop_column("previous_digest")
