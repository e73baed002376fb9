"""vms: list, get, power actions."""

from __future__ import annotations

from starlette.responses import Response

from cockpit_api.backends.base import VmFilter
from cockpit_api.handlers._common import (
    Json,
    backend,
    cached,
    feed,
    ok,
    page_json,
    page_request,
    require_admin,
    vm_json,
)


async def list_vms(limit: int = 100, cursor: str | None = None, host_id: str | None = None,
                   status: str | None = None) -> Response:
    flt = VmFilter(host_id=host_id, status=status)  # type: ignore[arg-type]
    page = await backend().list_vms(page_request(limit, cursor), flt)
    f = feed()  # read after the list: the position covers what the list shows
    return cached(page_json("vms", page, vm_json), f.position())


# The reference names the path parameter `id`; Connexion passes it by that name.
async def get_vm(id: str) -> Response:  # noqa: A002
    vm = await backend().get_vm(id)
    return cached(vm_json(vm))


async def vm_action(id: str, body: Json, dry_run: bool = False) -> Response:  # noqa: A002
    require_admin()
    vm = await backend().vm_action(id, body["action"], bool(body.get("force", False)), dry_run)
    return ok({**vm_json(vm), "dry_run": True} if dry_run else vm_json(vm))
