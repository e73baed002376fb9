"""The change feed (GET /api/v1/events): SSE and long-poll in-process, ETag/304, whoami.

Everything runs on the simulator's frozen virtual clock: a test moves time with
``sim.advance`` (which publishes what became due) and calls ``feed.tick()`` where
the background ticker would publish migration progress. Nothing sleeps; waits
on the stream are bounded by timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from cockpit_api.feed.changes import Feed, feed_of
from tests.conftest import NODE1, NODE2, SECRET, T0, FakeClock
from tests.sse import AsgiStream, Frame

OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off on NODE1
RUNNING_VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
SSE = {"Accept": "text/event-stream"}
JSON = {"Accept": "application/json"}


class Env:
    def __init__(self) -> None:
        self.sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
        self.auth_clock = FakeClock()
        self.app: CockpitApp = create_app(
            Settings(validate_responses=True, jwt_secret=SECRET), backend=self.sim,
            auth_clock=self.auth_clock)
        self.feed: Feed = feed_of(self.sim)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                      base_url="http://testserver")
        self.h: dict[str, str] = {}
        self.refresh = ""

    async def login(self, user: str = "admin") -> dict[str, str]:
        r = await self.http.post("/api/v1/auth/login", json={"username": user, "password": user})
        assert r.status_code == 200, r.text
        self.refresh = r.json()["refresh_token"]
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}
        return self.h

    async def act(self, vm: str, action: str, force: bool = False) -> None:
        r = await self.http.post(f"/api/v1/vms/{vm}/action", headers=self.h,
                                 json={"action": action, "force": force})
        assert r.status_code == 200, r.text

    def stream(self, query: str = "", headers: dict[str, str] | None = None) -> AsgiStream:
        return AsgiStream(self.app, f"/api/v1/events{query}", {**self.h, **SSE, **(headers or {})})


def run(test: Callable[[Env], Awaitable[None]]) -> None:
    async def main() -> None:
        env = Env()
        await env.login()
        try:
            await test(env)
        finally:
            await env.http.aclose()

    asyncio.run(main())


def events(frames: list[Frame]) -> list[tuple[str, Any]]:
    return [(f.event, f.data.get("status") if f.event in ("vm", "migration") else f.data.get("id"))
            for f in frames if f.event != "comment"]


# ----------------------------------------------------------------------- the hub


def test_ids_increase_and_resume_continues_exactly() -> None:
    feed = Feed(history=5, epoch="e1")
    for i in range(3):
        feed.state_replaced()
        assert feed.position() == f"e1-{i + 1}"
    assert [e.seq for e in feed.after(1) or []] == [2, 3]
    assert feed.resume("e1-1").reset is None and feed.resume("e1-1").seq == 1
    assert feed.resume("e1-3").seq == 3 and feed.after(3) == []


@pytest.mark.parametrize(("last_id", "reason"), [
    ("other-3", "other_stream"),   # another replica, or a restarted server
    ("e1-99", "unknown_id"),       # never issued here
    ("e1-x", "unknown_id"),
    ("e1-1", "too_old"),           # dropped from the bounded history
])
def test_positions_it_cannot_continue_get_a_reset(last_id: str, reason: str) -> None:
    feed = Feed(history=5, epoch="e1")
    for _ in range(10):
        feed.state_replaced()
    assert feed.resume(last_id).reset == reason
    assert feed.resume(last_id).seq == 10
    assert feed.after(1) is None  # the history holds events 6..10 only
    assert feed.resume("e1-5").reset is None  # 6..10 are all there


def test_two_apps_over_one_backend_share_one_feed_and_epochs_differ_per_backend() -> None:
    sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    other = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    assert feed_of(sim) is feed_of(sim)
    assert feed_of(sim).epoch != feed_of(other).epoch


def test_a_vm_change_is_a_vm_event_then_its_hosts() -> None:
    sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    feed = feed_of(sim)
    asyncio.run(sim.vm_action(OFF_VM, "start", False))
    got = feed.after(0) or []
    assert [e.type for e in got] == ["vm", "host"]
    assert got[1].host_ids == (NODE1,)
    assert b'"status":"running"' in got[0].data


# ----------------------------------------------------------------------- SSE in-process


def test_stream_follows_start_and_graceful_stop_as_the_clock_settles() -> None:
    async def body(env: Env) -> None:
        async with env.stream("?types=vm") as s:
            first = await s.frames(1)
            assert s.status == 200 and s.headers["content-type"].startswith("text/event-stream")
            assert first[0].event == "comment"
            await env.act(OFF_VM, "start")
            await env.act(OFF_VM, "stop")  # the guest takes its time
            got = await s.frames(1, kinds=["vm"])
            env.sim.advance(30)  # ...and powers off: published as the clock settles
            got += await s.frames(1, kinds=["vm"])
        assert events(got) == [("vm", "running"), ("vm", "shutoff")]
        assert [f.data["id"] for f in got] == [OFF_VM, OFF_VM]
        r = await env.http.get(f"/api/v1/vms/{OFF_VM}", headers=env.h)
        assert got[-1].data == r.json()  # exactly what GET answers

    run(body)


def test_resume_with_last_event_id_misses_nothing_and_repeats_nothing() -> None:
    async def body(env: Env) -> None:
        r = await env.http.get("/api/v1/vms", headers=env.h)
        position = r.headers["x-feed-position"]
        async with env.stream(headers={"Last-Event-ID": position}) as s:
            await env.act(OFF_VM, "start")
            seen = await s.frames(2, kinds=["vm", "host"])
        # The client is gone; the cluster moves on.
        await env.act(OFF_VM, "suspend")
        await env.act(OFF_VM, "resume")
        await env.act(RUNNING_VM, "stop", force=True)
        async with env.stream(headers={"Last-Event-ID": seen[-1].id or ""}) as s:
            rest = await s.frames(6, kinds=["vm", "host"])
        everything = env.feed.after(int(position.rsplit("-", 1)[1])) or []
        assert [f.id for f in seen + rest] == [e.id for e in everything]
        assert [(f.event, f.data.get("status")) for f in seen + rest if f.event == "vm"] == [
            ("vm", "running"), ("vm", "paused"), ("vm", "running"), ("vm", "shutoff")]

    run(body)


def test_query_parameter_resume_and_reset_on_an_unknown_id() -> None:
    async def body(env: Env) -> None:
        await env.act(OFF_VM, "start")
        async with env.stream(f"?last_event_id={env.feed.epoch}-0") as s:
            got = await s.frames(2, kinds=["vm", "host"])
        assert events(got) == [("vm", "running"), ("host", NODE1)]
        async with env.stream("", {"Last-Event-ID": "deadbeef-7"}) as s:
            got = await s.frames(1, kinds=["reset"])
            await env.act(OFF_VM, "stop", force=True)
            after = await s.frames(1, kinds=["vm"])
        assert got[0].data == {"reason": "other_stream", "position": f"{env.feed.epoch}-2"}
        assert after[0].data["status"] == "shutoff"  # then it follows from now

    run(body)


def test_filters_by_vm_and_by_host() -> None:
    async def body(env: Env) -> None:
        async with env.stream(f"?vm_id={RUNNING_VM}") as by_vm, \
                env.stream(f"?host_id={NODE2}&types=host") as by_host:
            await env.act(OFF_VM, "start")  # NODE1, another VM
            await env.act("4630de19-bf77-438d-8b9b-7cefad989a70", "start")  # on NODE2
            await env.act(RUNNING_VM, "suspend")
            vm_frames = await by_vm.frames(1, kinds=["vm", "host"])
            host_frames = await by_host.frames(1, kinds=["vm", "host"])
        assert events(vm_frames) == [("vm", "paused")]
        assert events(host_frames) == [("host", NODE2)]

    run(body)


def test_migration_progress_is_published_by_the_ticker_then_the_move() -> None:
    async def body(env: Env) -> None:
        async with env.stream(f"?vm_id={RUNNING_VM}") as s:
            r = await env.http.post(f"/api/v1/vms/{RUNNING_VM}/migrate", headers=env.h,
                                    json={"destination_host_id": NODE2})
            assert r.status_code == 202
            got = await s.frames(2, kinds=["vm", "migration"])
            for _ in range(12):  # 4.4 GiB at 512 MiB/s: ~9 s, after 0.5 s of setup
                env.sim.advance(1)
                env.feed.tick()
                env.feed.tick()  # nothing new: no event
            got += await _drain(s)
        kinds = events(got)
        assert kinds[:2] == [("migration", "initiated"), ("vm", "running")]
        assert kinds[-2:] == [("migration", "completed"), ("vm", "running")]
        running = [f.data["progress"]["percent"] for f in got
                   if f.event == "migration" and f.data["status"] == "running"]
        assert len(running) >= 5 and running == sorted(running) and running[0] < 20
        assert len(set(running)) == len(running)  # a tick without progress sends nothing
        assert got[-1].data["host_id"] == NODE2 and got[-1].data["migration_id"] is None
        assert got[1].data["migration_id"] == got[0].data["id"]

    run(body)


async def _drain(s: AsgiStream) -> list[Frame]:
    """Whatever frames are already sent (they are written before anything else runs)."""
    out: list[Frame] = []
    while True:
        try:
            out += await s.frames(1, kinds=["vm", "migration", "host", "reset"], timeout=0.2)
        except TimeoutError:
            return out


def test_a_simulator_reset_is_a_reset_event() -> None:
    async def body(env: Env) -> None:
        async with env.stream() as s:
            r = await env.http.post("/_sim/reset", headers=env.h)
            assert r.status_code == 200
            got = await s.frames(1, kinds=["reset"])
        assert got[0].data["reason"] == "state_replaced"
        await env.act(OFF_VM, "start")  # the feed follows the new state
        assert (env.feed.after(env.feed.seq - 2) or [])[0].type == "vm"

    run(body)


def test_heartbeats_are_comments() -> None:
    async def body(env: Env) -> None:
        env.feed.heartbeat_seconds = 0.05
        env.feed.pulse_seconds = 0.02  # the feed's one timer: subscribers look at their clocks
        async with env.stream() as s:
            got = await s.frames(3)
        assert [f.comment for f in got[1:]] == ["heartbeat", "heartbeat"]

    run(body)


def test_the_stream_ends_when_the_token_expires() -> None:
    async def body(env: Env) -> None:
        async with env.stream() as s:
            await s.frames(1)
            env.auth_clock.t += 3601
            env.feed.state_replaced()  # any event wakes the stream, which checks its token
            got = await s.frames(10)
        assert s.ended
        assert got[-1].comment == "the access token expired or its session ended"

    run(body)


def test_the_stream_ends_when_its_session_logs_out() -> None:
    async def body(env: Env) -> None:
        env.feed.session_check_seconds = 0  # look at the session on every wake-up
        async with env.stream() as s:
            await s.frames(1)
            r = await env.http.post("/api/v1/auth/logout", json={"refresh_token": env.refresh})
            assert r.status_code == 204
            env.feed.state_replaced()
            await s.frames(10)
        assert s.ended

    run(body)


def test_unauthenticated_streams_are_refused() -> None:
    async def body(env: Env) -> None:
        r = await env.http.get("/api/v1/events", headers=SSE)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")

    run(body)


# ----------------------------------------------------------------------- tickets


def test_a_ticket_opens_one_stream_then_is_spent() -> None:
    async def body(env: Env) -> None:
        r = await env.http.post("/api/v1/events/ticket", headers=env.h)
        assert r.status_code == 201
        ticket = r.json()["ticket"]
        assert r.json()["expires_in"] == 30
        async with AsgiStream(env.app, f"/api/v1/events?ticket={ticket}", SSE) as s:
            await env.act(OFF_VM, "start")
            got = await s.frames(1, kinds=["vm"])
        assert got[0].data["status"] == "running"
        again = await env.http.get(f"/api/v1/events?ticket={ticket}", headers=SSE)
        assert again.status_code == 401 and again.json()["code"] == "invalid_ticket"

    run(body)


def test_tickets_expire() -> None:
    async def body(env: Env) -> None:
        ticket = (await env.http.post("/api/v1/events/ticket", headers=env.h)).json()["ticket"]
        env.auth_clock.t += 31
        r = await env.http.get(f"/api/v1/events?ticket={ticket}", headers=JSON)
        assert r.status_code == 401

    run(body)


# ----------------------------------------------------------------------- long-poll


def test_long_poll_answers_at_once_when_events_are_pending() -> None:
    async def body(env: Env) -> None:
        start = env.feed.position()
        await env.act(OFF_VM, "start")
        r = await env.http.get("/api/v1/events", headers={**env.h, **JSON},
                               params={"after": start, "wait": 30})
        assert r.status_code == 200
        got = r.json()
        assert [e["type"] for e in got["events"]] == ["vm", "host"]
        assert got["position"] == env.feed.position() == got["events"][-1]["id"]
        r = await env.http.get("/api/v1/events", headers={**env.h, **JSON},
                               params={"after": got["position"]})
        assert r.json() == {"events": [], "position": got["position"]}

    run(body)


def test_long_poll_waits_for_the_next_matching_event() -> None:
    async def body(env: Env) -> None:
        start = env.feed.position()

        async def later() -> None:
            while env.feed.subscribers == 0:  # the poll is waiting
                await asyncio.sleep(0)
            env.sim.set_host_status(NODE2, "disconnected")  # host events: filtered out
            await env.act(OFF_VM, "start")

        task = asyncio.get_running_loop().create_task(later())
        r = await env.http.get("/api/v1/events", headers={**env.h, **JSON},
                               params={"after": start, "wait": 30, "types": "vm"})
        await task
        assert [e["data"]["status"] for e in r.json()["events"]] == ["running"]

    run(body)


def test_long_poll_reset() -> None:
    async def body(env: Env) -> None:
        r = await env.http.get("/api/v1/events", headers={**env.h, **JSON},
                               params={"after": "nope-1"})
        assert r.json()["events"][0]["type"] == "reset"
        assert r.json()["events"][0]["data"]["reason"] == "other_stream"

    run(body)


# ----------------------------------------------------------------------- ETag, whoami


# Starting a VM changes these (its host's sync_cursor too); tags move with their own answer
# only (tests/test_etags.py), so the migrations list, untouched, keeps its tag.
@pytest.mark.parametrize("path", ["/api/v1/hosts", f"/api/v1/hosts/{NODE1}", "/api/v1/vms",
                                  f"/api/v1/vms/{OFF_VM}"])
def test_if_none_match_round_trip(path: str) -> None:
    async def body(env: Env) -> None:
        r = await env.http.get(path, headers=env.h)
        tag = r.headers["etag"]
        assert tag.startswith('"') and not tag.startswith('W/')
        same = await env.http.get(path, headers={**env.h, "If-None-Match": tag})
        assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == tag
        await env.act(OFF_VM, "start")
        changed = await env.http.get(path, headers={**env.h, "If-None-Match": tag})
        assert changed.status_code == 200 and changed.headers["etag"] != tag
        assert changed.json() == (await env.http.get(path, headers=env.h)).json()

    run(body)


def test_a_running_migrations_etag_moves_with_its_progress() -> None:
    async def body(env: Env) -> None:
        r = await env.http.post(f"/api/v1/vms/{RUNNING_VM}/migrate", headers=env.h,
                                json={"destination_host_id": NODE2})
        path = r.headers["location"]
        env.sim.clock.advance(2)  # progress without any event (nobody settled, no tick)
        a = await env.http.get(path, headers=env.h)
        env.sim.clock.advance(1)
        b = await env.http.get(path, headers={**env.h, "If-None-Match": a.headers["etag"]})
        assert b.status_code == 200 and b.headers["etag"] != a.headers["etag"]

    run(body)


def test_lists_carry_the_feed_position() -> None:
    async def body(env: Env) -> None:
        await env.act(OFF_VM, "start")
        for path in ("/api/v1/hosts", "/api/v1/vms", "/api/v1/migrations"):
            r = await env.http.get(path, headers=env.h)
            assert r.headers["x-feed-position"] == env.feed.position()

    run(body)


def test_whoami() -> None:
    async def body(env: Env) -> None:
        await env.login("viewer")
        r = await env.http.get("/api/v1/auth/me", headers=env.h)
        assert r.json() == {"username": "viewer", "role": "viewer",
                            "expires_at": "2027-01-15T09:00:00Z"}
        assert (await env.http.get("/api/v1/auth/me")).status_code == 401

    run(body)
