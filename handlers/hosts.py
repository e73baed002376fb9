"""hosts: the physical servers."""

from __future__ import annotations

from starlette.responses import Response

from handlers._common import backend, host_json, ok, page_json, page_request


async def list_hosts(limit: int = 100, cursor: str | None = None) -> Response:
    page = await backend().list_hosts(page_request(limit, cursor))
    return ok(page_json("hosts", page, host_json))


async def get_host(host_id: str) -> Response:
    return ok(host_json(await backend().get_host(host_id)))
