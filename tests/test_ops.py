"""Operability in process: health, readiness, request ids, metrics, the access log, settings."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import ConfigError, Settings
from cockpit_api.ops.logs import JsonFormatter
from tests.conftest import NODE2, SECRET, T0, FakeClock
from tests.serving import cors_allows

API = "/api/v1"
WEB_FRONTEND_01 = "d13c513a-42f8-4da1-97b1-165f0971b7c4"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of GET /metrics, parsed by prometheus_client: (name, labels) -> value."""
    r = client.get("/metrics", headers=headers or {})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ---------------------------------------------------------------- health and readiness


def test_health_and_readiness_need_no_token(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready",
                                            "checks": {"backend": "ok", "store": "ok"}}
    assert client.get("/healthz?verbose=1").status_code == 400  # strict, like the API


def test_not_ready_before_the_backend_started(app: CockpitApp) -> None:
    client = TestClient(app)  # no `with`: the lifespan (backend.start) never runs
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    body = r.json()
    assert body["code"] == "not_ready" and "backend: the backend has not started" in body["detail"]
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_a_failing_ready_check_makes_the_server_not_ready(app: CockpitApp,
                                                          client: TestClient) -> None:
    async def store_down() -> str | None:
        return "does not answer"

    app.services.ready_checks["store"] = store_down  # how the store plugs in its own check
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"] == "store: does not answer"
    del app.services.ready_checks["store"]
    assert client.get("/readyz").status_code == 200


# ---------------------------------------------------------------- request ids


