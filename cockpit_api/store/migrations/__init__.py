"""Alembic environment and versioned schema revisions for the store (run at start-up)."""
