"""The resources' JSON, exactly as their GETs answer them.

Below both the handlers (which answer with it) and the change feed (whose events carry
it), so that neither imports the other.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cockpit_api.backends.base import Host, MetricSeries, Migration, Vm

Json = dict[str, Any]


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
