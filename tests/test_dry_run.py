"""``dry_run=true`` on POST /vms/{id}/action and /vms/{id}/migrate, over HTTP.

The backends' side (every check, nothing changed, the same answers on the
simulator and on libvirt) is in tests/test_libvirt_shared.py; here: the
answers' shapes against the spec (the app validates responses), the audit
entry marked as a dry run, refusals, and a change feed that hears nothing.
"""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from cockpit_api.backends.base import Fault
from cockpit_api.backends.sim.backend import SimulatedBackend
from tests.conftest import NODE1, NODE2, NODE4

B = "/api/v1"
WEB = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
BUILD = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off


def _world(client: TestClient, h: dict[str, str]) -> tuple[Any, ...]:
    vms = client.get(f"{B}/vms?limit=1000", headers=h)
    jobs = client.get(f"{B}/migrations?limit=1000", headers=h).json()
    hosts = client.get(f"{B}/hosts", headers=h).json()
    # X-Feed-Position is the feed's last event: no event, same position.
    return vms.json(), jobs, hosts, vms.headers["x-feed-position"]


def test_a_dry_run_action_answers_the_vm_marked_and_changes_nothing(
        client: TestClient, admin: dict[str, str]) -> None:
    before = _world(client, admin)
    r = client.post(f"{B}/vms/{WEB}/action?dry_run=true", headers=admin,
                    json={"action": "stop", "force": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["status"] == "running" and body["id"] == WEB
    assert _world(client, admin) == before
    real = client.post(f"{B}/vms/{WEB}/action", headers=admin, json={"action": "stop",
                                                                    "force": True})
    assert real.status_code == 200 and "dry_run" not in real.json()
    assert real.json()["status"] == "shutoff"


def test_a_dry_run_gets_the_refusal_the_call_would(client: TestClient,
                                                   admin: dict[str, str],
                                                   viewer: dict[str, str]) -> None:
    before = _world(client, admin)
    r = client.post(f"{B}/vms/{BUILD}/action?dry_run=true", headers=admin,
                    json={"action": "stop"})
    assert (r.status_code, r.json()["code"]) == (409, "vm_not_running")
    r = client.post(f"{B}/vms/{WEB}/migrate?dry_run=true", headers=admin,
                    json={"destination_host_id": NODE1})
    assert (r.status_code, r.json()["code"]) == (409, "same_host")
    r = client.post(f"{B}/vms/{WEB}/migrate?dry_run=true", headers=admin,
                    json={"destination_host_id": NODE4})
    assert (r.status_code, r.json()["code"]) == (409, "host_disconnected")
    r = client.post(f"{B}/vms/{WEB}/action?dry_run=true", headers=viewer,
                    json={"action": "start"})
    assert r.status_code == 403
    r = client.post(f"{B}/vms/{WEB}/action?dry_run=maybe", headers=admin,
                    json={"action": "start"})
    assert r.status_code == 400 and r.json()["errors"][0]["pointer"] == "/query/dry_run"
    assert _world(client, admin) == before


def test_a_dry_run_migration_answers_200_without_a_job(client: TestClient,
                                                       admin: dict[str, str]) -> None:
    before = _world(client, admin)
    r = client.post(f"{B}/vms/{WEB}/migrate?dry_run=true", headers=admin,
                    json={"destination_host_id": NODE2, "copy_storage": "all"})
    assert r.status_code == 200, r.text
    assert r.json() == {"dry_run": True, "vm_id": WEB, "source_host_id": NODE1,
                        "destination_host_id": NODE2}
    assert "location" not in r.headers
    assert _world(client, admin) == before
    real = client.post(f"{B}/vms/{WEB}/migrate", headers=admin,
                       json={"destination_host_id": NODE2})
    assert real.status_code == 202
    again = client.post(f"{B}/vms/{WEB}/migrate?dry_run=true", headers=admin,
                        json={"destination_host_id": NODE2})
    assert (again.status_code, again.json()["code"]) == (409, "vm_migrating")


def test_a_dry_run_meets_an_armed_fault_without_using_it(client: TestClient,
                                                         admin: dict[str, str],
                                                         sim: SimulatedBackend) -> None:
    sim.inject_fault(Fault("action", vm_id=WEB))
    for _ in range(2):
        r = client.post(f"{B}/vms/{WEB}/action?dry_run=true", headers=admin,
                        json={"action": "suspend"})
        assert (r.status_code, r.json()["code"]) == (503, "injected_fault")
    assert len(sim.faults) == 1
    r = client.post(f"{B}/vms/{WEB}/action", headers=admin, json={"action": "suspend"})
    assert r.status_code == 503 and not sim.faults


def test_the_audit_log_marks_dry_runs(client: TestClient, admin: dict[str, str]) -> None:
    client.post(f"{B}/vms/{WEB}/action?dry_run=true", headers=admin, json={"action": "suspend"})
    client.post(f"{B}/vms/{WEB}/action?dry_run=false", headers=admin,
                json={"action": "suspend"})
    client.post(f"{B}/vms/{WEB}/migrate?dry_run=TRUE", headers=admin,
                json={"destination_host_id": NODE1})
    entries = client.get(f"{B}/audit", headers=admin).json()["entries"]
    writes = [(e["operation"], e["status"], e["dry_run"]) for e in entries
              if e["operation"] != "login"]
    assert writes == [("migrate_vm", 409, True), ("vm_action", 200, False),
                      ("vm_action", 200, True)]
