"""The HTTP API over the simulator: the reference's calls as written, errors, control plane."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.conftest import NODE1, NODE2, NODE4
from tests.seed_calls import reference_calls
from tests.serving import cors_allows

API = "/api/v1"


def _vm(client: TestClient, headers: dict[str, str], name: str) -> dict[str, object]:
    vms = client.get(f"{API}/vms?limit=1000", headers=headers).json()["vms"]
    return next(v for v in vms if v["name"] == name)


def test_the_reference_calls_as_written(client: TestClient) -> None:
    reference_calls(client)


def test_migration_progress_is_visible_while_it_runs(client: TestClient,
                                                     admin: dict[str, str]) -> None:
    vm = _vm(client, admin, "db-primary-01")  # 16 GiB: a long copy
    r = client.post(f"{API}/vms/{vm['id']}/migrate", json={"destination_host_id": NODE1},
                    headers=admin)
    mid = r.json()["migration_id"]
    client.post("/_sim/clock", json={"advance": 10}, headers=admin)
    job = client.get(f"{API}/migrations/{mid}", headers=admin).json()
    assert job["status"] == "running" and 0 < job["progress"]["percent"] < 100
    assert job["created_at"].endswith("Z") and job["finished_at"] is None
    listed = client.get(f"{API}/migrations?status=running", headers=admin).json()["migrations"]
    assert [m["id"] for m in listed] == [mid]
    assert client.get(f"{API}/vms/{vm['id']}", headers=admin).json()["migration_id"] == mid


@pytest.mark.parametrize(
    ("name", "body", "code"),
    [
        ("web-frontend-01", {"action": "start"}, "vm_running"),
        ("build-runner-01", {"action": "stop"}, "vm_not_running"),
        ("build-runner-01", {"action": "stop", "force": True}, "vm_not_running"),
    ],
)
def test_state_conflicts_are_409_problems(client: TestClient, admin: dict[str, str], name: str,
                                          body: dict[str, object], code: str) -> None:
    vm = _vm(client, admin, name)
    r = client.post(f"{API}/vms/{vm['id']}/action", json=body, headers=admin)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    p = r.json()
    assert p["code"] == code and p["status"] == 409 and p["title"] == "Conflict"
    assert p["instance"] == f"{API}/vms/{vm['id']}/action"


@pytest.mark.parametrize(
    ("name", "dest", "status", "code"),
    [
        ("web-frontend-01", NODE1, 409, "same_host"),
        ("web-frontend-01", NODE4, 409, "host_disconnected"),
        ("build-runner-01", NODE2, 409, "vm_not_running"),
        ("mail-relay-01", NODE2, 503, "host_disconnected"),
        ("web-frontend-01", "019e0014-0000-7057-b326-0000000000ff", 404, "host_not_found"),
    ],
)
def test_migrations_refused(client: TestClient, admin: dict[str, str], name: str, dest: str,
                            status: int, code: str) -> None:
    vm = _vm(client, admin, name)
    r = client.post(f"{API}/vms/{vm['id']}/migrate", json={"destination_host_id": dest},
                    headers=admin)
    assert (r.status_code, r.json()["code"]) == (status, code)
    if status == 503:
        assert int(r.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/vms/{vm}/action", {"action": "fly"}),
        ("/vms/{vm}/action", {}),
        ("/vms/{vm}/action", {"action": "start", "extra": 1}),
        ("/vms/{vm}/action", {"action": "stop", "force": "yes"}),
        ("/vms/{vm}/migrate", {"destination_host_id": "not-a-uuid"}),
        ("/vms/{vm}/migrate", {"destination_host_id": NODE2, "copy_storage": "some"}),
        ("/vms/not-a-uuid/action", {"action": "start"}),
    ],
)
def test_malformed_input_is_400(client: TestClient, admin: dict[str, str], path: str,
                                body: dict[str, object]) -> None:
    vm = _vm(client, admin, "web-frontend-01")
    r = client.post(API + path.format(vm=vm["id"]), json=body, headers=admin)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert {"type", "title", "status", "detail", "code"} <= set(r.json())


@pytest.mark.parametrize(
    "raw", [b'{"action": "\xff\xfe"}', b"\xff\xfe\x00", b'{"action": ', b"[]", b"null"])
def test_undecodable_or_wrong_bodies_are_400_not_500(client: TestClient, admin: dict[str, str],
                                                     raw: bytes) -> None:
    vm = _vm(client, admin, "web-frontend-01")
    r = client.post(f"{API}/vms/{vm['id']}/action", content=raw,
                    headers={**admin, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["status"] == 400
    # Nothing lost: the VM is as it was.
    assert client.get(f"{API}/vms/{vm['id']}", headers=admin).json()["status"] == "running"


def test_unknown_ids_are_404(client: TestClient, admin: dict[str, str]) -> None:
    ghost = "00000000-0000-4000-8000-000000000000"
    for path in (f"/vms/{ghost}", f"/hosts/{ghost}", "/migrations/abc123def456",
                 f"/vms/{ghost}/metrics"):
        r = client.get(API + path, headers=admin)
        assert r.status_code == 404 and r.json()["status"] == 404, path
    assert client.get(f"{API}/nowhere", headers=admin).json()["code"] == "not_found"


def test_unknown_query_parameters_are_refused(client: TestClient, admin: dict[str, str]) -> None:
    assert client.get(f"{API}/vms?colour=blue", headers=admin).status_code == 400


def test_pagination_over_http(client: TestClient, admin: dict[str, str]) -> None:
    names: list[str] = []
    url = f"{API}/vms?limit=5"
    while True:
        page = client.get(url, headers=admin).json()
        names += [v["name"] for v in page["vms"]]
        if page["next_cursor"] is None:
            break
        url = f"{API}/vms?limit=5&cursor={page['next_cursor']}"
    assert len(names) == 14 == len(set(names))


def test_filters_over_http(client: TestClient, admin: dict[str, str]) -> None:
    vms = client.get(f"{API}/vms?host_id={NODE1}&status=running", headers=admin).json()["vms"]
    assert vms and all(v["host_id"] == NODE1 and v["status"] == "running" for v in vms)


def test_metrics_over_http(client: TestClient, admin: dict[str, str]) -> None:
    vm = _vm(client, admin, "web-frontend-01")
    s = client.get(f"{API}/vms/{vm['id']}/metrics?step=300", headers=admin).json()
    assert s["step"] == 300 and s["resource_id"] == vm["id"] and len(s["points"]) >= 12
    h = client.get(f"{API}/hosts/{NODE1}/metrics?start=0&end=1800000000&step=1",
                   headers=admin).json()
    assert h["step"] > 1  # widened, not refused
    assert h["points"] and len(h["points"]) <= 1440


def test_cors_lets_a_browser_app_send_authorization(client: TestClient) -> None:
    allowed, exposed = cors_allows(client, f"{API}/vms", "authorization")
    assert "authorization" in allowed
    assert "www-authenticate" in exposed


def test_the_spec_and_ui_are_served(client: TestClient) -> None:
    spec = client.get(f"{API}/openapi.json").json()
    assert spec["openapi"] == "3.0.3" and "/vms/{id}/migrate" in spec["paths"]
    assert client.get(f"{API}/ui/").status_code == 200


# ---------------------------------------------------------------- control plane


def test_control_disconnect_and_reconnect(client: TestClient, admin: dict[str, str]) -> None:
    before = client.get(f"{API}/hosts/{NODE2}", headers=admin).json()["sync_cursor"]
    r = client.post(f"/_sim/hosts/{NODE2}/disconnect", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "disconnected"
    host = client.get(f"{API}/hosts/{NODE2}", headers=admin).json()
    assert host["status"] == "disconnected" and host["sync_cursor"] > before
    vm = _vm(client, admin, "db-primary-01")
    r = client.post(f"{API}/vms/{vm['id']}/action", json={"action": "stop"}, headers=admin)
    assert r.status_code == 503
    client.post(f"/_sim/hosts/{NODE2}/reconnect", headers=admin)
    r = client.post(f"{API}/vms/{vm['id']}/action", json={"action": "suspend"}, headers=admin)
    assert r.status_code == 200


def test_control_faults(client: TestClient, admin: dict[str, str]) -> None:
    r = client.post("/_sim/faults", json={"operation": "action", "status": 503,
                                          "message": "hypervisor busy"}, headers=admin)
    assert r.json()["faults_armed"] == 1
    vm = _vm(client, admin, "build-runner-01")
    r = client.post(f"{API}/vms/{vm['id']}/action", json={"action": "start"}, headers=admin)
    assert r.status_code == 503 and r.json()["detail"] == "hypervisor busy"
    r = client.post(f"{API}/vms/{vm['id']}/action", json={"action": "start"}, headers=admin)
    assert r.status_code == 200
    client.post("/_sim/faults", json={"operation": "migrate"}, headers=admin)
    assert client.delete("/_sim/faults", headers=admin).json()["faults_armed"] == 0


def test_control_latency_delays_api_answers_only(client: TestClient, admin: dict[str, str],
                                                 sleeps: list[float]) -> None:
    client.post("/_sim/latency", json={"ms": 250}, headers=admin)
    client.get(f"{API}/hosts", headers=admin)
    assert sleeps == [0.25]
    client.get("/_sim/state", headers=admin)
    assert sleeps == [0.25]


def test_control_reset_and_scenario(client: TestClient, admin: dict[str, str]) -> None:
    vm = _vm(client, admin, "build-runner-01")
    client.post(f"{API}/vms/{vm['id']}/action", json={"action": "start"}, headers=admin)
    assert client.post("/_sim/reset", headers=admin).status_code == 200
    assert client.get(f"{API}/vms/{vm['id']}", headers=admin).json()["status"] == "shutoff"
    data = {"name": "tiny", "hosts": [{"hostname": "h1.example"}, {"hostname": "h2.example"}],
            "vms": [{"name": "only", "host": "h1.example", "status": "running"}]}
    r = client.post("/_sim/scenario", json={"data": data}, headers=admin)
    assert r.status_code == 200 and r.json()["vms"] == 1
    # Users survive a scenario change: the frontend stays logged in.
    vms = client.get(f"{API}/vms", headers=admin).json()["vms"]
    assert [v["name"] for v in vms] == ["only"]
    r = client.post("/_sim/scenario", json={"name": "no-such-scenario"}, headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "scenario_not_found"
    r = client.post("/_sim/scenario", json={"data": {"hosts": [{"hostname": 3}], "vms": [1]}},
                    headers=admin)
    assert r.status_code == 400 and r.json()["code"] == "bad_request"
    bad_ref = {"hosts": [{"hostname": "h1"}], "vms": [{"name": "v", "host": "h9"}]}
    r = client.post("/_sim/scenario", json={"data": bad_ref}, headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "host_not_found"
    # Nothing lost: the failed loads left the cluster as it was.
    assert [v["name"] for v in client.get(f"{API}/vms", headers=admin).json()["vms"]] == ["only"]


def test_control_clock(client: TestClient, admin: dict[str, str]) -> None:
    t0 = client.get("/_sim/state", headers=admin).json()["now"]
    r = client.post("/_sim/clock", json={"advance": 30, "speed": 0}, headers=admin).json()
    assert r["now"] == t0 + 30 and r["speed"] == 0
