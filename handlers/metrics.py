"""metrics: performance logs of VMs and hosts."""

from __future__ import annotations

from starlette.responses import Response

from cockpit_api.backends.base import MetricsWindow
from cockpit_api.handlers._common import backend, cached, series_json


async def get_vm_metrics(id: str, start: int | None = None, end: int | None = None,  # noqa: A002
                         step: int = 60) -> Response:
    b = backend()
    window = MetricsWindow.of(start, end, step, b.now())
    return cached(series_json(await b.vm_metrics(id, window)))


async def get_host_metrics(host_id: str, start: int | None = None, end: int | None = None,
                           step: int = 60) -> Response:
    b = backend()
    window = MetricsWindow.of(start, end, step, b.now())
    return cached(series_json(await b.host_metrics(host_id, window)))
