"""Alembic environment and versioned schema revisions for the store (run at start-up)."""

# The newest revision in versions/: a new revision file updates it (a test checks).
HEAD = "0003"
