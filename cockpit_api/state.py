"""What one app instance holds, carried in each request's ASGI scope (no module globals)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cockpit_api.telemetry import Metrics

if TYPE_CHECKING:
    from backends.base import Backend
    from cockpit_api.auth import AuthService
    from cockpit_api.config import Settings

SCOPE_KEY = "cockpit"
# The request's id (str): the client's valid X-Request-Id or one made here
# (cockpit_api/access.py). Read it with ``scope[REQUEST_ID_KEY]`` or request_id_of().
REQUEST_ID_KEY = "cockpit.request_id"

# A readiness check answers None when fine, else a short reason; /readyz runs them all.
ReadyCheck = Callable[[], Awaitable[str | None]]


@dataclass
class Services:
    backend: Backend
    auth: AuthService
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    # By name; the app adds "backend"; the store adds its own ("store") when it exists.
    ready_checks: dict[str, ReadyCheck] = field(default_factory=dict)
    started: bool = False  # set by the lifespan once backend.start() returned


def services_of(scope: Any) -> Services:
    services: Services = scope[SCOPE_KEY]
    return services


def request_id_of(scope: Any) -> str | None:
    rid: str | None = scope.get(REQUEST_ID_KEY)
    return rid
