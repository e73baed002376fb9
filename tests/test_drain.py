"""The drain on shutdown, in-process: every world's streams end, waiting long polls answer.

Its own module: asyncio.run cannot start inside a module whose browser tests keep
Playwright's event loop running (tests/test_serve_process.py serves the real thing).
"""

from __future__ import annotations

import asyncio

import httpx

from cockpit_api.app import create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from cockpit_api.feed.changes import feed_of
from tests.conftest import SECRET, T0, FakeClock
from tests.sse import AsgiStream


def test_the_drain_reaches_every_world_and_answers_long_polls() -> None:
    """In-process: CockpitApp.drain() ends a sandbox's stream as the default world's, and
    a long poll waiting for events answers at once instead of at its `wait`."""
    async def main() -> None:
        sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
        app = create_app(Settings(jwt_secret=SECRET), backend=sim, auth_clock=FakeClock())
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver")
        creds = {"username": "admin", "password": "admin"}

        async def token(prefix: str) -> dict[str, str]:
            r = await http.post(f"{prefix}/api/v1/auth/login", json=creds)
            return {"Authorization": f"Bearer {r.json()['token']}"}

        async with http:
            h = await token("")
            box = (await http.post("/_sim/sandboxes", json={"speed": 0}, headers=h)).json()
            hb = await token(box["path"])
            sse = {"Accept": "text/event-stream"}
            root = AsgiStream(app, "/api/v1/events", {**h, **sse})
            inside = AsgiStream(app, f"{box['path']}/api/v1/events", {**hb, **sse})
            async with root, inside:
                poll = asyncio.ensure_future(http.get(
                    "/api/v1/events?wait=25", headers={**h, "Accept": "application/json"}))
                feed = feed_of(sim)
                for _ in range(10_000):  # until the poll waits in the feed, bounded
                    if feed.subscribers == 2:
                        break
                    await asyncio.sleep(0)
                assert feed.subscribers == 2  # the stream and the poll
                app.drain()
                for stream in (root, inside):
                    frames = await stream.frames(10, timeout=5)
                    assert stream.ended, frames
                    assert (frames[-1].event, frames[-1].data["reason"]) == ("reset",
                                                                             "shutdown")
                answer = await asyncio.wait_for(poll, 5)  # not after 25 s
                assert answer.status_code == 200 and answer.json()["events"] == []

    asyncio.run(main())
