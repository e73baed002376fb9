"""A Cockpit API (the default simulated cluster) whose reads start failing part-way.

``python -m tests.snapshot_broken_server PORT FAIL_AFTER``: the first FAIL_AFTER
GETs under /api/v1 answer as usual, every later one a 500 problem. A client that
pages or reads VM by VM sees the deployment fail in the middle of its work.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.types import Receive, Scope, Send

from cockpit_api.app import create_app
from cockpit_api.config import Settings


class FailAfter:
    def __init__(self, app: object, after: int) -> None:
        self.app = app
        self.left = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" \
                and scope["path"].startswith("/api/v1/") and "openapi" not in scope["path"]:
            self.left -= 1
            if self.left < 0:
                body = json.dumps({"type": "about:blank", "title": "Internal Server Error",
                                   "status": 500, "detail": "the disk fell off",
                                   "code": "internal"}).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/problem+json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)  # type: ignore[operator]


def main() -> None:
    port, after = int(sys.argv[1]), int(sys.argv[2])
    app = create_app(Settings(jwt_secret="broken-server-secret-of-at-least-32-bytes"))
    uvicorn.run(FailAfter(app, after), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
