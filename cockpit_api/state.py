"""What one app instance holds, carried in each request's ASGI scope (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.base import Backend
    from cockpit_api.auth import AuthService
    from cockpit_api.config import Settings
    from cockpit_api.store import Store

SCOPE_KEY = "cockpit"
# A dict per write request, filled by whoever knows (the app: who and which operation;
# a handler: e.g. the username of a login) and written to the audit log at the answer.
AUDIT_KEY = "cockpit.audit"


@dataclass
class Services:
    backend: Backend
    auth: AuthService
    settings: Settings
    store: Store | None = None


def services_of(scope: Any) -> Services:
    services: Services = scope[SCOPE_KEY]
    return services


def audit_note(scope: Any, **fields: Any) -> None:
    """Add to this request's audit entry (no-op for requests that are not audited)."""
    note = scope.get(AUDIT_KEY)
    if note is not None:
        note.update(fields)
