"""sandboxes: isolated simulated worlds, made and dropped through the default world's /_sim."""

from __future__ import annotations

from connexion import request
from starlette.responses import Response

from cockpit_api.auth.service import Forbidden
from cockpit_api.handlers._common import Json, iso, no_content, ok, require_admin, services
from cockpit_api.sandboxes.registry import Sandbox, SandboxRegistry


def _registry() -> SandboxRegistry:
    require_admin()
    s = services()
    if s.sandbox_id is not None:
        # One level only: a sandbox's admin steers its own world, not the server's.
        raise Forbidden("sandboxes are managed from the default world (the root /_sim), "
                        "by its admin", "sandbox_nested")
    # the control plane is only mounted for the simulator, which has the registry
    assert isinstance(s.sandboxes, SandboxRegistry)
    return s.sandboxes


def _json(box: Sandbox) -> Json:
    # Absolute, so that a client takes it as its base URL as it is.
    base = str(request.base_url).rstrip("/") + box.path
    state = box.services.backend
    return {"id": box.id, "base_url": base, "path": box.path,
            "api_url": f"{base}/api/v1", "control_url": f"{base}/_sim",
            "expires_at": iso(box.expires_at), "created_at": iso(box.created_at),
            "last_used_at": iso(box.last_used), "ttl_seconds": box.ttl_seconds,
            "scenario": box.scenario, "label": box.label,
            "now": state.now() if hasattr(state, "now") else None}


async def create_sandbox(body: Json | None = None) -> Response:
    registry = _registry()
    body = body or {}
    source = body.get("scenario")
    box = await registry.create(
        scenario=source, seed=body.get("seed"), speed=body.get("speed"),
        clock_start=body.get("clock_start"), ttl_seconds=body.get("ttl_seconds"),
        label=body.get("label"))
    return ok(_json(box), 201, {"Location": f"/_sim/sandboxes/{box.id}"})


async def list_sandboxes() -> Response:
    registry = _registry()
    boxes = registry.all()
    return ok({"sandboxes": [_json(b) for b in boxes], "count": len(boxes),
               "max": registry.settings.sandbox_max})


async def get_sandbox(sandbox_id: str) -> Response:
    return ok(_json(_registry().get(sandbox_id)))


async def delete_sandbox(sandbox_id: str) -> Response:
    await _registry().delete(sandbox_id)
    return no_content()
