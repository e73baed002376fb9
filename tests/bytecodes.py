"""Count the Python bytecodes one request costs: a deterministic measure of a layer's cost.

Shared by tests/test_ops.py (the request layer adds under 5 % to a list) and
bench/ops_overhead.py --bytecodes (the same numbers, printed).
"""

from __future__ import annotations

import sys
from typing import Any

API = "/api/v1"


async def bytecodes_of_get(app: Any, headers: list[tuple[bytes, bytes]],
                           path: str = f"{API}/vms", query: bytes = b"limit=100") -> int:
    """Bytecodes the ASGI ``app`` runs to answer one GET (which must answer 200)."""
    count = [0]

    def tracer(frame: Any, event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            count[0] += 1
        return tracer

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query, "root_path": "", "headers": list(headers),
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sys.settrace(tracer)
    try:
        await app(scope, receive, send)
    finally:
        sys.settrace(None)
    return count[0]


async def least_bytecodes(app: Any, headers: list[tuple[bytes, bytes]], *, warm: int = 5,
                          runs: int = 3) -> int:
    """The fewest bytecodes of ``runs`` GETs, after ``warm`` (caches, first-request work)."""
    for _ in range(warm):
        await bytecodes_of_get(app, headers)
    return min([await bytecodes_of_get(app, headers) for _ in range(runs)])
