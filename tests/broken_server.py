"""A deliberately broken Cockpit API: GET /vms/{id} answers `state` instead of `status`.

The conformance suite must fail against it and name that operation. Run:
``python -m tests.broken_server PORT``.
"""

from __future__ import annotations

import json
import re
import sys

import uvicorn
from starlette.types import Message, Receive, Scope, Send

from cockpit_api.app import create_app
from cockpit_api.config import Settings

_ONE_VM = re.compile(r"^/api/v1/vms/[0-9a-fA-F-]{36}$")


class RenameStatus:
    def __init__(self, app: object) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not _ONE_VM.match(scope["path"]):
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        start: Message = {}

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            body = message.get("body", b"")
            if start.get("status") == 200:
                data = json.loads(body)
                data["state"] = data.pop("status")
                body = json.dumps(data).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)  # type: ignore[operator]


def main() -> None:
    port = int(sys.argv[1])
    app = create_app(Settings(jwt_secret="broken-server-secret-of-at-least-32-bytes"))
    uvicorn.run(RenameStatus(app), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
