"""The dashboard's serving (cockpit_api/http/web.py): static files, config, redirects, the CLI
line."""

from __future__ import annotations

import sys

from starlette.testclient import TestClient

from tests.serving import free_port, serve_process


def test_the_dashboard_is_served_at_dashboard(client: TestClient) -> None:
    r = client.get("/dashboard/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="js/main.js">' in r.text
    js = client.get("/dashboard/js/main.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/dashboard/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert "MIT" in client.get("/dashboard/vendor/uplot/LICENSE").text
    assert client.get("/dashboard/style.css").headers["content-type"].startswith("text/css")


def test_bare_paths_lead_to_the_dashboard(client: TestClient) -> None:
    for path in ("/", "/dashboard"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/dashboard/"


def test_only_the_dashboards_own_files(client: TestClient) -> None:
    for path in ("/dashboard/nope.js", "/dashboard/..%2f..%2fopenapi.yaml",
                 "/dashboard/%2e%2e/%2e%2e/pyproject.toml"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/problem+json")


def test_the_simulator_tells_the_page_its_demo_users(client: TestClient) -> None:
    config = client.get("/dashboard/config.json").json()
    assert config["simulator"] is True and config["backend"] == "sim"
    assert {"username": "admin", "password": "admin", "role": "admin"} in config["demo_users"]


def test_serve_prints_the_dashboard_address() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
            "--log-level", "warning"]
    with serve_process(argv, port) as server:
        assert f"Dashboard  http://127.0.0.1:{port}/dashboard/" in server.log()


def test_no_demo_users_in_front_of_real_hosts() -> None:
    from types import SimpleNamespace

    from cockpit_api.http.web import page_config

    real = SimpleNamespace(info=SimpleNamespace(kind="libvirt"))
    config = page_config(real)  # type: ignore[arg-type]
    assert config["simulator"] is False and config["demo_users"] == []


def test_a_sandbox_has_its_own_dashboard(client: TestClient, admin: dict[str, str]) -> None:
    r = client.post("/_sim/sandboxes", headers=admin)
    assert r.status_code == 201, r.text
    path = r.json()["path"]
    r = client.get(f"{path}/dashboard", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"{path}/dashboard/"
    assert '<script type="module" src="js/main.js">' in client.get(f"{path}/dashboard/").text
