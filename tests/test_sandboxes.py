"""Sandboxes in-process: lifecycle, isolation, tokens, expiry, the cap, specs, CORS, targeting."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from cockpit_api.app import create_app
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.config import ConfigError, Settings
from tests.conftest import NODE1, NODE2, NODE3, SECRET, T0, FakeClock, login

API = "/api/v1"
WEB1 = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
WEB2 = "48a7c825-2abc-4619-a5ab-d89bd67e4d92"  # web-frontend-02, running on NODE1
DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d"  # db-primary-01, running on NODE2
BUILD1 = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off on NODE1


def _new(client: TestClient, admin: dict[str, str], **body: object) -> dict[str, str]:
    r = client.post("/_sim/sandboxes", json={"speed": 0, **body}, headers=admin)
    assert r.status_code == 201, r.text
    box: dict[str, str] = r.json()
    return box


def _enter(client: TestClient, box: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The sandbox's path prefix, and its admin's token (logged in under the sandbox)."""
    r = client.post(f"{box['path']}{API}/auth/login",
                    json={"username": "admin", "password": "admin"})
    assert r.status_code == 200, r.text
    return box["path"], {"Authorization": f"Bearer {r.json()['token']}"}


def _status(client: TestClient, base: str, h: dict[str, str], vm: str) -> str:
    status: str = client.get(f"{base}{API}/vms/{vm}", headers=h).json()["status"]
    return status


