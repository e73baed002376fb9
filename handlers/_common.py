"""What every handler module shares: the request's services, role checks, JSON shapes."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from connexion import context, request
from starlette.responses import Response

from cockpit_api.auth.service import Forbidden
from cockpit_api.backends.base import Backend, Host, MetricSeries, Migration, Page, PageRequest, Vm
from cockpit_api.feed.changes import Feed, feed_of
from cockpit_api.state import Services, services_of

Json = dict[str, Any]


def ok(body: Json, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, built here rather than by Connexion.

    Operations declare both application/json and application/problem+json, and
    Connexion answers 500 unless told which one a handler returns; building the
    response also skips its second serialisation pass.
    """
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def no_content() -> Response:
    return Response(status_code=204)


def services() -> Services:
    return services_of(context.scope)


def backend() -> Backend:
    return services_of(context.scope).backend


def root_path() -> str:
    """The request's world: "" at the root, ``/sandboxes/{id}`` in a sandbox (for Location)."""
    root: str = context.scope.get("root_path", "")
    return root.rstrip("/")


def feed() -> Feed:
    return feed_of(services_of(context.scope).backend)


def state_tag(f: Feed, jobs: Iterable[Migration] = ()) -> str:
    """A strong ETag from the state's version: the feed's stream and last event.

    Every change of a host or VM is an event, so the same tag means the same
    answer. A running job's progress moves between events: its status and bytes
    copied are part of the tag.
    """
    progress = [(m.id, m.status, m.progress.data_processed_bytes) for m in jobs]
    tail = f"-{zlib.crc32(repr(progress).encode()):08x}" if progress else ""
    return f'"{f.epoch}-{f.seq}{tail}"'


def _matches(if_none_match: str, tag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    # RFC 9110 13.1.2: If-None-Match compares weakly (a W/ prefix does not matter).
    return any(t.strip().removeprefix("W/") == tag for t in if_none_match.split(","))


def cached(build: Callable[[], Json], tag: str, position: str | None = None) -> Response:
    """200 with ``ETag`` (and ``X-Feed-Position`` for lists), or 304 if the client has it."""
    headers = {"ETag": tag}
    if position is not None:
        headers["X-Feed-Position"] = position
    sent = request.headers.get("if-none-match")
    if sent is not None and _matches(sent, tag):
        return Response(status_code=304, headers=headers)
    return ok(build(), headers=headers)


def require_admin() -> None:
    """Viewers read; only admins change anything."""
    info = context.context.get("token_info") or {}
    if info.get("role") != "admin":
        raise Forbidden("this needs the admin role", "forbidden")


def page_request(limit: int = 100, cursor: str | None = None) -> PageRequest:
    return PageRequest(limit=limit, cursor=cursor)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def host_json(h: Host) -> Json:
    return {"id": h.id, "hostname": h.hostname, "status": h.status,
            "sync_cursor": h.sync_cursor, "cpus": h.cpus, "memory_mib": h.memory_mib,
            "vm_count": h.vm_count}


def vm_json(v: Vm) -> Json:
    return {"id": v.id, "name": v.name, "host_id": v.host_id, "status": v.status,
            "vcpus": v.vcpus, "memory_mib": v.memory_mib, "persistent": v.persistent,
            "also_defined_on": list(v.also_defined_on), "migration_id": v.migration_id}


def migration_json(m: Migration) -> Json:
    p = m.progress
    return {
        "id": m.id, "vm_id": m.vm_id, "source_host_id": m.source_host_id,
        "destination_host_id": m.destination_host_id, "live": m.live,
        "persistent": m.persistent, "undefine_source": m.undefine_source,
        "copy_storage": m.copy_storage, "status": m.status,
        "progress": {"data_total_bytes": p.data_total_bytes,
                     "data_processed_bytes": p.data_processed_bytes,
                     "data_remaining_bytes": p.data_remaining_bytes, "percent": p.percent},
        "created_at": iso(m.created_at), "started_at": iso(m.started_at),
        "finished_at": iso(m.finished_at), "error": m.error,
    }


def series_json(s: MetricSeries) -> Json:
    return {"resource_id": s.resource_id, "start": s.start, "end": s.end, "step": s.step,
            "points": [{"t": p.t, "cpu_percent": p.cpu_percent,
                        "memory_used_bytes": p.memory_used_bytes,
                        "disk_read_bps": p.disk_read_bps, "disk_write_bps": p.disk_write_bps,
                        "net_rx_bps": p.net_rx_bps, "net_tx_bps": p.net_tx_bps}
                       for p in s.points]}


def page_json(key: str, page: Page[Any], shape: Any) -> Json:
    return {key: [shape(item) for item in page.items], "next_cursor": page.next_cursor}