def test_a_valid_request_id_is_kept_and_returned(client: TestClient,
                                                 admin: dict[str, str]) -> None:
    r = client.get(f"{API}/vms", headers={**admin, "X-Request-Id": "client-42.a:b_c"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-42.a:b_c"
    r = client.get(f"{API}/vms/00000000-0000-4000-8000-000000000000",
                   headers={**admin, "X-Request-Id": "trace-7"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "trace-7" and r.json()["request_id"] == "trace-7"
    assert int(r.headers["content-length"]) == len(r.content)


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "quote\"d", "<script>", "a;b=c", ""])
def test_an_invalid_request_id_is_replaced(client: TestClient, sent: str) -> None:
    r = client.get("/nowhere", headers={"X-Request-Id": sent})
    assert r.status_code == 404
    made = r.headers["x-request-id"]
    assert made != sent and re.fullmatch(r"[0-9a-f]{32}", made)
    assert made != client.get("/nowhere", headers={"X-Request-Id": sent}).headers["x-request-id"]
    assert r.json()["request_id"] == made


def test_every_request_gets_its_own_id(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("path", ["/api/v1/vms", "/_sim/state", "/nowhere", "/api/v1/vms?x=1"])
def test_every_problem_body_carries_the_request_id(client: TestClient, path: str) -> None:
    r = client.get(path, headers={"X-Request-Id": "p-1"})
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["request_id"] == "p-1" and r.json()["status"] == r.status_code


def test_the_request_id_is_in_the_scope_for_handlers(app: CockpitApp) -> None:
    from cockpit_api.state import REQUEST_ID_KEY

    seen: list[str] = []
    inner = app.inner.app

    async def spy(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            seen.append(scope[REQUEST_ID_KEY])
        await inner(scope, receive, send)

    app.inner.app = spy
    with TestClient(app) as client:
        client.get("/healthz", headers={"X-Request-Id": "scoped"})
    assert seen == ["scoped"]


def test_cors_lets_a_browser_send_and_read_the_request_id(client: TestClient) -> None:
    allowed, exposed = cors_allows(client, f"{API}/vms", "authorization,x-request-id",
                                   read_path="/healthz")
    assert "x-request-id" in allowed
    assert "x-request-id" in exposed


# ---------------------------------------------------------------- metrics


def test_request_series_move_by_operation_and_status(client: TestClient,
                                                     admin: dict[str, str]) -> None:
    before = scrape(client)
    client.get(f"{API}/vms", headers=admin)
    client.get(f"{API}/vms", headers=admin)
    for i in range(3):  # unbounded paths, bounded labels
        client.get(f"{API}/vms/00000000-0000-4000-8000-00000000000{i}", headers=admin)
        client.get(f"/random/{i}")
    after = scrape(client)
    diff = {k: v - before.get(k, 0.0) for k, v in after.items()}
    assert value(diff, "cockpit_http_requests_total", operation="list_vms", status="200") == 2
    assert value(diff, "cockpit_http_requests_total", operation="get_vm", status="404") == 3
    assert value(diff, "cockpit_http_requests_total", operation="other", status="404") == 3
    assert value(diff, "cockpit_http_request_duration_seconds_count",
                 operation="list_vms", status="200") == 2
    assert value(after, "cockpit_http_requests_in_flight") == 1  # the scrape itself
    operations = {dict(k[1]).get("operation") for k in after if k[0].startswith("cockpit_http")}
    assert not any("/" in str(op) for op in operations)


def test_login_failures_and_throttles_are_counted(client: TestClient) -> None:
    for _ in range(5):
        r = client.post(f"{API}/auth/login", json={"username": "admin", "password": "nope"})
        assert r.status_code == 401
    r = client.post(f"{API}/auth/login", json={"username": "admin", "password": "nope"})
    assert r.status_code == 429
    samples = scrape(client)
    assert value(samples, "cockpit_login_failures_total") == 5
    assert value(samples, "cockpit_login_throttled_total") == 1


def test_migrations_and_host_state_follow_the_cluster(client: TestClient,
                                                      admin: dict[str, str]) -> None:
    samples = scrape(client)
    assert value(samples, "cockpit_host_connected", host="vapor-node-02.corp.awan.io") == 1
    assert value(samples, "cockpit_host_connected", host="vapor-node-04.corp.awan.io") == 0
    assert value(samples, "cockpit_migrations_finished_total", outcome="completed") == 0
    r = client.post(f"{API}/vms/{WEB_FRONTEND_01}/migrate",
                    json={"destination_host_id": NODE2}, headers=admin)
    assert r.status_code == 202
    samples = scrape(client)
    assert value(samples, "cockpit_migrations_active", status="initiated") == 1
    client.post("/_sim/clock", json={"advance": 60}, headers=admin)
    samples = scrape(client)
    assert value(samples, "cockpit_migrations_active", status="initiated") == 0
    assert value(samples, "cockpit_migrations_finished_total", outcome="completed") == 1
    assert value(scrape(client), "cockpit_migrations_finished_total", outcome="completed") == 1
    client.post(f"/_sim/hosts/{NODE2}/disconnect", headers=admin)
    assert value(scrape(client), "cockpit_host_connected", host="vapor-node-02.corp.awan.io") == 0


def test_gauges_other_parts_set_and_the_store_hook(app: CockpitApp, client: TestClient) -> None:
    m = app.services.metrics
    m.feed_subscribers.inc()
    m.feed_subscribers.inc()
    m.feed_subscribers.dec()
    with m.store_timer("append_audit"):
        pass
    m.observe_libvirt_call("list domains", 0.02, True)
    samples = scrape(client)
    assert value(samples, "cockpit_feed_subscribers") == 1
    # Read from the registry at each scrape (tests/test_hostile_feed.py moves it).
    assert value(samples, "cockpit_sandboxes") == 0
    assert value(samples, "cockpit_store_call_duration_seconds_count",
                 operation="append_audit") == 1
    assert value(samples, "cockpit_libvirt_call_duration_seconds_count",
                 call="list domains", outcome="ok") == 1


def test_two_apps_keep_separate_numbers(app: CockpitApp, client: TestClient) -> None:
    other = create_app(Settings(jwt_secret=SECRET),
                       backend=SimulatedBackend(scenario.load("default"), VirtualClock(T0)),
                       auth_clock=FakeClock())
    with TestClient(other) as c2:
        for _ in range(3):
            c2.get("/healthz")
        assert value(scrape(c2), "cockpit_http_requests_total",
                     operation="healthz", status="200") == 3
    assert value(scrape(client), "cockpit_http_requests_total",
                 operation="healthz", status="200") == 0


def test_a_metrics_token_protects_the_metrics(sim: SimulatedBackend) -> None:
    app = create_app(Settings(jwt_secret=SECRET, metrics_token="scrape-me-0123456789"),
                     backend=sim, auth_clock=FakeClock())
    with TestClient(app) as client:
        r = client.get("/metrics")
        assert r.status_code == 401 and r.json()["code"] == "invalid_token"
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        samples = scrape(client, {"Authorization": "Bearer scrape-me-0123456789"})
        assert value(samples, "cockpit_http_requests_total",
                     operation="prometheus_metrics", status="401") == 2
        assert client.get("/healthz").status_code == 200  # probes stay open


# ---------------------------------------------------------------- the access log


def test_the_access_log_line_in_json(sim: SimulatedBackend, capsys: pytest.CaptureFixture[str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(jwt_secret=SECRET, access_log=True, log_format="json"),
                     backend=sim, auth_clock=FakeClock())
    with TestClient(app) as client, caplog.at_level(logging.INFO):
        r = client.post(f"{API}/auth/login",
                        json={"username": "admin", "password": "admin-secret-pw"})
        assert r.status_code == 401
        r = client.post(f"{API}/auth/login", json={"username": "admin", "password": "admin"})
        token = r.json()["token"]
        refresh = r.json()["refresh_token"]
        client.get(f"{API}/vms?status=running", headers={
            "Authorization": f"Bearer {token}", "X-Request-Id": "from-the-client"})
    # Leaving the client ran the lifespan's end, which flushes the batched lines.
    err = capsys.readouterr().err
    access = [json.loads(line) for line in err.splitlines()]
    assert all(a["logger"] == "cockpit_api.http.access" for a in access)
    mine = next(a for a in access if a["request_id"] == "from-the-client")
    assert mine["operation"] == "list_vms" and mine["status"] == 200
    assert mine["user"] == "admin" and mine["method"] == "GET" and mine["path"] == f"{API}/vms"
    assert mine["level"] == "info" and mine["duration_ms"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mine["time"])
    assert [a["status"] for a in access if a["operation"] == "login"] == [401, 200]
    fmt = JsonFormatter()
    others = "\n".join(fmt.format(r) for r in caplog.records if not r.name.startswith("httpx"))
    for secret in ("admin-secret-pw", token, refresh, "status=running"):
        assert secret not in err and secret not in others


def test_the_text_access_log_goes_through_logging(sim: SimulatedBackend,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(jwt_secret=SECRET, access_log=True), backend=sim,
                     auth_clock=FakeClock())
    with TestClient(app) as client, caplog.at_level(logging.INFO):
        client.get("/healthz", headers={"X-Request-Id": "text-1"})
    (rec,) = [r for r in caplog.records if r.name == "cockpit_api.http.access"]
    assert rec.getMessage().startswith("GET /healthz 200 ")
    assert rec.getMessage().endswith("op=healthz user=- rid=text-1")
    line = json.loads(JsonFormatter().format(rec))  # the same fields in the JSON formatter
    assert line["request_id"] == "text-1" and line["operation"] == "healthz"


def test_no_access_log_unless_asked(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        client.get("/healthz")
    assert not [r for r in caplog.records if r.name == "cockpit_api.http.access"]


# ---------------------------------------------------------------- settings


def test_the_new_settings_from_the_environment() -> None:
    s = Settings.load(env={"COCKPIT_LOG_FORMAT": "json", "COCKPIT_ACCESS_LOG": "yes",
                           "COCKPIT_METRICS_TOKEN": "t", "COCKPIT_TLS_CERT": "c.pem",
                           "COCKPIT_TLS_KEY": "k.pem"})
    assert (s.log_format, s.access_log, s.metrics_token, s.tls_cert, s.tls_key) == (
        "json", True, "t", "c.pem", "k.pem")
    with pytest.raises(ConfigError, match="access_log from COCKPIT_ACCESS_LOG: expected a boolean"):
        Settings.load(env={"COCKPIT_ACCESS_LOG": "maybe"})
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        Settings.load(env={"COCKPIT_TLS_CERT": "c.pem"})
    with pytest.raises(ConfigError, match="log_format"):
        Settings.load(env={"COCKPIT_LOG_FORMAT": "xml"})


def test_a_line_logged_inside_a_request_names_it(app: CockpitApp, client: TestClient,
                                                 admin: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_args: object) -> None:
        raise RuntimeError("the backend fell over")

    monkeypatch.setattr(app.services.backend, "list_vms", broken)
    # Formatted when emitted, as the serving process's handler does (logs.configure).
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cockpit_api")
    logger.addHandler(handler)
    try:
        r = client.get(f"{API}/vms", headers={**admin, "X-Request-Id": "boom-1"})
    finally:
        logger.removeHandler(handler)
    assert r.status_code == 500 and r.json()["request_id"] == "boom-1"
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["request_id"] == "boom-1" and line["level"] == "error"
    assert "the backend fell over" in line["exc"]


def test_the_request_layer_adds_under_5_percent_to_a_list(app: CockpitApp,
                                                           client: TestClient,
                                                           admin: dict[str, str]) -> None:
    """Counted in Python bytecodes (deterministic; bench/ops_overhead.py --bytecodes)."""
    import asyncio

    from cockpit_api.ops.logs import JsonAccessLog
    from tests.bytecodes import least_bytecodes

    layer = app.inner
    headers = [(b"host", b"testserver"), (b"authorization", admin["Authorization"].encode())]

    async def least() -> int:
        return await least_bytecodes(app, headers)

    lines = JsonAccessLog()
    lines.flush = lambda: None  # type: ignore[method-assign]  # nothing is written here
    try:
        app.inner = layer.app
        bare = asyncio.run(least())
        app.inner = layer
        layer.access_log = lines
        full = asyncio.run(least())
    finally:
        app.inner, layer.access_log = layer, None
    assert bare > 5000  # the count saw the whole request
    assert full < bare * 1.05, (bare, full)
