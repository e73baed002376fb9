"""ops: liveness, readiness and Prometheus metrics (cockpit_api/ops.yaml), outside /api/v1."""

from __future__ import annotations

import hmac

from connexion import request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from cockpit_api.auth.service import AuthError
from cockpit_api.backends.base import Unavailable
from cockpit_api.handlers._common import ok, services


async def healthz() -> Response:
    return ok({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz() -> Response:
    checks = services().ready_checks
    results = {name: await check() for name, check in checks.items()}
    failing = {name: why for name, why in results.items() if why is not None}
    if failing:
        detail = "; ".join(f"{name}: {why}" for name, why in failing.items())
        raise Unavailable(detail, code="not_ready", retry_after=5)
    return ok({"status": "ready", "checks": dict.fromkeys(results, "ok")},
              headers={"Cache-Control": "no-store"})


async def prometheus_metrics() -> Response:
    svc = services()
    token = svc.settings.metrics_token
    if token:
        # RFC 7235: the scheme name is case-insensitive ("bearer" as well as "Bearer").
        scheme, _, sent = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(),
                                                                 token.encode()):
            raise AuthError("this server's metrics need its metrics token as a bearer token")
    # The default world's hosts and jobs, even when asked under /sandboxes/{id}/metrics.
    await svc.metrics.refresh(svc.metrics.source or svc.backend)
    if svc.sandboxes is not None:
        svc.metrics.sandboxes.set(len(svc.sandboxes.all()))  # all(): expired ones swept
    return Response(generate_latest(svc.metrics.registry), 200,
                    {"Cache-Control": "no-store"}, media_type=CONTENT_TYPE_LATEST)
