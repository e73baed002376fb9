"""What one app instance holds, carried in each request's ASGI scope (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.base import Backend
    from cockpit_api.auth import AuthService
    from cockpit_api.config import Settings

SCOPE_KEY = "cockpit"


@dataclass
class Services:
    backend: Backend
    auth: AuthService
    settings: Settings


def services_of(scope: Any) -> Services:
    services: Services = scope[SCOPE_KEY]
    return services
