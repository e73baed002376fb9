"""What one app instance holds, carried in each request's ASGI scope (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.base import Backend
    from cockpit_api.auth import AuthService
    from cockpit_api.config import Settings
    from cockpit_api.sandboxes import SandboxRegistry

SCOPE_KEY = "cockpit"


@dataclass
class Services:
    backend: Backend
    auth: AuthService
    settings: Settings
    # The app's sandboxes (simulator only), shared by every world; sandbox_id is None
    # in the default world, the root API.
    sandboxes: SandboxRegistry | None = None
    sandbox_id: str | None = None


def services_of(scope: Any) -> Services:
    services: Services = scope[SCOPE_KEY]
    return services
