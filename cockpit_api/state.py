"""What one app instance holds, carried in each request's ASGI scope (no module globals)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from cockpit_api.backends.base import Simulator, simulator_of
from cockpit_api.ops.prometheus import Metrics

if TYPE_CHECKING:
    from cockpit_api.auth.service import AuthService
    from cockpit_api.backends.base import Backend
    from cockpit_api.config import Settings
    from cockpit_api.feed.changes import StreamGate
    from cockpit_api.store import Store

SCOPE_KEY = "cockpit"
# A dict per write request, filled by whoever knows (the app: who and which operation;
# a handler: e.g. the username of a login) and written to the audit log at the answer.
AUDIT_KEY = "cockpit.audit"
# The request's id (str): the client's valid X-Request-Id or one made here
# (cockpit_api/http/access.py). Read it with ``scope[REQUEST_ID_KEY]`` or request_id_of().
REQUEST_ID_KEY = "cockpit.request_id"
# Sandboxes are served below this prefix (cockpit_api/sandboxes/). A request naming one that
# does not exist (any more) gets MISSING_SANDBOX (its id) in its scope, so that the 404
# problem says so (cockpit_api/http/problems.py) and still goes through CORS.
SANDBOX_PREFIX = "/sandboxes/"
MISSING_SANDBOX = "cockpit.missing_sandbox"
_ID_CHARS = frozenset("0123456789abcdef")


def well_formed_id(sid: str) -> bool:
    """Shaped like a sandbox id (16 lower-case hex digits, as the registry makes them): safe
    to quote in a problem."""
    return len(sid) == 16 and set(sid) <= _ID_CHARS


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
    # The app's sandboxes (simulator only), shared by every world; sandbox_id is None
    # in the default world, the root API.
    sandboxes: SandboxRouter | None = None
    sandbox_id: str | None = None
    store: Store | None = None  # what outlives the process (cockpit_api/store)
    # Caps on event streams and long polls, shared by every world (cockpit_api/feed/changes.py).
    streams: StreamGate | None = None

    @cached_property
    def sim(self) -> Simulator | None:
        """The backend's simulator powers (scenario, clock, faults, latency), or None."""
        return simulator_of(self.backend)


class Sandboxed(Protocol):
    """A sandbox as the app routes a request into it (cockpit_api/sandboxes/)."""

    services: Services

    @property
    def path(self) -> str: ...


class SandboxRouter(Protocol):
    """What the app asks of its sandbox registry (cockpit_api/sandboxes/registry.py)."""

    def route(self, path: str) -> tuple[str, Sandboxed | None]: ...
    def all(self) -> Sequence[Sandboxed]: ...
    def alive(self, sid: str) -> bool: ...
    def admit_reset(self, sid: str) -> None: ...
    async def load(self, sid: str, *, name: str | None = None,
                   data: dict[str, Any] | None = None) -> Simulator: ...
    async def close(self) -> None: ...


def services_of(scope: Any) -> Services:
    services: Services = scope[SCOPE_KEY]
    return services


def audit_note(scope: Any, **fields: Any) -> None:
    """Add to this request's audit entry (no-op for requests that are not audited)."""
    note = scope.get(AUDIT_KEY)
    if note is not None:
        note.update(fields)


def request_id_of(scope: Any) -> str | None:
    rid: str | None = scope.get(REQUEST_ID_KEY)
    return rid


def bearer_info(token: str, request: Any) -> dict[str, Any]:
    """Connexion's ``x-bearerInfoFunc``: the token's claims become ``context['token_info']``.

    Here rather than in cockpit_api/auth/: it finds the request's world in the scope, and
    the auth service stays below the services that hold it."""
    return services_of(request.scope).auth.verify(token)
