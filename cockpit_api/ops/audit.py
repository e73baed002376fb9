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

Anyone can send requests that are refused (401, 429, 400...) or that change nothing
(a logout with a made-up token): those of unauthenticated clients are counted, one row
per window, method, operation and status (:meth:`Store.audit_count`), so that anonymous
traffic cannot grow the log. Each world's log is capped (``audit_max_rows``, a sandbox's
``sandbox_audit_max_rows``).

An answered write has its entry committed: when the entry cannot be written (a full
disk, a lost database) the client gets 503 ``store_unavailable`` instead of the answer,
and later writes are refused at the door (503, before they run) until a write to the
store succeeds again, tried at most once a second (and by ``/readyz``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from cockpit_api.http.problems import PROBLEM_JSON, problem_body
from cockpit_api.ops.logs import escape_controls
from cockpit_api.state import AUDIT_KEY, SCOPE_KEY
from cockpit_api.store import AuditEntry, StoreUnavailable

if TYPE_CHECKING:
    from cockpit_api.state import Services
    from cockpit_api.store import Store

log = logging.getLogger("cockpit_api.ops.audit")

READS = frozenset({"GET", "HEAD", "OPTIONS"})
_PARAM = re.compile(r"\{[^/}]+\}")
PROBE_EVERY = 1.0  # seconds between write probes of a store that failed to write
_NOT_AUDITED = ("the state store cannot write its audit log now, so this write is refused "
                "(it may have been applied); retry shortly")
_REFUSED = "the state store cannot write its audit log now; retry shortly"


class WriteHealth:
    """Whether a store failed to write, and when it was last probed (monotonic seconds)."""

    __slots__ = ("failing_since", "probed_at")

    def __init__(self) -> None:
        self.failing_since: float | None = None
        self.probed_at = -float("inf")


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
        # Per store (each world has its own): weak, a deleted sandbox's store goes with it.
        self._health: weakref.WeakKeyDictionary[Any, WriteHealth] = weakref.WeakKeyDictionary()

    @property
    def index(self) -> OperationIndex:
        """Built at the first write: every API is added by then."""
        if self._index is None:
            self._index = self._index_factory()
        return self._index

    def health(self, store: Store) -> WriteHealth:
        found = self._health.get(store)
        if found is None:
            found = self._health[store] = WriteHealth()
        return found

    def failed(self, store: Store) -> None:
        h = self.health(store)
        if h.failing_since is None:
            h.failing_since = time.monotonic()
            log.error("the store cannot write the audit log: writes answer 503 until it can")

    def recovered(self, store: Store) -> None:
        h = self.health(store)
        if h.failing_since is not None:
            h.failing_since = None
            log.warning("the store writes again: writes are served")

    def cannot_write(self, store: Store) -> bool:
        return self.health(store).failing_since is not None

    async def _writable(self, store: Store) -> bool:
        """False while the store is known not to write; probed at most every PROBE_EVERY s."""
        h = self.health(store)
        if h.failing_since is None:
            return True
        now = time.monotonic()
        if now - h.probed_at < PROBE_EVERY:
            return False
        h.probed_at = now
        try:
            await asyncio.to_thread(store.probe_write, self._clock())
        except Exception:
            return False
        self.recovered(store)
        return True

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
        store = scope.get(SCOPE_KEY, self.services).auth.store
        if not await self._writable(store):
            # Refused before it runs: nothing happens that the log could not say.
            await _unavailable(send, [], _REFUSED)
            return
        note: dict[str, Any] = {}
        scope[AUDIT_KEY] = note  # the scopes derived from this one share the dict
        replaced = False

        async def audit_send(message: Any) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                if not await self._write(scope, note, operation, path, int(message["status"])):
                    replaced = True
                    await _unavailable(send, message.get("headers") or [], _NOT_AUDITED)
                    return
            elif replaced:
                return  # the handler's body: the client got the 503 instead
            await send(message)

        await self.app(scope, receive, audit_send)

    async def _write(self, scope: Scope, note: dict[str, Any], operation: str, path: str,
                     status: int) -> bool:
        """Write the entry; False if it could not be (the answer must not leave then)."""
        # The services of the world the request went to (the app's, or a mount's).
        services = scope.get(SCOPE_KEY, self.services)
        headers = dict(scope.get("headers") or [])
        actor, role = note.get("actor"), note.get("role")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        authenticated = False
        if auth[:7].lower() == "bearer ":
            claims = services.auth.actor(auth[7:].strip())
            if claims is not None:
                authenticated = True
                if actor is None:
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
        settings = services.settings
        rows = settings.sandbox_audit_max_rows if services.sandbox_id else \
            settings.audit_max_rows
        keep = rows or None  # 0: no cap on rows (the retention still prunes by age)
        store = services.auth.store
        # Unauthenticated and refused (or a no-op like a logout of no session): counted.
        # A failed login names who it tried in no row: the name is the client's text.
        anonymous = not authenticated and (status >= 400 or actor is None)
        try:
            if anonymous:
                counted = AuditEntry(at=entry.at, operation=operation, method=entry.method,
                                     path=entry.path, status=status)
                await asyncio.to_thread(store.audit_count, counted,
                                        settings.audit_reject_window, keep)
            else:
                await asyncio.to_thread(store.audit_append, entry, keep)
        except Exception as exc:
            self.failed(store)
            if not isinstance(exc, StoreUnavailable):  # (that one was logged by the store)
                log.error("audit entry not written: %s %s -> %s: %s", entry.method,
                          operation, status, type(exc).__name__)
            return False
        self.recovered(store)
        return True


async def _unavailable(send: Send, headers: list[tuple[bytes, bytes]], detail: str) -> None:
    """A whole 503 ``store_unavailable`` answer, keeping the headers that are about the
    exchange (request id, CORS), not the ones about the body that was replaced."""
    body = json.dumps(problem_body(503, detail, code="store_unavailable")).encode()
    drop = {b"content-type", b"content-length", b"etag", b"location", b"cache-control",
            b"retry-after", b"last-modified"}
    kept = [(k, v) for k, v in headers if k.lower() not in drop]
    await send({"type": "http.response.start", "status": 503, "headers": [
        *kept, (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()), (b"retry-after", b"5"),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})


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