def test_create_list_get_delete(client: TestClient, admin: dict[str, str]) -> None:
    r = client.post("/_sim/sandboxes", json={"ttl_seconds": 600, "label": "checkout",
                                             "speed": 0}, headers=admin)
    assert r.status_code == 201
    box = r.json()
    assert box["base_url"] == f"http://testserver/sandboxes/{box['id']}"
    assert box["api_url"] == box["base_url"] + API and box["path"] == f"/sandboxes/{box['id']}"
    assert r.headers["location"] == f"/_sim/sandboxes/{box['id']}"
    assert box["ttl_seconds"] == 600 and box["label"] == "checkout"
    assert box["scenario"] == "default" and box["now"] == T0  # the app's clock by default
    listed = client.get("/_sim/sandboxes", headers=admin).json()
    assert [b["id"] for b in listed["sandboxes"]] == [box["id"]]
    assert listed["count"] == 1 and listed["max"] == 100
    assert client.get(f"/_sim/sandboxes/{box['id']}", headers=admin).json() == box
    # No body at all: every default.
    assert client.post("/_sim/sandboxes", headers=admin).status_code == 201
    base, h = _enter(client, box)
    assert client.get(f"{base}{API}/vms", headers=h).status_code == 200
    assert client.delete(f"/_sim/sandboxes/{box['id']}", headers=admin).status_code == 204
    r = client.get(f"{base}{API}/vms", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found"
    assert box["id"] not in r.text  # what the client sent is not quoted back
    assert client.delete(f"/_sim/sandboxes/{box['id']}", headers=admin).status_code == 404
    assert client.get(f"/_sim/sandboxes/{box['id']}", headers=admin).status_code == 404
    assert client.get("/sandboxes/0123456789abcdef/_sim/state").status_code == 404


def test_only_the_default_worlds_admin_manages_sandboxes(
        client: TestClient, admin: dict[str, str], viewer: dict[str, str]) -> None:
    assert client.post("/_sim/sandboxes", headers=viewer).status_code == 403
    assert client.get("/_sim/sandboxes", headers=viewer).status_code == 403
    assert client.post("/_sim/sandboxes").status_code == 401
    base, h = _enter(client, _new(client, admin))
    r = client.post(f"{base}/_sim/sandboxes", headers=h)
    assert r.status_code == 403 and r.json()["code"] == "sandbox_nested"
    assert client.get(f"{base}/_sim/sandboxes", headers=h).status_code == 403


def test_tokens_and_sessions_never_cross_worlds(client: TestClient,
                                                admin: dict[str, str]) -> None:
    a, ha = _enter(client, _new(client, admin))
    b, hb = _enter(client, _new(client, admin))
    assert client.get(f"{a}{API}/hosts", headers=ha).status_code == 200
    for base, h in ((a, admin), (a, hb), (b, ha), ("", ha)):
        r = client.get(f"{base}{API}/hosts", headers=h)
        assert r.status_code == 401, (base, h)
    # A refresh token is only good in the world that issued it.
    r = client.post(f"{a}{API}/auth/login", json={"username": "viewer", "password": "viewer"})
    refresh = r.json()["refresh_token"]
    r = client.post(f"{b}{API}/auth/refresh", json={"refresh_token": refresh})
    assert r.status_code == 401
    assert client.post(f"{a}{API}/auth/refresh",
                       json={"refresh_token": refresh}).status_code == 200
    # Failed logins are throttled per world: one sandbox's 429 is not another's.
    for _ in range(5):
        client.post(f"{a}{API}/auth/login", json={"username": "admin", "password": "nope"})
    assert client.post(f"{a}{API}/auth/login",
                       json={"username": "admin", "password": "admin"}).status_code == 429
    assert client.post(f"{b}{API}/auth/login",
                       json={"username": "admin", "password": "admin"}).status_code == 200


def test_worlds_do_not_see_each_others_changes(client: TestClient, admin: dict[str, str],
                                               sleeps: list[float]) -> None:
    a, ha = _enter(client, _new(client, admin))
    b, hb = _enter(client, _new(client, admin))
    # A starts a VM and a migration, arms a fault and latency; B and the root see none of it.
    client.post(f"{a}{API}/vms/{BUILD1}/action", json={"action": "start"}, headers=ha)
    r = client.post(f"{a}{API}/vms/{WEB1}/migrate", headers=ha,
                    json={"destination_host_id": NODE2})
    assert r.status_code == 202
    mid = r.json()["migration_id"]
    assert r.headers["location"] == f"{a}{API}/migrations/{mid}"
    client.post(f"{a}/_sim/faults", json={"operation": "action"}, headers=ha)
    client.post(f"{a}/_sim/latency", json={"ms": 300}, headers=ha)
    sleeps.clear()
    for base, h in ((b, hb), ("", admin)):
        assert _status(client, base, h, BUILD1) == "shutoff"
        assert client.get(f"{base}{API}/migrations", headers=h).json()["migrations"] == []
        r = client.post(f"{base}{API}/vms/{DB1}/action", json={"action": "suspend"}, headers=h)
        assert r.status_code == 200, r.text  # A's fault did not fire here
    assert sleeps == []
    state = client.get(f"{b}/_sim/state", headers=hb).json()
    assert state["faults_armed"] == 0 and state["latency_ms"] == 0
    # B resets: A's migration goes on and A's fault is still armed.
    client.post(f"{b}/_sim/reset", headers=hb)
    client.post("/_sim/reset", headers=admin)
    assert client.get(f"{a}{API}/migrations/{mid}", headers=ha).status_code == 200
    assert sleeps == [0.3]
    r = client.post(f"{a}{API}/vms/{DB1}/action", json={"action": "suspend"}, headers=ha)
    assert r.status_code == 503 and r.json()["code"] == "injected_fault"
    # B loads another scenario: A and the root keep theirs.
    tiny = {"hosts": [{"hostname": "h1"}], "vms": [{"name": "only", "host": "h1"}]}
    assert client.post(f"{b}/_sim/scenario", json={"data": tiny},
                       headers=hb).json()["vms"] == 1
    assert client.get(f"{a}/_sim/state", headers=ha).json()["vms"] == 14
    assert client.get("/_sim/state", headers=admin).json()["vms"] == 14
    # Clocks are separate: advancing A finishes A's migration only.
    client.post(f"{a}/_sim/clock", json={"advance": 60}, headers=ha)
    assert client.get(f"{a}{API}/migrations/{mid}", headers=ha).json()["status"] == "completed"
    assert client.get(f"{b}/_sim/state", headers=hb).json()["now"] == T0


def test_idle_sandboxes_expire_by_the_apps_clock(client: TestClient, admin: dict[str, str],
                                                 auth_clock: FakeClock) -> None:
    box = _new(client, admin, ttl_seconds=100)
    base, h = _enter(client, box)
    idle = _new(client, admin, ttl_seconds=100)
    auth_clock.t += 90
    # Any request into the sandbox renews it, even a refused one.
    assert client.get(f"{base}{API}/hosts", headers=h).status_code == 200
    auth_clock.t += 90
    got = client.get(f"/_sim/sandboxes/{box['id']}", headers=admin).json()
    assert got["last_used_at"] == "2027-01-15T08:01:30Z"
    assert got["expires_at"] == "2027-01-15T08:03:10Z"
    assert client.get(f"/_sim/sandboxes/{idle['id']}", headers=admin).status_code == 404
    r = client.get(f"{idle['path']}{API}/hosts", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "sandbox_not_found"
    auth_clock.t += 10
    assert client.get("/_sim/sandboxes", headers=admin).json()["count"] == 0
    assert client.get(f"{base}{API}/hosts", headers=h).status_code == 404


@pytest.fixture
def capped(sim: SimulatedBackend, auth_clock: FakeClock) -> Iterator[TestClient]:
    settings = Settings(validate_responses=True, jwt_secret=SECRET, sandbox_max=2)
    with TestClient(create_app(settings, backend=sim, auth_clock=auth_clock)) as c:
        yield c


def test_the_cap(capped: TestClient, auth_clock: FakeClock) -> None:
    admin = login(capped, "admin", "admin")
    first = _new(capped, admin, ttl_seconds=50)
    _new(capped, admin)
    r = capped.post("/_sim/sandboxes", headers=admin)
    assert r.status_code == 409 and r.json()["code"] == "sandbox_limit"
    assert "cap of 2 sandboxes" in r.json()["detail"]
    assert capped.delete(f"/_sim/sandboxes/{first['id']}", headers=admin).status_code == 204
    third = _new(capped, admin, ttl_seconds=50)
    assert capped.post("/_sim/sandboxes", headers=admin).status_code == 409
    auth_clock.t += 50  # an expired one frees its place
    assert capped.post("/_sim/sandboxes", headers=admin).status_code == 201
    assert third["id"] not in [b["id"] for b in
                               capped.get("/_sim/sandboxes", headers=admin).json()["sandboxes"]]


def test_a_vm_budget_bounds_what_all_sandboxes_hold(sim: SimulatedBackend,
                                                    auth_clock: FakeClock) -> None:
    settings = Settings(jwt_secret=SECRET, sandbox_vm_budget=20)
    with TestClient(create_app(settings, backend=sim, auth_clock=auth_clock)) as c:
        admin = login(c, "admin", "admin")
        first = _new(c, admin)  # 14 VMs
        r = c.post("/_sim/sandboxes", headers=admin)
        assert r.status_code == 409 and r.json()["code"] == "sandbox_limit"
        assert "hold 20 VMs in all; 14 are held" in r.json()["detail"]
        small = {"hosts": [{"hostname": "h"}], "vms": [{"name": "v", "host": "h"}]}
        assert c.post("/_sim/sandboxes", json={"scenario": small},
                      headers=admin).status_code == 201
        c.delete(f"/_sim/sandboxes/{first['id']}", headers=admin)
        assert c.post("/_sim/sandboxes", headers=admin).status_code == 201


def test_scenario_seed_and_clock_options(client: TestClient, admin: dict[str, str]) -> None:
    data = {"name": "tiny", "hosts": [{"hostname": "h1.example"}, {"hostname": "h2.example"}],
            "vms": [{"name": "only", "host": "h1.example", "status": "running"}]}
    box = _new(client, admin, scenario=data, seed=9, clock_start=1_700_000_000)
    assert box["scenario"] == "tiny" and box["now"] == 1_700_000_000
    base, h = _enter(client, box)  # no users in the document: the default demo users
    state = client.get(f"{base}/_sim/state", headers=h).json()
    assert (state["vms"], state["seed"], state["now_iso"]) == (1, 9, "2023-11-14T22:13:20Z")
    hosts = client.get(f"{base}{API}/hosts", headers=h).json()["hosts"]
    assert all(x["sync_cursor"] <= 1_700_000_000 for x in hosts)
    r = client.post("/_sim/sandboxes", json={"scenario": "no-such-scenario"}, headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "scenario_not_found"
    r = client.post("/_sim/sandboxes", json={"scenario": "../pyproject"}, headers=admin)
    assert r.status_code == 400
    with_users = dict(data, users=[{"username": "qa", "password": "pw", "role": "admin"}])
    qa = _new(client, admin, scenario=with_users)
    assert client.post(f"{qa['path']}{API}/auth/login",
                       json={"username": "qa", "password": "pw"}).status_code == 200
    assert client.post(f"{qa['path']}{API}/auth/login",
                       json={"username": "admin", "password": "admin"}).status_code == 401


def test_a_pinned_server_clock_pins_its_sandboxes(sim: SimulatedBackend,
                                                  auth_clock: FakeClock) -> None:
    settings = Settings(jwt_secret=SECRET, clock_start=1_750_000_000, speed=0)
    with TestClient(create_app(settings, backend=sim, auth_clock=auth_clock)) as c:
        admin = login(c, "admin", "admin")
        assert c.post("/_sim/sandboxes", headers=admin).json()["now"] == 1_750_000_000


def test_specs_and_ui_point_at_the_sandbox(client: TestClient, admin: dict[str, str]) -> None:
    base = _new(client, admin)["path"]
    assert client.get(f"{base}{API}/openapi.json").json()["servers"] == [{"url": f"{base}{API}"}]
    assert client.get(f"{base}/_sim/openapi.json").json()["servers"] == [{"url": f"{base}/_sim"}]
    assert client.get(f"{base}{API}/ui/").status_code == 200
    assert client.get(f"{API}/openapi.json").json()["servers"] == [{"url": API}]


def test_a_gone_sandboxs_specs_answer_404(client: TestClient, admin: dict[str, str]) -> None:
    """Unknown or deleted: its specs are 404 sandbox_not_found like its other URLs, and the
    answer quotes neither the id nor the path (issue 22: they answered 200, id in servers)."""
    box = _new(client, admin)
    assert client.delete(f"/_sim/sandboxes/{box['id']}", headers=admin).status_code == 204
    for sid in (box["id"], "0123456789abcdef", "<script>x</script>"):
        for spec in (f"{API}/openapi.json", f"{API}/openapi.yaml", "/_sim/openapi.json",
                     "/_sim/openapi.yaml"):
            for method in (client.get, client.head):
                r = method(f"/sandboxes/{sid}{spec}")
                assert r.status_code == 404, (sid, spec, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                if method is client.get:
                    assert r.json()["code"] == "sandbox_not_found"
                    assert sid not in r.text and "script" not in r.text


def test_405_under_a_sandbox_names_every_method(client: TestClient,
                                                admin: dict[str, str]) -> None:
    base, h = _enter(client, _new(client, admin))
    r = client.put(f"{base}/_sim/faults", headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, POST"


# ---------------------------------------------------------------- CORS


def test_cors_allows_every_declared_method_and_the_request_id(client: TestClient) -> None:
    r = client.options("/_sim/faults", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization, x-request-id"})
    assert r.status_code == 200
    assert "DELETE" in r.headers["access-control-allow-methods"]
    assert "x-request-id" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers


def test_cors_configured_headers_and_credentials(sim: SimulatedBackend) -> None:
    settings = Settings(jwt_secret=SECRET, cors_origins=["http://app.example"],
                        cors_allow_headers=["X-Trace-Id"], cors_credentials=True)
    with TestClient(create_app(settings, backend=sim)) as c:
        ask = {"Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "x-trace-id"}
        r = c.options(f"{API}/vms", headers={"Origin": "http://app.example", **ask})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://app.example"
        assert r.headers["access-control-allow-credentials"] == "true"
        r = c.options(f"{API}/vms", headers={"Origin": "http://evil.example", **ask})
        assert r.status_code == 400
    with pytest.raises(ConfigError, match="explicit cors_origins"):
        Settings.load(env={}, cors_credentials=True)
    loaded = Settings.load(env={"COCKPIT_CORS_ORIGINS": "http://a.example, http://b.example",
                                "COCKPIT_CORS_CREDENTIALS": "true",
                                "COCKPIT_SANDBOX_MAX": "7"})
    assert loaded.cors_origins == ["http://a.example", "http://b.example"]
    assert loaded.cors_credentials is True and loaded.sandbox_max == 7


# ---------------------------------------------------------------- targeted faults, latency


def test_a_fault_for_one_vm_never_fires_on_another(client: TestClient,
                                                   admin: dict[str, str]) -> None:
    r = client.post("/_sim/faults", headers=admin, json={
        "operation": "migrate", "vm_id": WEB1, "mode": "fail", "at_percent": 40,
        "message": "destination ran out of memory"})
    assert r.status_code == 200 and r.json()["faults"][0]["vm_id"] == WEB1
    other = client.post(f"{API}/vms/{WEB2}/migrate", headers=admin,
                        json={"destination_host_id": NODE2}).json()["migration_id"]
    mine = client.post(f"{API}/vms/{WEB1}/migrate", headers=admin,
                       json={"destination_host_id": NODE2}).json()["migration_id"]
    client.post("/_sim/clock", json={"advance": 60}, headers=admin)
    assert client.get(f"{API}/migrations/{other}", headers=admin).json()["status"] == "completed"
    job = client.get(f"{API}/migrations/{mine}", headers=admin).json()
    assert (job["status"], job["error"]) == ("failed", "destination ran out of memory")
    assert 39 <= job["progress"]["percent"] <= 41
    # By host: actions on VMs of NODE3 only.
    client.post("/_sim/faults", json={"operation": "action", "host_id": NODE3}, headers=admin)
    r = client.post(f"{API}/vms/{DB1}/action", json={"action": "suspend"}, headers=admin)
    assert r.status_code == 200  # on NODE2
    r = client.post(f"{API}/vms/959575fe-0a73-4d03-b43a-2c9fbed3e91c/action",
                    json={"action": "suspend"}, headers=admin)
    assert r.status_code == 503 and r.json()["code"] == "injected_fault"
    r = client.post("/_sim/faults", headers=admin,
                    json={"operation": "action", "vm_id": "00000000-0000-4000-8000-000000000000"})
    assert r.status_code == 404


def test_latency_by_path_pattern(client: TestClient, admin: dict[str, str],
                                 sleeps: list[float]) -> None:
    client.post("/_sim/latency", json={"ms": 400, "path": "/api/v1/vms/*/migrate"},
                headers=admin)
    client.post("/_sim/latency", json={"ms": 100, "path": "/api/v1/hosts*", "method": "GET"},
                headers=admin)
    client.get(f"{API}/vms", headers=admin)
    assert sleeps == []
    client.get(f"{API}/hosts/{NODE1}", headers=admin)
    client.post(f"{API}/vms/{WEB1}/migrate", json={"destination_host_id": NODE2}, headers=admin)
    assert sleeps == [0.1, 0.4]
    state = client.get("/_sim/state", headers=admin).json()
    assert {(r["path"], r["method"]) for r in state["latency_rules"]} == {
        ("/api/v1/vms/*/migrate", None), ("/api/v1/hosts*", "GET")}
    client.post("/_sim/latency", json={"ms": 0, "path": "/api/v1/hosts*", "method": "GET"},
                headers=admin)
    client.post("/_sim/reset", headers=admin)  # a reset clears every rule
    sleeps.clear()
    client.get(f"{API}/hosts/{NODE1}", headers=admin)
    assert sleeps == []


def test_migration_ids_are_not_reused_after_a_reset(client: TestClient,
                                                    admin: dict[str, str]) -> None:
    seen = set()
    for _ in range(3):
        r = client.post(f"{API}/vms/{WEB1}/migrate", json={"destination_host_id": NODE2},
                        headers=admin)
        seen.add(r.json()["migration_id"])
        client.post("/_sim/reset", headers=admin)
    assert len(seen) == 3


def test_each_world_has_its_own_change_feed(client: TestClient, admin: dict[str, str]) -> None:
    a, ha = _enter(client, _new(client, admin))
    b, hb = _enter(client, _new(client, admin))
    worlds = [(a, ha), (b, hb), ("", admin)]
    positions = [client.get(f"{base}{API}/vms", headers=h).headers["x-feed-position"]
                 for base, h in worlds]
    client.post(f"{a}{API}/vms/{BUILD1}/action", json={"action": "start"}, headers=ha)

    def events(base: str, h: dict[str, str], after: str) -> list[dict[str, object]]:
        r = client.get(f"{base}{API}/events", params={"after": after, "wait": 0},
                       headers={**h, "Accept": "application/json"})
        assert r.status_code == 200, r.text
        got: list[dict[str, object]] = r.json()["events"]
        return got

    seen = events(a, ha, positions[0])
    assert [(e["type"], e["data"]["id"], e["data"]["status"]) for e in seen  # type: ignore[index]
            if e["type"] == "vm"] == [("vm", BUILD1, "running")]
    for (base, h), after in zip(worlds[1:], positions[1:], strict=True):
        assert events(base, h, after) == []


def test_a_sandbox_s_world_is_built_from_the_same_settings(sim: SimulatedBackend,
                                                             auth_clock: FakeClock) -> None:
    """One factory builds every world (cockpit_api/world.py): a sandbox's auth service has
    the default world's settings but its own secret (it used to drop failure_window and
    audit_retention)."""
    settings = Settings(jwt_secret=SECRET, failure_window=42, audit_retention_days=3,
                        max_failures_per_user=7, token_ttl=120)
    app = create_app(settings, backend=sim, auth_clock=auth_clock)
    with TestClient(app) as client:
        box = _new(client, login(client, "admin", "admin"))
        registry = app.services.sandboxes
        assert registry is not None
        world = app.services.auth.settings
        inner = registry.route(f"{box['path']}/api/v1/vms")[1]
        assert inner is not None
        theirs = inner.services.auth.settings
        assert theirs.secret and theirs.secret != world.secret
        assert (theirs.failure_window, theirs.audit_retention) == (42, 3 * 86400)
        assert dataclasses.replace(theirs, secret=world.secret) == world
