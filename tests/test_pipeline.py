"""The compiled request pipeline (cockpit_api/http/pipeline.py) against Connexion's own stack.

Same requests, same answers, on the project's API and on a small spec built to probe
routing precedence, bodies and defaults, sync handlers and streaming; operations are
served by the compiled path (counted), everything else falls through unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from connexion.middleware import MiddlewarePosition
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from cockpit_api.app import create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from cockpit_api.http import pipeline
from tests import pipeline_app
from tests.conftest import NODE2, SECRET, T0, FakeClock

VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on vapor-node-01


# ---------------------------------------------------------------- the project's API


def _app(compiled: bool) -> Any:
    sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    return create_app(Settings(validate_responses=True, jwt_secret=SECRET,
                               compiled_pipeline=compiled),
                      backend=sim, auth_clock=FakeClock())


def _token(c: TestClient, user: str = "admin") -> dict[str, str]:
    r = c.post("/api/v1/auth/login", json={"username": user, "password": user})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


# (method, path, body or None, who): who is "admin", "viewer" or None (no token)
OPERATIONS: list[tuple[str, str, Any, str | None]] = [
    ("GET", "/api/v1/vms?limit=3", None, "admin"),
    ("GET", "/api/v1/vms?status=running&limit=2", None, "viewer"),
    ("GET", f"/api/v1/vms/{VM}", None, "viewer"),
    ("GET", "/api/v1/hosts", None, "admin"),
    ("GET", f"/api/v1/hosts/{NODE2}/metrics?step=300", None, "admin"),
    ("POST", f"/api/v1/vms/{VM}/action", {"action": "suspend"}, "admin"),
    ("POST", f"/api/v1/vms/{VM}/action", {"action": "resume"}, "viewer"),          # 403
    ("POST", f"/api/v1/vms/{VM}/migrate", {"destination_host_id": NODE2}, "admin"),  # 202
    ("GET", "/api/v1/migrations?limit=5", None, "admin"),
    ("GET", "/api/v1/vms", None, None),                                             # 401
    ("GET", "/api/v1/vms?limit=0", None, "admin"),                                  # 400
    ("GET", "/api/v1/vms?bogus=1", None, "admin"),                                  # 400 strict
    ("GET", "/api/v1/vms/not-a-uuid", None, "admin"),                               # 400
    ("GET", "/api/v1/vms/00000000-0000-4000-8000-000000000000", None, "admin"),     # 404
    ("POST", f"/api/v1/vms/{VM}/action", {"action": "explode"}, "admin"),           # 400
    ("POST", f"/api/v1/vms/{VM}/action", {"action": "start", "x": 1}, "admin"),     # 400
    ("POST", f"/api/v1/vms/{VM}/action", None, "admin"),                            # 400
    ("POST", "/api/v1/auth/refresh", {"refresh_token": "nope"}, None),              # 401
    ("GET", "/_sim/state", None, "admin"),
    ("GET", "/_sim/state", None, "viewer"),                                         # 403
]
# Not operations: served by Connexion's stack below the pipeline.
FALLTHROUGH: list[tuple[str, str]] = [
    ("GET", "/api/v1/nothing"),          # 404
    ("DELETE", "/api/v1/vms"),           # 405 with Allow
    ("HEAD", "/api/v1/vms"),             # HEAD is Starlette's, on the GET route
    ("GET", "/api/v1/vms/"),             # trailing slash: Starlette's redirect
    ("GET", "/api/v1/openapi.json"),     # the served spec
    ("GET", "/api/v1/ui/"),              # the Swagger UI
]


def _answer(r: Any) -> tuple[int, str | None, Any, dict[str, str]]:
    ctype = r.headers.get("content-type")
    body: Any = r.content
    if ctype and "json" in ctype and r.content:
        body = r.json()
        if isinstance(body, dict):
            for unique in ("token", "refresh_token", "request_id"):  # differ per app/request
                body.pop(unique, None)
    keep = {k: v for k, v in r.headers.items()
            if k in ("allow", "www-authenticate", "location", "retry-after", "cache-control")}
    return r.status_code, ctype, body, keep


def _run(compiled: bool) -> tuple[list[Any], pipeline.Stats]:
    app = _app(compiled)
    out = []
    with TestClient(app, follow_redirects=False) as c:
        tokens = {"admin": _token(c), "viewer": _token(c, "viewer")}
        for method, path, body, who in OPERATIONS:
            headers = dict(tokens[who]) if who else {}
            if body is not None:
                headers["Content-Type"] = "application/json"
            r = c.request(method, path, headers=headers,
                          content=None if body is None else json.dumps(body))
            out.append(_answer(r))
        for method, path in FALLTHROUGH:
            r = c.request(method, path, headers=tokens["admin"])
            out.append(_answer(r))
    compiled_pipeline = pipeline.of(app)
    stats = compiled_pipeline.stats if compiled_pipeline else pipeline.Stats()
    return out, stats


def test_the_api_answers_the_same_through_both_paths() -> None:
    compiled, stats = _run(True)
    connexion_stack, off = _run(False)
    for request, a, b in zip(OPERATIONS + FALLTHROUGH, compiled, connexion_stack, strict=True):  # type: ignore[operator]
        assert a == b, request
    statuses = [a[0] for a in compiled]
    assert statuses[:len(OPERATIONS)] == [200, 200, 200, 200, 200, 200, 403, 202, 200, 401,
                                          400, 400, 400, 404, 400, 400, 400, 401, 200, 403]
    assert statuses[len(OPERATIONS):] == [404, 405, 200, 307, 200, 200]
    # Two logins, then every operation on the compiled path; the rest fell through.
    assert stats.compiled == 2 + len(OPERATIONS)
    assert stats.passed == len(FALLTHROUGH)
    assert off == pipeline.Stats()


def test_every_operation_of_both_specs_is_compiled(client: TestClient) -> None:
    compiled = pipeline.of(client.app)
    assert compiled is not None and compiled.disabled_reason is None
    served = {(op.method.upper(), op.operation_id) for api in compiled.apis for op in api.ordered}
    routed = {(m, p.operation_id) for _, tables in compiled._mounts or []
              for table in tables
              for by_method in [*table.exact.values(), *(t[2] for t in table.patterns)]
              for m, p in by_method.items()}
    assert served == routed
    ids = {op_id for _, op_id in routed}
    assert {"cockpit_api.handlers.vms.list_vms", "cockpit_api.handlers.control.get_state"} <= ids
    assert len(routed) >= 20


def test_viewer_token_info_reaches_the_handler_once(client: TestClient,
                                                    viewer: dict[str, str]) -> None:
    # Security ran on the compiled path and its context reached require_admin.
    r = client.post(f"/api/v1/vms/{VM}/action", json={"action": "suspend"}, headers=viewer)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"


# ---------------------------------------------------------------- the small spec


@pytest.fixture(params=[True, False], ids=["compiled", "connexion"])
def small(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with TestClient(pipeline_app.build(compiled=request.param)) as c:
        yield c


def test_precedence_is_connexions(small: TestClient) -> None:
    # /items/{item_id} is declared before /items/special: Starlette's router (and so
    # Connexion's) gives the templated route the path; the compiled table must too.
    assert small.get("/t/items/special").json() == {"item": "special", "verbose": False}
    assert small.get("/t/items/x?verbose=true").json() == {"item": "x", "verbose": True}


def test_defaults_casts_and_bodies(small: TestClient) -> None:
    assert small.get("/t/items").json() == {"limit": 10, "tag": None}
    assert small.get("/t/items?limit=3&tag=a").json() == {"limit": 3, "tag": "a"}
    assert small.get("/t/items?limit=0").status_code == 400
    assert small.get("/t/numbers/7").json() == {"n": 7, "type": "int"}
    assert small.get("/t/numbers/x").status_code == 404  # the int convertor does not match
    auth = {"Authorization": "Bearer good"}
    r = small.post("/t/items", json={"name": "a"}, headers=auth)
    assert (r.status_code, r.json()) == (201, {"added": {"name": "a"}, "by": "tester"})
    assert small.post("/t/items", json={"name": ""}, headers=auth).status_code == 400
    assert small.post("/t/items", json={"name": "a"}).status_code == 401
    assert small.post("/t/items", content=b"name=a", headers={
        **auth, "Content-Type": "text/plain"}).status_code == 415
    assert small.get("/t/sync").json() == {"thread": "worker"}


def test_an_api_key_in_the_query_reaches_security_raw(small: TestClient) -> None:
    assert small.get("/t/keyed?key=k-1").json() == {"user": "k-1"}
    assert small.get("/t/keyed?key=a&key=k-2").json() == {"user": "k-2"}  # the last one
    assert small.get("/t/keyed?key=nope").status_code == 401
    assert small.get("/t/keyed").status_code == 401


def test_the_small_app_went_through_the_compiled_path() -> None:
    app = pipeline_app.build()
    with TestClient(app) as c:
        for path in ("/t/items/special", "/t/items", "/t/numbers/1", "/t/sync"):
            assert c.get(path).status_code == 200
        assert c.get("/t/nowhere").status_code == 404
    stats = pipeline.of(app).stats  # type: ignore[union-attr]
    assert (stats.compiled, stats.passed) == (4, 1)
    assert stats.by_operation == {"tests.pipeline_app.get_item": 1,
                                  "tests.pipeline_app.list_items": 1,
                                  "tests.pipeline_app.number": 1,
                                  "tests.pipeline_app.sync_handler": 1}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "connexion"])
def test_a_streaming_response_streams(compiled: bool) -> None:
    """The second chunk is produced only after the first one reached the client."""
    app = pipeline_app.build(compiled=compiled)

    async def scenario() -> list[bytes]:
        gate = asyncio.Event()
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # no body, never disconnects
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                gate.set()

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
                 "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/t/stream",
                 "raw_path": b"/t/stream", "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80), "test.gate": gate}
        # If the response were buffered, the generator would wait for a gate nobody
        # opens: the deadline turns that into a failure instead of a hang.
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        return chunks

    assert asyncio.run(scenario()) == [b"data: first\n\n", b"data: second\n\n"]


class _Tagging:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def test_a_middleware_the_pipeline_would_skip_is_refused_at_start_up() -> None:
    app = pipeline_app.build()
    app.add_middleware(_Tagging, position=MiddlewarePosition.BEFORE_SECURITY)
    with pytest.raises(RuntimeError, match="bypassed: _Tagging"), TestClient(app):
        pass


def test_a_middleware_above_it_is_fine() -> None:
    app = pipeline_app.build()
    app.add_middleware(_Tagging, position=MiddlewarePosition.BEFORE_EXCEPTION)
    with TestClient(app) as c:
        assert c.get("/t/items").status_code == 200
    assert pipeline.of(app).stats.compiled == 1  # type: ignore[union-attr]
