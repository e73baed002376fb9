"""migrations: start a migration, watch it, cancel it."""

from __future__ import annotations

from starlette.responses import Response

from cockpit_api.backends.base import MigrationFilter, MigrationRequest
from cockpit_api.handlers._common import (
    Json,
    backend,
    cached,
    feed,
    migration_json,
    ok,
    page_json,
    page_request,
    require_admin,
    root_path,
)


async def migrate_vm(id: str, body: Json, dry_run: bool = False) -> Response:  # noqa: A002
    require_admin()
    req = MigrationRequest(
        destination_host_id=body["destination_host_id"],
        live=body.get("live", True),
        persistent=body.get("persistent", True),
        undefine_source=body.get("undefine_source", True),
        copy_storage=body.get("copy_storage", "none"),
    )
    job = await backend().migrate(id, req, dry_run)
    if dry_run:
        # No job exists, so no id and no Location: 200, not 202 (nothing was accepted).
        return ok({"dry_run": True, "vm_id": job.vm_id, "source_host_id": job.source_host_id,
                   "destination_host_id": job.destination_host_id})
    return ok({"migration_id": job.id, "status": "initiated"}, 202,
              {"Location": f"{root_path()}/api/v1/migrations/{job.id}"})


async def list_migrations(limit: int = 100, cursor: str | None = None, vm_id: str | None = None,
                          status: str | None = None) -> Response:
    flt = MigrationFilter(vm_id=vm_id, status=status)  # type: ignore[arg-type]
    page = await backend().list_migrations(page_request(limit, cursor), flt)
    f = feed()  # read after the list: the position covers what the list shows
    return cached(page_json("migrations", page, migration_json), f.position())


async def get_migration(migration_id: str) -> Response:
    job = await backend().get_migration(migration_id)
    return cached(migration_json(job))


async def cancel_migration(migration_id: str) -> Response:
    require_admin()
    return ok(migration_json(await backend().cancel_migration(migration_id)))
