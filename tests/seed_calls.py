"""The API reference's calls, as one function: run in-process (tests/test_api.py) and against
an installed wheel served from another directory (tests/test_wheel.py)."""

from __future__ import annotations

from typing import Any

from tests.conftest import NODE1, NODE2

API = "/api/v1"


def _vm(client: Any, headers: dict[str, str], name: str, api: str = API) -> dict[str, Any]:
    vms = client.get(f"{api}/vms?limit=1000", headers=headers).json()["vms"]
    return next(v for v in vms if v["name"] == name)


def reference_calls(client: Any, api: str = API) -> None:
    """The reference's calls (its numbered steps) with its payloads as written, on the
    default scenario: ``client`` is a Starlette TestClient or an httpx.Client."""
    # 2. Log in with the payload as the reference writes it.
    r = client.post(f"{api}/auth/login", json={"username": "admin", "password": "admin"},
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    body = r.json()
    headers = {"Authorization": f"Bearer {body['token']}", "Content-Type": "application/json"}
    # Refresh with the reference payload.
    r = client.post(f"{api}/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert r.status_code == 200 and set(r.json()) == {"token", "refresh_token", "expires_in"}
    refresh = r.json()["refresh_token"]
    # 3. GET /hosts: {"hosts": [{id, hostname, status, sync_cursor}]}, the reference's host first.
    hosts = client.get(f"{api}/hosts", headers=headers).json()["hosts"]
    assert {"id", "hostname", "status", "sync_cursor"} <= set(hosts[0])
    assert hosts[0]["id"] == NODE1 and hosts[0]["hostname"] == "vapor-node-01.corp.awan.io"
    assert isinstance(hosts[0]["sync_cursor"], int)
    # 4. GET /vms, start one, force-stop it: the next GET shows each change.
    off = _vm(client, headers, "build-runner-01", api)
    r = client.post(f"{api}/vms/{off['id']}/action", json={"action": "start"}, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert client.get(f"{api}/vms/{off['id']}", headers=headers).json()["status"] == "running"
    r = client.post(f"{api}/vms/{off['id']}/action", json={"action": "stop", "force": True},
                    headers=headers)
    assert r.status_code == 200
    assert client.get(f"{api}/vms/{off['id']}", headers=headers).json()["status"] == "shutoff"
    # Migrate with the reference's payload, exactly.
    vm = _vm(client, headers, "web-frontend-01", api)
    assert vm["host_id"] == NODE1
    r = client.post(f"{api}/vms/{vm['id']}/migrate", headers=headers, json={
        "destination_host_id": "019e0014-ffff-7057-b326-000000000002",
        "live": True, "persistent": True, "undefine_source": True, "copy_storage": "none"})
    assert r.status_code == 202
    assert r.json()["status"] == "initiated" and isinstance(r.json()["migration_id"], str)
    mid = r.json()["migration_id"]
    assert r.headers["location"] == f"{api}/migrations/{mid}"
    assert client.post("/_sim/clock", json={"advance": 60}, headers=headers).status_code == 200
    job = client.get(f"{api}/migrations/{mid}", headers=headers).json()
    assert job["status"] == "completed"
    assert client.get(f"{api}/vms/{vm['id']}", headers=headers).json()["host_id"] == NODE2
    # Performance logs of the VM and of a host, then log out (the refreshed token's session).
    r = client.get(f"{api}/vms/{vm['id']}/metrics?step=300", headers=headers)
    assert r.status_code == 200 and r.json()["resource_id"] == vm["id"]
    r = client.get(f"{api}/hosts/{NODE1}/metrics", headers=headers)
    assert r.status_code == 200 and r.json()["resource_id"] == NODE1
    assert client.post(f"{api}/auth/logout", json={"refresh_token": refresh}).status_code == 204
    assert client.post(f"{api}/auth/refresh", json={"refresh_token": refresh}).status_code == 401
