"""The audit log's writer: one entry per write request, whatever its operation.

:class:`Auditor` wraps the app. For every request whose method is not a read,
it finds the operation (its operationId) from the specs the app serves, lets
the request run, and writes the entry when the answer starts, before it leaves:
who (the bearer token's user, or what a handler noted with
:func:`cockpit_api.state.audit_note`, e.g. the username a login tried), when,
the operation, method and path, the client's address, the answer's status and
the ``X-Request-Id`` header. Requests that match no operation (404, 405) are not
audited: they changed nothing and are the scanners' noise.

The operation index is built from the specs Connexion loaded, so operations
(and specs) added later are audited without a change here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from cockpit_api.ops.logs import escape_controls
from cockpit_api.state import AUDIT_KEY, SCOPE_KEY
from cockpit_api.store import AuditEntry

if TYPE_CHECKING:
    from cockpit_api.state import Services

log = logging.getLogger("cockpit_api.ops.audit")

READS = frozenset({"GET", "HEAD", "OPTIONS"})
_PARAM = re.compile(r"\{[^/}]+\}")


def is_dry_run(query_string: bytes) -> bool:
    """Did the request ask for ``dry_run=true``? (Connexion's boolean: true, any case.)

    Read from the raw query because the entry is written whatever the answer, a 400
    included: a dry run refused by validation is still marked as one.
    """
    if b"dry_run" not in query_string:
        return False
    values = parse_qs(query_string.decode("latin-1")).get("dry_run", [])
    return any(v.lower() == "true" for v in values)


class OperationIndex:
    """(method, path) -> operationId for the write operations of the served specs."""

    def __init__(self, apis: list[tuple[str, dict[str, Any]]]) -> None:
        exact: dict[tuple[str, str], str] = {}
        templated: list[tuple[str, re.Pattern[str], str]] = []
        for base, paths in apis:
            base = base.rstrip("/")
            for template, item in paths.items():
                for method, op in item.items():
                    if not isinstance(op, dict) or "operationId" not in op or \
                            method.upper() in READS:
                        continue
                    full = base + template
                    if "{" not in template:
                        exact[(method.upper(), full)] = op["operationId"]
                    else:
                        pattern = "".join(
                            "[^/]+" if _PARAM.fullmatch(part) else re.escape(part)
                            for part in re.split(r"(\{[^/}]+\})", full))
                        templated.append((method.upper(), re.compile(pattern),
                                          op["operationId"]))
        self._exact = exact
        self._templated = templated

    @classmethod
    def of(cls, connexion_app: Any) -> OperationIndex:
        """From the specifications a Connexion app loaded (``add_api``)."""
        apis = []
        for api in connexion_app.middleware.apis:
            spec = api.specification
            apis.append((api.base_path or spec.base_path or "", dict(spec["paths"])))
        return cls(apis)

    def find(self, method: str, path: str) -> str | None:
        found = self._exact.get((method, path))
        if found is not None:
            return found
        for m, pattern, operation in self._templated:
            if m == method and pattern.fullmatch(path):
                return operation
        return None


class Auditor:
    """ASGI wrapper around the app: audits writes, passes everything else through."""

    def __init__(self, app: ASGIApp, services: Services, index: Callable[[], OperationIndex],
                 clock: Callable[[], float]) -> None:
        self.app = app
        self.services = services
        self._index_factory = index
        self._index: OperationIndex | None = None
        self._clock = clock

    @property
    def index(self) -> OperationIndex:
        """Built at the first write: every API is added by then."""
        if self._index is None:
            self._index = self._index_factory()
        return self._index

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS:
            await self.app(scope, receive, send)
            return
        index = self.index
        # The path as the client sent it (Starlette: root_path included), matched below a
        # mount too (e.g. /sandboxes/{id}: root_path names the mount).
        path: str = scope["path"]
        root = scope.get("root_path", "")
        operation = index.find(scope["method"], path)
        if operation is None and root and path.startswith(root):
            operation = index.find(scope["method"], path[len(root):])
        if operation is None:
            await self.app(scope, receive, send)
            return
        note: dict[str, Any] = {}
        scope[AUDIT_KEY] = note  # the scopes derived from this one share the dict

        async def audit_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                await self._write(scope, note, operation, path, int(message["status"]))
            await send(message)

        await self.app(scope, receive, audit_send)

    async def _write(self, scope: Scope, note: dict[str, Any], operation: str, path: str,
                     status: int) -> None:
        # The services of the world the request went to (the app's, or a mount's).
        services = scope.get(SCOPE_KEY, self.services)
        headers = dict(scope.get("headers") or [])
        actor, role = note.get("actor"), note.get("role")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if actor is None and auth[:7].lower() == "bearer ":
            claims = services.auth.actor(auth[7:].strip())
            if claims is not None:
                actor, role = claims["sub"], claims["role"]
        # The request id the request middleware settled on (the client's valid
        # X-Request-Id or one it made), else the client's header as sent.
        request_id = scope.get("cockpit.request_id") or \
            headers.get(b"x-request-id", b"").decode("latin-1")[:128] or None
        client = scope.get("client")
        # Stored escaped: a newline or a bidi override in a username or a path reads as
        # an escape wherever the entry is shown, never as a forged line.
        entry = AuditEntry(at=self._clock(), operation=operation, method=scope["method"],
                           path=escape_controls(path), status=status,
                           actor=None if actor is None else escape_controls(str(actor)[:255]),
                           role=role, address=_address(client[0] if client else None),
                           request_id=request_id,
                           dry_run=is_dry_run(scope.get("query_string", b"")))
        try:
            await asyncio.to_thread(services.auth.store.audit_append, entry)
        except Exception:
            # The write already happened; losing its audit line must not turn it into a 500.
            log.exception("audit entry not written: %s %s -> %s", entry.method, entry.path,
                          status)


def _address(host: object) -> str | None:
    """The client's address as an IP address, else None.

    With trusted proxies (``trusted_proxies``) uvicorn takes the client from
    ``X-Forwarded-For`` as it is written, which is any text.
    """
    if not isinstance(host, str):
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
