"""Sandboxes: more simulated worlds served by the same app under /sandboxes/{id}/."""
