"""Readiness and libvirt call metrics with the libvirt backend (libvirt's test driver)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed: run "
                    "lab/install-deps.sh (or pip install -e '.[libvirt]')")

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from cockpit_api.backends.libvirt import LibvirtBackend
from cockpit_api.config import HostConfig
from tests.libvirt_support import (
    host_configs,
    libvirt_app,
    libvirt_settings,
    make_backend,
    poll,
)

pytestmark = pytest.mark.libvirt


def _samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = client.get("/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_ready_once_a_host_is_connected_and_libvirt_calls_are_timed(tmp_path: Path) -> None:
    backend = make_backend(tmp_path)
    app = libvirt_app(libvirt_settings(host_configs(tmp_path), tmp_path / "hosts.json"), backend)
    with TestClient(app) as client:
        poll(lambda: client.get("/readyz").status_code == 200, timeout=15)
        assert client.get("/readyz").json()["checks"] == {"backend": "ok", "store": "ok"}
        samples = poll(lambda: (s := _samples(client)).get(
            ("cockpit_libvirt_call_duration_seconds_count",
             frozenset({"call": "list domains", "outcome": "ok"}.items())), 0) and s, timeout=15)
        assert samples[("cockpit_host_connected", frozenset({"host": "node-a"}.items()))] == 1


def test_not_ready_while_no_host_is_connected(tmp_path: Path) -> None:
    hosts = [HostConfig("gone", f"test://{tmp_path}/no-such-node.xml")]
    backend = LibvirtBackend(hosts, state_file=str(tmp_path / "ids.json"),
                             reconnect_min_seconds=0.05, reconnect_max_seconds=0.2)
    app = libvirt_app(libvirt_settings(hosts, tmp_path / "ids.json"), backend)
    with TestClient(app) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["detail"] == "backend: no host is connected (0 of 1)"
        assert client.get("/healthz").status_code == 200
        samples = _samples(client)
        assert samples[("cockpit_host_connected", frozenset({"host": "gone"}.items()))] == 0
