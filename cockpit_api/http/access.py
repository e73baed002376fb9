"""The outermost request layer: request ids, request metrics, the access log.

For every HTTP request:

- the request id is the client's ``X-Request-Id`` when it is 1-128 characters
  of ``A-Z a-z 0-9 . _ : -`` (anything else could forge log lines or blow up
  label-free storage downstream, so it is replaced), else a new one: 32 hex
  digits, a random per-process prefix and a counter (a UUID4 costs a getrandom
  call, ~8 us on this project's machine). It
  is put in the scope under ``cockpit.request_id`` (``state.REQUEST_ID_KEY``)
  before anything else runs, sent back as ``X-Request-Id`` on every response,
  and added as ``request_id`` to every ``application/problem+json`` body, so
  that errors made anywhere (Connexion, our handlers, other middleware) carry it
  without each knowing about it;
- ``Metrics.request_finished`` gets the operation id Connexion routed to (from
  the scope's ``extensions``, which Connexion shares with this layer), the
  status and the duration;
- with the access log on, one line through the writer it was given
  (cockpit_api/ops/logs.py: ``JsonAccessLog`` or ``TextAccessLog``).

A nested app (a sandbox built with create_app inside this one) finds the id
already in the scope and leaves the request to the outer layer.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cockpit_api.ops.logs import current_request_id
from cockpit_api.ops.prometheus import UNMATCHED
from cockpit_api.state import REQUEST_ID_KEY, Services

# (method, path, operation, status, seconds, user or None, request id): logs.JsonAccessLog
AccessLogWriter = Callable[[str, str, str, int, float, "str | None", str], None]

HEADER = b"x-request-id"
_VALID_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_PROBLEM = b"application/problem+json"


def incoming_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == HEADER:
            return value.decode("ascii") if _VALID_ID.fullmatch(value) else None
    return None


class AccessMiddleware:
    def __init__(self, app: ASGIApp, services: Services, *,
                 access_log: AccessLogWriter | None = None) -> None:
        self.app = app
        self.services = services
        self.access_log = access_log
        self._prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)
        self._short: dict[str, str] = {}  # Connexion's operation id -> the spec's operationId

    def _new_id(self) -> str:
        return f"{self._prefix}{next(self._ids):016x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or REQUEST_ID_KEY in scope:
            await self.app(scope, receive, send)
            return
        rid = incoming_id(scope["headers"]) or self._new_id()
        scope[REQUEST_ID_KEY] = rid
        # Connexion copies the scope but keeps this dict: its routing and security
        # layers write the operation id and the user into it for us to read below.
        extensions = scope.setdefault("extensions", {})
        token = current_request_id.set(rid)
        metrics = self.services.metrics
        metrics.request_started()
        status = 500
        held: list[Message] = []  # a problem's start and body parts, until the last part
        rid_header = (HEADER, rid.encode("ascii"))
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), rid_header]
                message = {**message, "headers": headers}
                if status >= 400 and any(n == b"content-type" and v.startswith(_PROBLEM)
                                         for n, v in headers):
                    held.append(message)
                    return
            elif kind == "http.response.body" and held:
                held.append(message)
                if message.get("more_body", False):
                    return
                for m in _with_request_id(held, rid):
                    await send(m)
                held.clear()
                return
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            routing = extensions.get("connexion_routing")
            operation = UNMATCHED
            if routing and routing.get("operation_id"):
                full = routing["operation_id"]
                operation = self._short.get(full) or self._short.setdefault(
                    full, str(full).rsplit(".", 1)[-1])  # ...handlers.vms.list_vms -> list_vms
            metrics.request_finished(operation, status, seconds)
            if self.access_log is not None:
                user = (extensions.get("connexion_context") or {}).get("user")
                self.access_log(scope["method"], scope["path"], operation, status, seconds,
                                user, rid)
            current_request_id.reset(token)


def _with_request_id(held: list[Message], rid: str) -> list[Message]:
    """The held problem response, its JSON body given a ``request_id`` member."""
    start, parts = held[0], held[1:]
    raw = b"".join(m.get("body", b"") for m in parts)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return held  # not ours to fix (HEAD has no body); sent as it came
    if not isinstance(body, dict):
        return held
    body["request_id"] = rid
    new = orjson.dumps(body)
    headers = [(n, str(len(new)).encode()) if n == b"content-length" else (n, v)
               for n, v in start["headers"]]
    return [{**start, "headers": headers}, {"type": "http.response.body", "body": new}]
