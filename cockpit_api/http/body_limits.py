"""Request bodies, bounded before anything parses them: one small ASGI layer.

It runs before Connexion (right inside CORS, so refusals still carry CORS
headers) and, for every request that has a body:

- refuses a declared ``Content-Length`` over ``max_body_bytes`` at once (413),
  and reads a chunked body only up to that limit (413 past it), so neither is
  ever held whole; the 413 closes the connection instead of reading the rest;
- gives up on a body that takes longer than ``body_timeout`` seconds (408);
- refuses a body without ``Content-Type`` (415: a JSON API says so, and Connexion
  would hand the handler raw bytes);
- for JSON, checks the body once with orjson: valid UTF-8, valid JSON (so no
  ``NaN``, ``Infinity`` or ``1e400``: the standard library parser Connexion uses
  accepts all three and a NaN clock breaks the simulator), nested at most
  ``max_json_depth`` deep (the standard library recurses and 50,000 levels are a
  RecursionError). Failures are 400 ``invalid_json``;
- replays the body to the app with its real ``Content-Length``, so a valid
  chunked body is read like any other.

Nothing of the body is logged or echoed: the problems name the limit, not the input.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cockpit_api.http.problems import PROBLEM_JSON, problem_body


@dataclass(frozen=True)
class BodyLimits:
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    body_timeout: float = 30.0


class _Refused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _json_media_type(content_type: bytes) -> bool:
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or mime.endswith(b"+json")


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


def _bracket_depth(text: bytes) -> int:
    brackets = text.translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in ``body``, which must be valid JSON.

    Counted on the bytes in C loops (strings removed, then a running sum of the
    brackets) without building or walking any Python object, which took 140 ms
    for a body of 20,000 small objects.
    """
    return _bracket_depth(_STRING.sub(b"", body))


def _too_deep(body: bytes, max_depth: int) -> bool:
    # Cheapest first: too few brackets, or too shallow even counting those inside strings.
    return (body.count(b"[") + body.count(b"{") > max_depth
            and _bracket_depth(body) > max_depth and json_depth(body) > max_depth)


def check_json(body: bytes, max_depth: int) -> None:
    """Raise _Refused unless ``body`` is UTF-8 JSON, finite numbers, at most ``max_depth`` deep."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "infinity" in message:
            detail = "numbers must be finite (at most about 1.8e308)"
        elif "depth" in message or "recursion" in message:
            detail = f"the body nests deeper than {max_depth} levels"
        elif "UTF-8" in message or "surrogate" in message:
            detail = "the body is not valid UTF-8"
        else:
            detail = f"the body is not valid JSON (line {exc.lineno}, column {exc.colno})"
        raise _Refused(400, "invalid_json", detail) from None
    if _too_deep(body, max_depth):
        raise _Refused(400, "invalid_json", f"the body nests deeper than {max_depth} levels")


class RequestLimits:
    """ASGI middleware enforcing :class:`BodyLimits` (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits | None = None) -> None:
        self.app = app
        self.limits = limits or BodyLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        chunked = False
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"content-type":
                content_type = value
        if not chunked and not length:
            await self.app(scope, receive, send)  # no body (the server rejects bad lengths)
            return
        try:
            if length is not None and length > self.limits.max_body_bytes:
                raise _Refused(413, "payload_too_large", self._too_large())
            body = await asyncio.wait_for(self._read(receive), self.limits.body_timeout)
            if body and not content_type:
                raise _Refused(415, "unsupported_media_type",
                               "a request body needs Content-Type: application/json")
            if body and _json_media_type(content_type):
                check_json(body, self.limits.max_json_depth)
        except _Refused as refused:
            await self._refuse(scope, send, refused)
            return
        except TimeoutError:
            await self._refuse(scope, send, _Refused(
                408, "request_timeout",
                f"the request body did not arrive within {self.limits.body_timeout:g} seconds"))
            return
        await self.app(self._with_length(scope, len(body)), self._replay(body, receive), send)

    def _too_large(self) -> str:
        return f"the request body is larger than {self.limits.max_body_bytes} bytes"

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(400, "bad_request", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise _Refused(413, "payload_too_large", self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _with_length(scope: Scope, length: int) -> Scope:
        headers = [(k, v) for k, v in scope["headers"]
                   if k not in (b"content-length", b"transfer-encoding")]
        headers.append((b"content-length", str(length).encode()))
        return {**scope, "headers": headers}

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    @staticmethod
    async def _refuse(scope: Scope, send: Send, refused: _Refused) -> None:
        body = orjson.dumps(problem_body(refused.status, refused.detail, code=refused.code,
                                         instance=scope.get("path")))
        headers = [(b"content-type", PROBLEM_JSON.encode()),
                   (b"content-length", str(len(body)).encode())]
        if refused.status in (408, 413):
            # The rest of the body is never read: the connection cannot carry another request.
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": refused.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
