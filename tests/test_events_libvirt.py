"""The change feed on the libvirt backend (libvirt's test driver), over the same HTTP API.

The feed hears the libvirt backend through the same Inventory and JobTable as
the simulator's; migration progress comes from the feed's ticker polling the
jobs (the test driver cannot migrate: the job fails, as a job).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from cockpit_api.feed.changes import feed_of
from tests.libvirt_support import (
    ADMIN,
    HOST_IDS,
    LIBVIRT_MISSING,
    expected_vms,
    host_configs,
    libvirt_app,
    libvirt_settings,
    make_backend,
)
from tests.sse import AsgiStream, Frame

pytest.importorskip("libvirt", reason=LIBVIRT_MISSING)

pytestmark = pytest.mark.libvirt


def _vm(name: str) -> str:
    return next(v["id"] for v in expected_vms().values() if v["name"] == name)


def _run(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        app = libvirt_app(libvirt_settings(host_configs(tmp_path), tmp_path / "hosts.json"),
                          backend)
        await backend.start()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        try:
            r = await http.post("/api/v1/auth/login",
                                json={"username": ADMIN[0], "password": ADMIN[1]})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            await body(app, backend, http, h)
        finally:
            await http.aclose()
            await backend.close()

    asyncio.run(main())


def _vm_states(frames: list[Frame]) -> list[tuple[str, Any]]:
    return [(f.data["status"], f.data["migration_id"]) for f in frames if f.event == "vm"]


def test_power_actions_on_libvirt_are_events(tmp_path: Path) -> None:
    vm = _vm("build-01")

    async def body(app: Any, backend: Any, http: httpx.AsyncClient, h: dict[str, str]) -> None:
        position = (await http.get("/api/v1/vms", headers=h)).headers["x-feed-position"]
        async with AsgiStream(app, f"/api/v1/events?vm_id={vm}",
                              {**h, "Accept": "text/event-stream",
                               "Last-Event-ID": position}) as s:
            for action in ("start", "suspend", "resume"):
                r = await http.post(f"/api/v1/vms/{vm}/action", headers=h,
                                    json={"action": action})
                assert r.status_code == 200
            r = await http.post(f"/api/v1/vms/{vm}/action", headers=h,
                                json={"action": "stop", "force": True})
            got = await s.frames(4, kinds=["vm"], timeout=10)
        assert [st for st, _ in _vm_states(got)] == ["running", "paused", "running", "shutoff"]
        assert got[-1].data == (await http.get(f"/api/v1/vms/{vm}", headers=h)).json()

    _run(tmp_path, body)


def test_a_failing_libvirt_migration_is_a_job_in_the_feed(tmp_path: Path) -> None:
    vm = _vm("web-02")

    async def body(app: Any, backend: Any, http: httpx.AsyncClient, h: dict[str, str]) -> None:
        feed = feed_of(backend)
        feed.progress_seconds = 0.02
        async with AsgiStream(app, f"/api/v1/events?vm_id={vm}",
                              {**h, "Accept": "text/event-stream"}) as s:
            r = await http.post(f"/api/v1/vms/{vm}/migrate", headers=h,
                                json={"destination_host_id": HOST_IDS["node-b"]})
            assert r.status_code == 202
            got: list[Frame] = []
            async with asyncio.timeout(10):
                while not any(f.event == "migration" and f.data["status"] == "failed"
                              for f in got):
                    got += await s.frames(1, kinds=["vm", "migration"], timeout=10)
                while not any(f.event == "vm" and f.data["migration_id"] is None for f in got):
                    got += await s.frames(1, kinds=["vm", "migration"], timeout=10)
        jobs = [f.data["status"] for f in got if f.event == "migration"]
        assert jobs[0] == "initiated" and jobs[-1] == "failed"
        assert _vm_states(got)[0] == ("running", r.json()["migration_id"])
        assert _vm_states(got)[-1] == ("running", None)
        # The job's final state comes before the VM it let go of.
        kinds = [(f.event, f.data["status"]) for f in got]
        assert kinds.index(("migration", "failed")) < len(kinds) - 1

    _run(tmp_path, body)
