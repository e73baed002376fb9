"""`cockpit-api snapshot` of the served libvirt backend on the lab (real libvirtd + QEMU).

After real live migrations (lab-vm-01 to node 2 and back, three times), the snapshot is served
by the simulator: every GET of hosts, VM pages and VMs answers the same ids, names,
states and placement as the lab, and a migration of the snapshotted VM on the mock
takes within 25 % of the lab's warm median (job timestamps; the mock's are virtual).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed: run lab/install-deps.sh")
if os.geteuid() != 0:
    pytest.skip("the libvirt lab needs root (it makes network and mount namespaces)",
                allow_module_level=True)
if any(shutil.which(t) is None for t in ("libvirtd", "virsh", "qemu-system-x86_64")):
    pytest.skip("the lab's Debian packages are missing: run lab/install-deps.sh",
                allow_module_level=True)

from tests.lab_support import NODE1, NODE2, TIMINGS
from tests.libvirt_support import write_serve_config
from tests.serving import free_port, serve_process
from tests.test_snapshot import snapshot

pytestmark = [pytest.mark.lab, pytest.mark.libvirt]
VM = "lab-vm-01"
MIGRATE = {"live": True, "persistent": True, "undefine_source": True, "copy_storage": "none"}


class Client:
    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        r = httpx.post(f"{base}/api/v1/auth/login", json={"username": user,
                                                            "password": password})
        assert r.status_code == 200, r.text
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}

    def get(self, path: str) -> Any:
        r = httpx.get(self.base + "/api/v1" + path, headers=self.h, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any, prefix: str = "/api/v1") -> httpx.Response:
        return httpx.post(self.base + prefix + path, json=body, headers=self.h, timeout=60)

    def vm(self, name: str) -> dict[str, Any]:
        return next(v for v in self.get("/vms?limit=1000")["vms"] if v["name"] == name)

    def host_id(self, name: str) -> str:
        return next(h["id"] for h in self.get("/hosts")["hosts"] if h["hostname"] == name)

    def migrate(self, name: str, dest: str, wait: Any) -> dict[str, Any]:
        r = self.post(f"/vms/{self.vm(name)['id']}/migrate",
                      {"destination_host_id": self.host_id(dest), **MIGRATE})
        assert r.status_code == 202, r.text
        mid = r.json()["migration_id"]
        job = wait(lambda: (j := self.get(f"/migrations/{mid}"))["status"]
                   in ("completed", "failed", "cancelled") and j)
        assert job["status"] == "completed", job
        return dict(job)


def _took(job: dict[str, Any]) -> float:
    def t(k: str) -> float:
        return datetime.fromisoformat(job[k].replace("Z", "+00:00")).timestamp()
    return t("finished_at") - t("created_at")


def _poll(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)  # polling real daemons, bounded by the deadline
    raise AssertionError("timed out")


def _view(c: Client) -> tuple[Any, ...]:
    hosts = [(h["id"], h["hostname"], h["status"]) for h in c.get("/hosts")["hosts"]]
    pages, cursor = [], None
    while True:  # small pages: the paging itself is compared too
        page = c.get("/vms?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        pages.append([(v["id"], v["name"], v["status"], v["host_id"]) for v in page["vms"]])
        cursor = page["next_cursor"]
        if not cursor:
            break
    one = sorted((v["id"], v["name"], v["status"], v["host_id"])
                 for v in (c.get(f"/vms/{vid}") for p in pages for vid, *_ in p))
    return hosts, pages, one


def test_a_snapshot_of_the_lab_serves_like_the_lab(lab_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    t0 = time.monotonic()
    config = write_serve_config(
        tmp_path, [(NODE1, lab_env["LAB_NODE1_URI"]), (NODE2, lab_env["LAB_NODE2_URI"])],
        "sample_seconds = 0.5\n")
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--config", str(config),
            "--port", str(port), "--log-level", "warning"]
    with serve_process(argv, port, timeout=60) as lab:
        c = Client(lab.base, "qa", "qa-password")
        if c.vm(VM)["status"] != "running":
            assert c.post(f"/vms/{c.vm(VM)['id']}/action", {"action": "start"}).status_code == 200
        _poll(lambda: c.vm(VM)["status"] == "running")
        # Three times each way. The first is cold (the destination's first incoming QEMU,
        # see test_libvirt_lab.py); the snapshot fits each pair's median.
        there, back = [], []
        for _ in range(3):
            there.append(c.migrate(VM, NODE2, _poll))
            back.append(c.migrate(VM, NODE1, _poll))
        _poll(lambda: c.vm(VM)["host_id"] == c.host_id(NODE1) and c.vm(VM)["migration_id"] is None)
        out = tmp_path / "lab.yaml"
        p = snapshot(lab.base, "-o", str(out), user="qa", password="qa-password")
        assert p.returncode == 0, p.stderr
        source_view = _view(c)
        lab_took = [_took(j) for j in there[1:]]
        # Leave the lab as the other lab tests expect it.
        assert c.post(f"/vms/{c.vm(VM)['id']}/action",
                      {"action": "stop", "force": True}).status_code == 200
    text = out.read_text(encoding="utf-8")
    assert "qa-password" not in text and "password_hash" not in text
    with serve_process([sys.executable, "-m", "cockpit_api.cli", "serve", "--scenario", str(out),
                        "--port", str(port := free_port()), "--speed", "0",
                        "--log-level", "warning"], port) as mock:
        m = Client(mock.base, "admin", "admin")
        assert _view(m) == source_view
        job = m.migrate(VM, NODE2, lambda check: (
            m.post("/clock", {"advance": 3600}, prefix="/_sim"), _poll(check))[1])
        mock_took = _took(job)
    TIMINGS["snapshot_lab_migration_s"] = [round(t, 3) for t in lab_took]
    TIMINGS["snapshot_mock_migration_s"] = round(mock_took, 3)
    TIMINGS["snapshot_lab_test_s"] = round(time.monotonic() - t0, 1)
    # Sub-second migrations on the lab vary by a third from one to the next: the mock plays
    # the pair's typical (median) one, so compare with the warm ones' median.
    warm = statistics.median(lab_took)
    assert mock_took == pytest.approx(warm, rel=0.25), (lab_took, mock_took, back)
