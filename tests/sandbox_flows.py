"""Conflicting flows over real HTTP, each asserting it sees only its own world.

Used by the thread test (tests/test_sandboxes_served.py) and by the parallel
pytest workers (tests/sandbox_worker.py). Every flow resets its world, arms
faults and latency, migrates and acts, with the virtual clock frozen and moved
by hand; were anything shared with another world, a reset would 404 a running
migration, a fault would fire in the wrong flow, or a list would show a job
that flow never started.
"""

from __future__ import annotations

from typing import Any

import httpx

API = "/api/v1"
NODE1 = "019e0014-abcd-7057-b326-000000000001"
NODE2 = "019e0014-ffff-7057-b326-000000000002"
NODE3 = "019e0014-1a2b-7057-b326-000000000003"
WEB1 = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
WEB2 = "48a7c825-2abc-4619-a5ab-d89bd67e4d92"  # web-frontend-02, running on NODE1
DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d"  # db-primary-01, running on NODE2
BUILD1 = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off on NODE1
BUILD2 = "4630de19-bf77-438d-8b9b-7cefad989a70"  # build-runner-02, shut off on NODE2


class World:
    """One world (the root, or a sandbox) seen through its base URL, logged in as admin."""

    def __init__(self, base: str, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=timeout)
        r = self.http.post(f"{API}/auth/login", json={"username": "admin", "password": "admin"})
        assert r.status_code == 200, r.text
        self.http.headers["Authorization"] = f"Bearer {r.json()['token']}"

    def call(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        r = self.http.request(method, path, json=json)
        assert r.status_code == expect, f"{method} {self.base}{path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def sim(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        return self.call(method, f"/_sim{path}", json, expect)

    def vm(self, vm_id: str) -> dict[str, Any]:
        vm: dict[str, Any] = self.call("GET", f"{API}/vms/{vm_id}")
        return vm

    def migrations(self) -> set[str]:
        page = self.call("GET", f"{API}/migrations?limit=1000")
        return {m["id"] for m in page["migrations"]}

    def migrate(self, vm_id: str, dest: str) -> str:
        mid: str = self.call("POST", f"{API}/vms/{vm_id}/migrate",
                             {"destination_host_id": dest}, expect=202)["migration_id"]
        return mid

    def close(self) -> None:
        self.http.close()


def new_sandbox(root: World, label: str) -> World:
    """A sandbox made by the default world's admin, frozen clock, logged into."""
    box = root.sim("POST", "/sandboxes", {"speed": 0, "label": label}, expect=201)
    return World(box["base_url"])


def migrations_flow(w: World, tag: str, rounds: int) -> None:
    """Reset, a fault aimed at one VM, two migrations, an action: each round the same."""
    for i in range(rounds):
        state = w.sim("POST", "/reset")
        assert (state["faults_armed"], state["migrations_active"]) == (0, 0), state
        message = f"{tag} round {i}"
        w.sim("POST", "/faults", {"operation": "migrate", "vm_id": WEB1, "mode": "fail",
                                  "at_percent": 40, "message": message})
        w.sim("POST", "/latency", {"ms": 1, "path": "/api/v1/hosts*"})
        failing, moving = w.migrate(WEB1, NODE2), w.migrate(WEB2, NODE3)
        w.sim("POST", "/clock", {"advance": 60})
        job = w.call("GET", f"{API}/migrations/{failing}")
        assert (job["status"], job["error"]) == ("failed", message), job
        assert w.call("GET", f"{API}/migrations/{moving}")["status"] == "completed"
        assert w.vm(WEB1)["host_id"] == NODE1 and w.vm(WEB2)["host_id"] == NODE3
        assert w.call("POST", f"{API}/vms/{BUILD1}/action", {"action": "start"})["status"] \
            == "running"
        assert w.migrations() == {failing, moving}
        state = w.sim("GET", "/state")
        assert state["faults_armed"] == 0 and len(state["latency_rules"]) == 1, state


def actions_flow(w: World, tag: str, rounds: int) -> None:
    """Reset, a fault on every action, a host lost and back, one migration: each round."""
    for i in range(rounds):
        w.sim("POST", "/reset")
        message = f"{tag} round {i}"
        w.sim("POST", "/faults", {"operation": "action", "count": 2, "message": message})
        for _ in range(2):
            r = w.call("POST", f"{API}/vms/{BUILD2}/action", {"action": "start"}, expect=503)
            assert r["detail"] == message, r
        w.call("POST", f"{API}/vms/{BUILD2}/action", {"action": "start"})
        w.sim("POST", f"/hosts/{NODE2}/disconnect")
        assert w.call("GET", f"{API}/hosts/{NODE2}")["status"] == "disconnected"
        w.sim("POST", f"/hosts/{NODE2}/reconnect")
        mid = w.migrate(DB1, NODE3)
        w.sim("POST", "/clock", {"advance": 120})
        assert w.call("GET", f"{API}/migrations/{mid}")["status"] == "completed"
        assert w.vm(DB1)["host_id"] == NODE3 and w.vm(BUILD2)["status"] == "running"
        assert w.vm(BUILD1)["status"] == "shutoff"  # the other flow's start is not here
        assert w.migrations() == {mid}
        assert w.sim("GET", "/state")["latency_rules"] == []


def noisy_root_flow(root: World, rounds: int) -> None:
    """The default world doing what would break the others were it shared with them."""
    for _ in range(rounds):
        root.sim("POST", "/reset")
        root.sim("POST", "/faults", {"operation": "action", "count": 1000, "message": "root"})
        root.sim("POST", "/faults", {"operation": "migrate", "count": 1000, "mode": "fail",
                                     "at_percent": 1})
        root.sim("POST", "/latency", {"ms": 1})
        root.sim("POST", "/clock", {"advance": 5})
