"""Every error leaves the server as one RFC 9457 problem shape, built here.

``{type, title, status, detail, code, instance}`` with media type
``application/problem+json``. The handlers below are registered once on the
app and cover domain errors, auth errors, Connexion's own validation
problems, Starlette's routing errors, undecodable bodies and anything
unexpected (logged, answered 500 without internals).

A 405 names every method the specs route for the path in ``Allow`` (Starlette
names only those of the first route it matched).

What a client sent is never repeated at length: a ``detail`` quotes at most a
short :func:`excerpt` of it, and validation problems say *where* and *what*
in an ``errors`` list (RFC 9457 extension member) instead of the validator's
own text, which quotes the whole value and the schema.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

import yaml
from connexion.exceptions import ProblemException
from connexion.http_facts import HTTP_STATUS_CODES
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from cockpit_api.auth.service import AuthError, Throttled
from cockpit_api.backends.base import BackendError, Unavailable
from cockpit_api.http.served_spec import CONTROL_SPEC, SPEC
from cockpit_api.state import MISSING_SANDBOX, SANDBOX_PREFIX

log = logging.getLogger("cockpit_api")

PROBLEM_JSON = "application/problem+json"

_CODES = {
    400: "bad_request", 401: "invalid_token", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout", 409: "conflict",
    413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    429: "throttled", 431: "headers_too_large", 500: "internal_error", 501: "not_supported",
    503: "unavailable",
}

EXCERPT_CHARS = 40


def excerpt(text: object, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of something a client sent, printable, marked when cut."""
    s = str(text)
    s = "".join(c if c.isprintable() else "?" for c in s[: limit + 1])
    return s if len(s) <= limit else s[: limit - 1] + "…"


def problem_body(status: int, detail: str, *, code: str | None = None,
                 title: str | None = None, instance: str | None = None,
                 errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The one place a problem body is built (every answer with an error goes through it)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code or _CODES.get(status, "error"),
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return body


def problem(status: int, detail: str, *, code: str | None = None, title: str | None = None,
            instance: str | None = None, headers: dict[str, str] | None = None,
            errors: list[dict[str, str]] | None = None) -> ConnexionResponse:
    body = problem_body(status, detail, code=code, title=title, instance=instance,
                        errors=errors)
    hdrs = dict(headers or {})
    if status == 401:
        # RFC 6750 3.1: name the error only when a token was sent and refused.
        hdrs.setdefault("WWW-Authenticate",
                        'Bearer error="invalid_token"' if code == "invalid_token" else "Bearer")
    return ConnexionResponse(status_code=status, mimetype=PROBLEM_JSON,
                             body=json.dumps(body).encode(), headers=hdrs)


class InvalidRequest(ProblemException):
    """A request that failed validation, with one ``{pointer, detail}`` per faulty field.

    Raised by our validators (cockpit_api/http/validators.py) instead of Connexion's
    BadRequestProblem, whose detail is the validator's full message.
    """

    def __init__(self, errors: list[dict[str, str]], *, code: str = "bad_request") -> None:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(status=400, title="Bad Request",
                         detail=f"{first['pointer']}: {first['detail']}{more}")
        self.errors = errors
        self.code = code


def _path(request: ConnexionRequest) -> str:
    return str(request.url.path)


def on_backend_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, BackendError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    # Backend details may quote what was asked for (a host name in a scenario): keep them short.
    return problem(exc.status, excerpt(exc.detail, 300), code=exc.code, title=exc.title,
                   instance=_path(request), headers=headers)


def on_auth_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, AuthError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else None
    if headers is not None and getattr(exc, "close_connection", False):
        headers["Connection"] = "close"  # a refused stream gives its file descriptor back
    return problem(exc.status, exc.detail, code=exc.code, title=exc.title,
                   instance=_path(request), headers=headers)


def on_connexion_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    if isinstance(exc, InvalidRequest):
        return problem(400, str(exc.detail), code=exc.code, instance=_path(request),
                       errors=exc.errors)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    code = None
    if exc.status >= 500:
        # E.g. a response that fails its schema (--validate-responses): the validator's text
        # is for the log, not the client.
        log.error("%s on %s: %s", exc.status, _path(request), excerpt(detail, 2000))
        return problem(exc.status, "the server failed to handle this request; it was logged",
                       instance=_path(request), headers=dict(exc.headers or {}))
    if detail == "RequestBody is required":  # Connexion's words for an empty body
        return problem(400, "/body: is required", instance=_path(request),
                       errors=[{"pointer": "/body", "detail": "is required"}])
    if exc.status == 401:
        code = "missing_token" if "No authorization token" in detail else "invalid_token"
    elif exc.status == 415:
        # Connexion's text quotes the Content-Type header as sent, at any length; every
        # operation that takes a body takes JSON.
        detail = "the request body must be sent as Content-Type: application/json"
    # Connexion's other problems are short sentences of its own; still, never more than a line.
    return problem(exc.status, excerpt(detail or exc.title or "error", 200), code=code,
                   instance=_path(request), headers=dict(exc.headers or {}))


def on_http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    missing = request.scope.get(MISSING_SANDBOX)
    if missing is not None and exc.status_code == 404:
        # Neither the id nor the path is quoted back: it is whatever the client sent (32 KiB,
        # NUL, bidi controls), and the client knows which URL it asked for.
        return problem(404, "no such sandbox: it expired, was deleted or never existed",
                       code="sandbox_not_found")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the methods of the first route that matched the path, so a path
        # with two operations (POST and DELETE /_sim/faults) would advertise one of them.
        allowed = allowed_methods(_world_path(_path(request)))
        if allowed:
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = ", ".join(allowed)
    return problem(exc.status_code, excerpt(exc.detail, 200), instance=_path(request),
                   headers=headers)


_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@functools.cache
def _routes() -> tuple[tuple[re.Pattern[str], frozenset[str]], ...]:
    """(path regex, methods) for every path of the two specs the app serves."""
    routes = []
    for spec_file in (SPEC, CONTROL_SPEC):
        spec = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
        prefix = str(spec["servers"][0]["url"]).rstrip("/")
        for template, item in spec["paths"].items():
            methods = {m.upper() for m in item if m in _METHODS}
            if "GET" in methods:
                methods.add("HEAD")  # Starlette answers HEAD wherever GET is routed
            parts = re.split(r"(\{[^}/]+\})", prefix + template)
            pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
            routes.append((re.compile(pattern + "/?"), frozenset(methods)))
    return tuple(routes)


def _world_path(path: str) -> str:
    """A path below its sandbox's base (/sandboxes/{id}), as the specs spell it."""
    if path.startswith(SANDBOX_PREFIX):
        return "/" + path[len(SANDBOX_PREFIX):].partition("/")[2]
    return path


def declared_methods() -> list[str]:
    """Every method some operation of the specs uses, and OPTIONS (for CORS)."""
    methods = {"OPTIONS"}
    for _, route_methods in _routes():
        methods |= route_methods
    return sorted(methods)


def allowed_methods(path: str) -> list[str]:
    """The methods the specs route for this request path, sorted; empty if none matches."""
    methods: set[str] = set()
    for pattern, route_methods in _routes():
        if pattern.fullmatch(path):
            methods |= route_methods
    return sorted(methods)


def on_bad_encoding(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # Connexion decodes JSON bodies as UTF-8 and lets the error escape as a 500.
    return problem(400, "the request body is not valid UTF-8 JSON", code="invalid_json",
                   instance=_path(request))


def on_unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unhandled error on %s", _path(request), exc_info=exc)
    return problem(500, "the server failed to handle this request; it was logged",
                   instance=_path(request))
