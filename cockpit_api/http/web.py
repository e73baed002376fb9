"""The dashboard: static files under ``/dashboard/`` and the little the page must be told.

The page itself (``cockpit_api/dashboard/``, built from ``dashboard/src`` by
``dashboard/build.py`` and committed) talks only to the public API, the change feed
and, with the simulator, the control plane. What it cannot learn from them before
logging in is served here as ``/dashboard/config.json``: which backend this is and,
with the simulator only, its demo users (to prefill the login form).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from cockpit_api.backends.base import Backend, simulator_of

STATIC = Path(__file__).resolve().parent.parent / "dashboard"
PREFIX = "/dashboard"
# The page and its scripts change with each release of the server: always revalidate.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".json": "application/json", ".svg": "image/svg+xml", ".txt": "text/plain"}


def page_config(backend: Backend) -> dict[str, Any]:
    sim = simulator_of(backend)
    scenario = sim.scenario if sim is not None else None
    # Demo users exist only with the simulator; in front of real hosts nothing is prefilled.
    users = [] if scenario is None else [
        {"username": u.username, "password": u.password, "role": u.role} for u in scenario.users]
    return {"backend": backend.info.kind, "simulator": scenario is not None,
            "demo_users": users, "api": "/api/v1", "control": "/_sim"}


def add_routes(app: Any, backend: Backend) -> None:
    """Serve the dashboard from the Connexion app's own router (outside the API's paths)."""
    config = orjson.dumps(page_config(backend))

    async def config_json(_request: Request) -> Response:
        return Response(config, media_type="application/json", headers=_HEADERS)

    async def to_dashboard(request: Request) -> Response:
        # Below a sandbox's prefix (the scope's root_path), to that sandbox's dashboard.
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return RedirectResponse(f"{root}{PREFIX}/", status_code=307)

    async def static(request: Request) -> Response:
        return _file(request.path_params.get("path", ""))

    app.add_url_rule("/", "dashboard_root", to_dashboard, methods=["GET"])
    app.add_url_rule(PREFIX, "dashboard_bare", to_dashboard, methods=["GET"])
    app.add_url_rule(f"{PREFIX}/config.json", "dashboard_config", config_json, methods=["GET"])
    app.add_url_rule(f"{PREFIX}/{{path:path}}", "dashboard_static", static,
                     methods=["GET", "HEAD"])


def _file(path: str) -> Response:
    target = (STATIC / (path or "index.html")).resolve()
    if target.is_dir():
        target = target / "index.html"
    # Only files inside the static folder, and not the TypeScript-side leftovers.
    if not target.is_relative_to(STATIC) or not target.is_file():
        raise HTTPException(404, f"no dashboard file {path!r}")
    media = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or \
        "application/octet-stream"
    return FileResponse(target, media_type=media, headers=_HEADERS)
