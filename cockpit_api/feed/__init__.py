"""The change feed: one ordered stream of resource changes per world (SSE and long-poll)."""
