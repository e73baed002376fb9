"""audit: the log of every write (written by the app, cockpit_api/app.py; read here)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

from starlette.responses import Response

from cockpit_api.backends.base import InvalidArgument
from cockpit_api.handlers._common import Json, cached, iso, require_admin, services
from cockpit_api.store import AuditEntry

_PREFIX = "audit:"
# An entry id as _cursor writes it: ASCII digits, no sign, no leading zero, at most 18
# digits (str.isdigit takes "٣" and int() reads it; a 64-bit column holds 18 digits).
_ID = re.compile(r"[1-9][0-9]{0,17}")


def _cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{entry_id}".encode()).decode().rstrip("=")


def _before(cursor: str | None) -> int | None:
    """The entry id a cursor continues before; 400 ``invalid_cursor`` for any other cursor.

    Like the other lists' (cockpit_api.backends.base.PageRequest): a cursor names its list, and one
    this list did not issue is refused rather than read as some position.
    """
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith(_PREFIX) and _ID.fullmatch(text[len(_PREFIX):]):
            return int(text[len(_PREFIX):])
    except (binascii.Error, ValueError, UnicodeDecodeError):
        pass
    raise InvalidArgument("the cursor was not issued for the audit log: pass the "
                          "next_cursor of its previous page, or none", code="invalid_cursor")


def _entry(e: AuditEntry) -> Json:
    return {"id": e.id, "at": iso(e.at), "actor": e.actor, "role": e.role,
            "address": e.address, "operation": e.operation, "method": e.method,
            "path": e.path, "status": e.status, "request_id": e.request_id,
            "dry_run": e.dry_run, "count": e.count}


async def list_audit(limit: int = 100, cursor: str | None = None) -> Response:
    require_admin()
    before = _before(cursor)
    store = services().auth.store
    # One more than asked tells whether another page exists.
    rows = await asyncio.to_thread(store.audit_page, limit + 1, before)
    page = rows[:limit]
    more = len(rows) > limit and page[-1].id is not None
    return cached({"entries": [_entry(e) for e in page],
                   "next_cursor": _cursor(page[-1].id) if more and page[-1].id else None})
