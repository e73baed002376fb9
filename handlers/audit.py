"""audit: the log of every write (written by the app, cockpit_api/app.py; read here)."""

from __future__ import annotations

import asyncio
import base64
import binascii

from starlette.responses import Response

from cockpit_api.store import AuditEntry
from handlers._common import Json, iso, ok, require_admin, services

_PREFIX = "audit:"


def _cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{entry_id}".encode()).decode().rstrip("=")


def _before(cursor: str | None) -> int | None:
    """The entry id a cursor continues before; a cursor we did not issue reads as the start.

    Like the other lists (backends.base.PageRequest), a well-formed cursor is never
    refused; when the lists start answering 400 invalid_cursor, this one follows.
    """
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith(_PREFIX):
            return int(text[len(_PREFIX):])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    return None


def _entry(e: AuditEntry) -> Json:
    return {"id": e.id, "at": iso(e.at), "actor": e.actor, "role": e.role,
            "address": e.address, "operation": e.operation, "method": e.method,
            "path": e.path, "status": e.status, "request_id": e.request_id}


async def list_audit(limit: int = 100, cursor: str | None = None) -> Response:
    require_admin()
    before = _before(cursor)
    store = services().auth.store
    # One more than asked tells whether another page exists.
    rows = await asyncio.to_thread(store.audit_page, limit + 1, before)
    page = rows[:limit]
    more = len(rows) > limit and page[-1].id is not None
    return ok({"entries": [_entry(e) for e in page],
               "next_cursor": _cursor(page[-1].id) if more and page[-1].id else None})
