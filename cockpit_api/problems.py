"""Every error leaves the server as one RFC 9457 problem shape, built here.

``{type, title, status, detail, code, instance}`` with media type
``application/problem+json``. The handlers below are registered once on the
app and cover domain errors, auth errors, Connexion's own validation
problems, Starlette's routing errors, undecodable bodies and anything
unexpected (logged, answered 500 without internals).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from connexion.exceptions import ProblemException
from connexion.http_facts import HTTP_STATUS_CODES
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from backends.base import BackendError, Unavailable
from cockpit_api.auth import AuthError, Throttled

log = logging.getLogger("cockpit_api")

PROBLEM_JSON = "application/problem+json"

_CODES = {
    400: "bad_request", 401: "invalid_token", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 429: "throttled",
    500: "internal_error", 501: "not_supported", 503: "unavailable",
}


def problem(status: int, detail: str, *, code: str | None = None, title: str | None = None,
            instance: str | None = None, headers: dict[str, str] | None = None) -> ConnexionResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or HTTP_STATUS_CODES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code or _CODES.get(status, "error"),
    }
    if instance:
        body["instance"] = instance
    hdrs = dict(headers or {})
    if status == 401:
        # RFC 6750 3.1: name the error only when a token was sent and refused.
        hdrs.setdefault("WWW-Authenticate",
                        'Bearer error="invalid_token"' if code == "invalid_token" else "Bearer")
    return ConnexionResponse(status_code=status, mimetype=PROBLEM_JSON,
                             body=json.dumps(body).encode(), headers=hdrs)


def _path(request: ConnexionRequest) -> str:
    return str(request.url.path)


def on_backend_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, BackendError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Unavailable) else None
    return problem(exc.status, exc.detail, code=exc.code, title=exc.title,
                   instance=_path(request), headers=headers)


def on_auth_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, AuthError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else None
    return problem(exc.status, exc.detail, code=exc.code, title=exc.title,
                   instance=_path(request), headers=headers)


def on_connexion_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    code = None
    if exc.status == 401:
        code = "missing_token" if "No authorization token" in detail else "invalid_token"
    return problem(exc.status, detail or (exc.title or "error"), code=code,
                   instance=_path(request), headers=dict(exc.headers or {}))


def on_http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, str(exc.detail), instance=_path(request),
                   headers=dict(exc.headers or {}))


def on_bad_encoding(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # Connexion decodes JSON bodies as UTF-8 and lets the error escape as a 500.
    return problem(400, "the request body is not valid UTF-8 JSON", code="bad_encoding",
                   instance=_path(request))


def on_unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unhandled error on %s", _path(request), exc_info=exc)
    return problem(500, "the server failed to handle this request; it was logged",
                   instance=_path(request))
