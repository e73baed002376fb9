"""The libvirt backend on libvirt's test driver, through the HTTP app with response
validation on (the backend itself: tests/test_libvirt_testdriver.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed: run "
                              "lab/install-deps.sh (or pip install -e '.[libvirt]')")

from starlette.testclient import TestClient  # noqa: E402

from tests.libvirt_support import (  # noqa: E402
    HOST_IDS,
    expected_vms,
    host_configs,
    libvirt_app,
    libvirt_settings,
    login_headers,
    make_backend,
)

pytestmark = pytest.mark.libvirt

API = "/api/v1"
A, B, C = HOST_IDS["node-a"], HOST_IDS["node-b"], HOST_IDS["node-c"]


@pytest.fixture
def http(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    backend = make_backend(tmp_path)
    settings = libvirt_settings(host_configs(tmp_path), tmp_path / "hosts.json")
    with TestClient(libvirt_app(settings, backend)) as client:
        yield client, login_headers(client)


def _http_vm(client: TestClient, headers: dict[str, str], name: str) -> dict[str, Any]:
    vms = client.get(f"{API}/vms?limit=1000", headers=headers).json()["vms"]
    return next(v for v in vms if v["name"] == name)


def test_http_lists_hosts_and_vms(http: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = http
    hosts = client.get(f"{API}/hosts", headers=headers).json()["hosts"]
    assert [(h["id"], h["status"]) for h in hosts] == [(A, "connected"), (B, "connected"),
                                                       (C, "connected")]
    web = _http_vm(client, headers, "web-01")
    assert web["host_id"] == A and web["also_defined_on"] == [B]
    r = client.get(f"{API}/vms?host_id={B}&status=shutoff", headers=headers).json()
    assert [v["name"] for v in r["vms"]] == ["report-01"]
    names: list[str] = []
    url = f"{API}/vms?limit=4"
    while url:
        page = client.get(url, headers=headers).json()
        names += [v["name"] for v in page["vms"]]
        url = page["next_cursor"] and f"{API}/vms?limit=4&cursor={page['next_cursor']}"
    assert names == sorted(expected_vms())
    assert client.get(f"{API}/hosts/{A}", headers=headers).json()["vm_count"] == 8


def test_http_actions_and_their_problems(http: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = http
    vm = _http_vm(client, headers, "build-01")
    url = f"{API}/vms/{vm['id']}/action"
    r = client.post(url, json={"action": "start"}, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "running"
    r = client.post(url, json={"action": "start"}, headers=headers)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "vm_running"
    for body, status in (({"action": "suspend"}, "paused"), ({"action": "suspend"}, "paused"),
                         ({"action": "resume"}, "running"), ({"action": "resume"}, "running"),
                         ({"action": "restart"}, "running"),
                         ({"action": "restart", "force": True}, "running"),
                         ({"action": "stop", "force": True}, "shutoff")):
        r = client.post(url, json=body, headers=headers)
        assert (r.status_code, r.json()["status"]) == (200, status), body
    r = client.post(url, json={"action": "stop"}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (409, "vm_not_running")
    ghost = "00000000-0000-4000-8000-000000000000"
    r = client.post(f"{API}/vms/{ghost}/action", json={"action": "start"}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (404, "vm_not_found")


def test_http_migration_to_a_test_driver_host_fails_cleanly(
        http: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = http
    vm = _http_vm(client, headers, "web-02")
    r = client.post(f"{API}/vms/{vm['id']}/migrate", headers=headers, json={
        "destination_host_id": B, "live": True, "persistent": True, "undefine_source": True,
        "copy_storage": "none"})
    assert r.status_code == 202, r.text
    mid = r.json()["migration_id"]
    assert r.headers["location"] == f"{API}/migrations/{mid}"
    deadline = time.monotonic() + 5
    while (job := client.get(f"{API}/migrations/{mid}", headers=headers).json())["status"] \
            not in ("failed", "completed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert job["status"] == "failed" and "not supported" in job["error"]
    assert _http_vm(client, headers, "web-02")["host_id"] == A
    r = client.post(f"{API}/migrations/{mid}/cancel", headers=headers)
    assert (r.status_code, r.json()["code"]) == (409, "migration_finished")
    for dest, status, code in ((A, 409, "same_host"),
                               ("019e0014-0000-7057-b326-0000000000ff", 404, "host_not_found")):
        r = client.post(f"{API}/vms/{vm['id']}/migrate", headers=headers,
                        json={"destination_host_id": dest})
        assert (r.status_code, r.json()["code"]) == (status, code)


def test_http_metrics(http: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = http
    vm = _http_vm(client, headers, "web-01")
    for path in (f"/vms/{vm['id']}/metrics", f"/hosts/{A}/metrics"):
        r = client.get(f"{API}{path}?step=1", headers=headers)
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["step"] >= 1 and all(0 <= p["cpu_percent"] <= 100 for p in s["points"])
