"""events: the change feed as Server-Sent Events or JSON long-poll, and EventSource tickets.

The feed itself (numbering, history, resume, filters) is cockpit_api/feed/changes.py;
this module picks the representation from ``Accept``, authenticates the
stream for as long as it lasts, and shapes the answers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from connexion import context, request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cockpit_api.auth.service import AuthError, AuthService
from cockpit_api.feed.changes import Event, Feed, Filter, Resume, StreamSlot, feed_of
from cockpit_api.handlers._common import ok, services
from cockpit_api.state import Services

_POLL_LIMIT = 1000  # events per long-poll answer; `position` says where to continue
_GONE = b": the sandbox was deleted or expired\n\n"
# On shutdown, how long EventSource waits before reconnecting (to the restarted server).
SHUTDOWN_RETRY_MS = 1000


def _token(ticket: str | None = None) -> tuple[str, dict[str, Any]]:
    """The bearer token of this request, or the one its ticket stands for (redeemed once),
    and its claims."""
    info = context.context.get("token_info")
    if info:  # the bearer header, verified by Connexion
        _scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return value.strip(), info
    if ticket is None:
        raise AuthError("send a bearer token, or a ticket from POST /events/ticket",
                        "missing_token")
    s = services()
    token = feed_of(s.backend).tickets.redeem(ticket, s.auth.clock())
    if token is None:
        raise AuthError("the ticket is not valid (unknown, used or expired)", "invalid_ticket")
    return token, s.auth.verify(token)  # the token it stands for may have expired since


def _admit(s: Services, claims: dict[str, Any]) -> StreamSlot | None:
    """A place under the stream caps (429 past them); None where there are no caps."""
    if s.streams is None:
        return None
    return s.streams.admit(s.sandbox_id, str(claims.get("sub", "")))


def _world_alive(s: Services) -> Callable[[], bool]:
    """Whether the world the stream is in still exists (a sandbox may be deleted or expire)."""
    registry, sid = s.sandboxes, s.sandbox_id
    if registry is None or sid is None:
        return lambda: True
    return lambda: registry.alive(sid)


def _alive(auth: AuthService, token: str) -> float:
    """Seconds the stream may still run on this token (0: expired, or its session ended)."""
    return max(0.0, _expiry(auth, token) - auth.clock())


def _expiry(auth: AuthService, token: str) -> float:
    """When the token expires (auth clock), or 0 if it is not valid or its session ended."""
    try:
        claims = auth.verify(token)
    except AuthError:
        return 0.0
    if not auth.session_active(claims):
        return 0.0
    return float(claims["exp"])


def _wants_stream() -> bool:
    accept = request.headers.get("accept", "").lower()
    sse = accept.find("text/event-stream")
    if sse < 0:
        return False
    js = accept.find("application/json")
    return js < 0 or sse < js


async def create_ticket() -> Response:
    s = services()
    feed = feed_of(s.backend)
    token, claims = _token()
    ticket = feed.tickets.issue(token, s.auth.clock(), str(claims.get("sub", "")))
    return ok({"ticket": ticket, "expires_in": feed.tickets.ttl}, 201,
              headers={"Cache-Control": "no-store"})


async def get_events(types: list[str] | None = None, vm_id: str | None = None,
                     host_id: str | None = None, after: str | None = None,
                     last_event_id: str | None = None, wait: float = 0,
                     ticket: str | None = None) -> Response:
    token, claims = _token(ticket)
    s = services()
    feed = feed_of(s.backend)
    flt = Filter(frozenset(types) if types else None, vm_id, host_id)
    start = after or last_event_id or request.headers.get("last-event-id") or None
    resume = feed.resume(start)
    wait = float(wait)
    if not math.isfinite(wait):  # refused by the validators already; never a NaN deadline
        wait = 0.0
    slot = _admit(s, claims)
    alive = _world_alive(s)
    if _wants_stream():
        return EventStream(
            _stream(feed, s.auth, token, flt, resume, alive),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                     "X-Feed-Position": feed.position()}, slot=slot)
    return LongPoll(_long_poll(feed, s.auth, token, flt, resume, wait), slot)


def _long_poll(feed: Feed, auth: AuthService, token: str, flt: Filter, resume: Resume,
               wait: float) -> Callable[[], Coroutine[Any, Any, Response]]:
    async def run() -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, _alive(auth, token))
        seq = resume.seq
        events: list[dict[str, Any]] = []
        if resume.reset is not None:
            events.append(feed.reset_event(resume.reset).as_json())
        else:
            async with feed.subscribed():
                while not feed.closed:
                    batch = feed.after(seq, _POLL_LIMIT)
                    if batch is None:  # fell out of the history while waiting
                        events = [feed.reset_event("too_old").as_json()]
                        seq = feed.seq
                        break
                    if batch:
                        seq = batch[-1].seq
                        events = [e.as_json() for e in batch if flt.matches(e)]
                        if events:
                            break
                    left = deadline - loop.time()
                    if not left > 0 or feed.closing:  # closing: the server is stopping
                        break
                    await feed.wait(seq, left)
        return ok({"events": events, "position": f"{feed.epoch}-{seq}"},
                  headers={"Cache-Control": "no-store", "X-Feed-Position": feed.position()})

    return run


async def _until_gone(receive: Receive) -> None:
    """Returns when the client has gone (uvicorn: the connection closed)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class LongPoll(Response):
    """A long-poll answer: waits for events in a task that ends when the client leaves.

    A plain handler would wait out its ``wait`` for a client that is long gone,
    holding a subscriber, a place under the stream caps and, at shutdown, the
    server (uvicorn waits for running requests).
    """

    def __init__(self, run: Callable[[], Coroutine[Any, Any, Response]],
                 slot: StreamSlot | None) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = []
        self._run = run
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        try:
            poll = loop.create_task(self._run())
            watcher = loop.create_task(_until_gone(receive))
            try:
                await asyncio.wait((poll, watcher), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (poll, watcher):
                    task.cancel()
                await asyncio.gather(poll, watcher, return_exceptions=True)
        finally:
            if self._slot is not None:
                self._slot.release()
        if poll.cancelled():
            return  # the client left: nobody to answer
        answer = poll.result()  # raises what the poll raised (the error handlers see it)
        await answer(scope, receive, send)


class EventStream(Response):
    """A ``text/event-stream`` answer that runs as long as its client listens.

    Leaner than Starlette's StreamingResponse (no task group, no generator): one
    watcher task turns the client's disconnect into a cancellation of the stream.
    """

    def __init__(self, run: Callable[[Send], Coroutine[Any, Any, None]],
                 headers: dict[str, str], slot: StreamSlot | None = None) -> None:
        self.status_code = 200
        self.background = None
        self._run = run
        self._slot = slot
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers.items()]
        self.raw_headers.append((b"content-type", b"text/event-stream; charset=utf-8"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(receive, send)
        finally:
            if self._slot is not None:
                self._slot.release()

    async def _serve(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        loop = asyncio.get_running_loop()
        # The stream runs in a task of its own: resuming it after each event costs one
        # frame, not the whole middleware stack this request task sits under.
        stream = loop.create_task(self._run(send))
        watcher = loop.create_task(_until_gone(receive))
        try:
            await asyncio.wait((stream, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watcher):
                task.cancel()
            await asyncio.gather(stream, watcher, return_exceptions=True)
        if watcher.cancelled() and stream.exception() is None:
            # The stream ended by itself (token expired, session ended): close it cleanly.
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _body(chunk: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


def _shutdown_frame(feed: Feed, seq: int) -> bytes:
    """The last frame before the server stops: reconnect after ``retry`` ms (with
    Last-Event-ID, this stream's position); the next server resumes or resets it."""
    position = f"{feed.epoch}-{seq}"
    data = orjson.dumps({"reason": "shutdown", "position": position})
    return b"retry: %d\n%s" % (SHUTDOWN_RETRY_MS,
                               Event(seq, position, "reset", data).frame())


def _stream(feed: Feed, auth: AuthService, token: str, flt: Filter, resume: Resume,
            alive: Callable[[], bool]) -> Callable[[Send], Coroutine[Any, Any, None]]:
    async def run(send: Send) -> None:
        loop = asyncio.get_running_loop()
        async with feed.subscribed():
            # `retry`: how long EventSource waits before reconnecting (with Last-Event-ID).
            await send(_body(b"retry: 2000\n: position %s\n\n" % feed.position().encode()))
            seq = resume.seq
            if resume.reset is not None:
                await send(_body(feed.reset_event(resume.reset).frame()))
            now = last_sent = loop.time()
            expires = _expiry(auth, token)
            next_check = now + feed.session_check_seconds
            while True:
                if feed.closed:  # its world is gone: nothing more will happen in it
                    await send(_body(_GONE))
                    return
                got = feed.frames(seq, flt)
                if got is None:  # too slow: what it missed is gone
                    await send(_body(feed.reset_event("too_old").frame()))
                    seq, last_sent = feed.seq, loop.time()
                    continue
                chunk, seq = got
                now = loop.time()
                if chunk:
                    await send(_body(chunk))
                    last_sent = now
                if feed.closing:
                    await send(_body(_shutdown_frame(feed, seq)))
                    return
                if now >= next_check:  # the session may have been logged out since
                    expires = _expiry(auth, token)
                    next_check = now + feed.session_check_seconds
                    if not alive():  # an expired sandbox (its registry closes its feed)
                        await send(_body(_GONE))
                        return
                if auth.clock() >= expires:
                    await send(_body(b": the access token expired or its session ended\n\n"))
                    return
                if now - last_sent >= feed.heartbeat_seconds:
                    await send(_body(b": heartbeat\n\n"))
                    last_sent = now
                await feed.next(seq)  # an event, or the feed's pulse (every second)

    return run
