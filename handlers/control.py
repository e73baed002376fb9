"""control: the simulator's control plane (mounted only with the simulated backend)."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from cockpit_api.backends.base import Fault, NotFound, Simulator
from cockpit_api.backends.sim import scenario as scenarios
from cockpit_api.handlers._common import Json, host_json, ok, require_admin, services


def _sim() -> Simulator:
    require_admin()
    sim = services().sim
    assert sim is not None  # the control API is only mounted for the simulator
    return sim


async def get_state() -> Response:
    return ok(_sim().summary())


async def reset() -> Response:
    sim = _sim()
    svc = services()
    if svc.sandboxes is not None and svc.sandbox_id is not None:
        svc.sandboxes.admit_reset(svc.sandbox_id)  # within the sandboxes' VM budget
    # Built in a thread (100,000 VMs: ~0.8 s), installed here on the loop.
    sim.reset(built=await asyncio.to_thread(sim.build_reset))
    # Back to the start includes login throttling (sessions stay: the caller keeps its token).
    await asyncio.to_thread(services().auth.reset_throttling)
    return ok(sim.summary())


async def load_scenario(body: Json) -> Response:
    sim = _sim()
    data = body.get("data")
    svc = services()
    if svc.sandboxes is not None and svc.sandbox_id is not None:
        # A sandbox: sized before it is built, against the budget all sandboxes share.
        loaded_sim = await svc.sandboxes.load(svc.sandbox_id, name=body.get("name"), data=data)
        return ok(loaded_sim.summary())
    if data is not None:
        loaded = await asyncio.to_thread(scenarios.load, data)
    else:
        # Only scenarios/NAME.yaml: a bare name never reaches a file elsewhere.
        name = body.get("name", "default")
        path = scenarios.SCENARIO_DIR / f"{name}.yaml"
        if not path.is_file():
            raise NotFound(f"no scenario named {name}", code="scenario_not_found")
        loaded = await asyncio.to_thread(scenarios.load, path)
    sim.reset(loaded, built=await asyncio.to_thread(sim.build_reset, loaded))
    return ok(sim.summary())


async def disconnect_host(host_id: str) -> Response:
    return ok(host_json(_sim().set_host_status(host_id, "disconnected")))


async def reconnect_host(host_id: str) -> Response:
    return ok(host_json(_sim().set_host_status(host_id, "connected")))


async def add_fault(body: Json) -> Response:
    sim = _sim()
    sim.inject_fault(Fault(
        operation=body["operation"], mode=body.get("mode", "reject"),
        status=body.get("status", 503), message=body.get("message", "injected fault"),
        at_percent=float(body.get("at_percent", 50)), remaining=body.get("count", 1),
        vm_id=body.get("vm_id"), host_id=body.get("host_id"),
    ))
    return ok(sim.summary())


async def clear_faults() -> Response:
    sim = _sim()
    sim.faults.clear()
    return ok(sim.summary())


async def set_latency(body: Json) -> Response:
    sim = _sim()
    sim.set_latency(int(body["ms"]), body.get("path"), body.get("method"))
    return ok(sim.summary())


async def set_clock(body: Json) -> Response:
    sim = _sim()
    if body.get("speed") is not None:
        sim.clock.speed = float(body["speed"])
    if body.get("advance"):
        sim.advance(float(body["advance"]))
    return ok(sim.summary())
