"""Operability of a real `cockpit-api serve` process: a Prometheus scrape, JSON logs, TLS."""

from __future__ import annotations

import json
import ssl
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NODE2
from tests.serving import free_port, serve_process

WEB_FRONTEND_01 = "d13c513a-42f8-4da1-97b1-165f0971b7c4"
NODE2_NAME = "vapor-node-02.corp.awan.io"


def _serve_argv(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port), *args]


def _scrape(http: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
         **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_a_scrape_follows_requests_a_migration_and_a_host_loss_and_logs_are_json() -> None:
    port = free_port()
    argv = _serve_argv(port, "--speed", "0", "--log-format", "json", "--access-log")
    with serve_process(argv, port) as server, httpx.Client(base_url=server.base,
                                                           timeout=10) as http:
        first = _scrape(http)
        r = http.post("/api/v1/auth/login", json={"username": "admin", "password": "admin"})
        token = r.json()["token"]
        admin = {"Authorization": f"Bearer {token}"}
        r = http.get("/api/v1/vms", headers={**admin, "X-Request-Id": "served-rid-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "served-rid-1"
        r = http.post(f"/api/v1/vms/{WEB_FRONTEND_01}/migrate",
                      json={"destination_host_id": NODE2}, headers=admin)
        assert r.status_code == 202
        during = _scrape(http)
        assert http.post("/_sim/clock", json={"advance": 60}, headers=admin).status_code == 200
        after = _scrape(http)
        assert http.post(f"/_sim/hosts/{NODE2}/disconnect", headers=admin).status_code == 200
        lost = _scrape(http)
        # Access lines are written in batches within 0.1 s: wait for ours, bounded.
        deadline = time.monotonic() + 10
        while "served-rid-1" not in (log := server.log()) and time.monotonic() < deadline:
            time.sleep(0.05)

    ok = ("cockpit_http_requests_total", {"operation": "list_vms", "status": "200"})
    assert _get(first, ok[0], **ok[1]) == 0 and _get(after, ok[0], **ok[1]) == 1
    assert _get(after, "cockpit_http_request_duration_seconds_count",
                operation="migrate_vm", status="202") == 1
    assert _get(during, "cockpit_migrations_active", status="initiated") == 1
    assert _get(during, "cockpit_migrations_finished_total", outcome="completed") == 0
    assert _get(after, "cockpit_migrations_active", status="initiated") == 0
    assert _get(after, "cockpit_migrations_finished_total", outcome="completed") == 1
    assert _get(after, "cockpit_host_connected", host=NODE2_NAME) == 1
    assert _get(lost, "cockpit_host_connected", host=NODE2_NAME) == 0
    assert _get(lost, "process_resident_memory_bytes") > 0

    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    access = [e for e in lines if e["logger"] == "cockpit_api.http.access"]
    mine = [e for e in access if e.get("request_id") == "served-rid-1"]
    assert len(mine) == 1
    assert {k: mine[0][k] for k in ("method", "path", "operation", "status", "user")} == {
        "method": "GET", "path": "/api/v1/vms", "operation": "list_vms", "status": 200,
        "user": "admin"}
    assert not [e for e in lines if e["logger"] == "uvicorn.access"]  # ours replaces it
    assert token not in log and '"password"' not in log


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca, chain, key


def test_tls_on_loopback(tls_files: tuple[trustme.CA, Path, Path]) -> None:
    ca, chain, key = tls_files
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    port = free_port()
    argv = _serve_argv(port, "--tls-cert", str(chain), "--tls-key", str(key))
    with serve_process(argv, port, scheme="https", verify=trusted) as server:
        assert server.base.startswith("https://")
        with httpx.Client(base_url=server.base, verify=trusted, timeout=10) as https:
            assert https.get("/healthz").status_code == 200
            r = https.post("/api/v1/auth/login", json={"username": "admin", "password": "admin"})
            assert r.status_code == 200
            r = https.get("/api/v1/hosts", headers={"Authorization": f"Bearer {r.json()['token']}"})
            assert r.status_code == 200 and len(r.json()["hosts"]) == 4
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.base}/healthz", timeout=5)  # the system store does not know it
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # no plain HTTP on it
        assert f"https://127.0.0.1:{port}/api/v1" in server.log()
