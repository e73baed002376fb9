"""Reading Server-Sent Events in tests: a frame parser, and an in-process streaming client.

httpx's ASGI transport and Starlette's TestClient both wait for the whole body
before answering, which an event stream never finishes: :class:`AsgiStream`
drives the ASGI app directly and hands over each body chunk as it is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Frame:
    id: str | None
    event: str
    data: Any
    comment: str | None = None


@dataclass
class SseParser:
    """Incremental: feed bytes, take complete frames (comments included, as ``comment``)."""

    buffer: bytes = b""
    frames: list[Frame] = field(default_factory=list)

    def feed(self, chunk: bytes) -> list[Frame]:
        self.buffer += chunk
        out: list[Frame] = []
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            frame = _parse(block.decode().split("\n"))
            if frame is not None:
                out.append(frame)
        self.frames += out
        return out


def _parse(lines: Iterable[str]) -> Frame | None:
    fid: str | None = None
    event = "message"
    data: list[str] = []
    comments: list[str] = []
    for line in lines:
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            fid = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        return Frame(fid, event, json.loads("\n".join(data)))
    if comments:
        return Frame(None, "comment", None, " ".join(comments))
    return None


class AsgiStream:
    """One streaming GET against an ASGI app in this event loop."""

    def __init__(self, app: Any, path: str, headers: dict[str, str]) -> None:
        self.app = app
        path, _, query = path.partition("?")
        self.scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.parser = SseParser()
        self.ended = False
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._disconnect = asyncio.Event()
        self._sent_request = False
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsgiStream:
        """Once the response has started: the server has taken its position in the feed."""
        self._task = asyncio.get_running_loop().create_task(self._run())
        async with asyncio.timeout(5):
            await self._started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            self._started.set()
        elif message["type"] == "http.response.body":
            self._chunks.put_nowait(message.get("body", b""))
            if not message.get("more_body", False):
                self._chunks.put_nowait(None)

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        finally:
            self._started.set()
            self._chunks.put_nowait(None)

    async def frames(self, n: int, *, kinds: Iterable[str] | None = None,
                     timeout: float = 5.0) -> list[Frame]:
        """The next ``n`` frames (of ``kinds``, if given), or fewer if the stream ended."""
        wanted = set(kinds) if kinds is not None else None
        got: list[Frame] = []
        async with asyncio.timeout(timeout):
            while len(got) < n:
                chunk = await self._chunks.get()
                if chunk is None:
                    self.ended = True
                    break
                got += [f for f in self.parser.feed(chunk)
                        if wanted is None or f.event in wanted]
        return got

    async def body(self, timeout: float = 5.0) -> bytes:
        """Everything until the app finishes the response (a non-stream answer)."""
        out = b""
        async with asyncio.timeout(timeout):
            while (chunk := await self._chunks.get()) is not None:
                out += chunk
        self.ended = True
        return out

    async def close(self) -> None:
        self._disconnect.set()
        if self._task is not None:
            async with asyncio.timeout(5):
                await self._task
