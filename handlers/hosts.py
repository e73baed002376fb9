"""hosts: the physical servers."""

from __future__ import annotations

from starlette.responses import Response

from cockpit_api.handlers._common import backend, cached, feed, host_json, page_json, page_request


async def list_hosts(limit: int = 100, cursor: str | None = None) -> Response:
    page = await backend().list_hosts(page_request(limit, cursor))
    f = feed()  # read after the list: the position covers what the list shows
    return cached(page_json("hosts", page, host_json), f.position())


async def get_host(host_id: str) -> Response:
    host = await backend().get_host(host_id)
    return cached(host_json(host))
