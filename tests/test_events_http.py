"""The change feed over real HTTP: `cockpit-api serve` on a loopback port, read with httpx.

The served simulator's clock runs (``--speed 20``): a graceful stop is acted on
by the guest 4 virtual seconds later, published by the feed's own ticker while
nobody calls. Every read is bounded by a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.serving import served
from tests.sse import Frame, SseParser

OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off
NODE2 = "019e0014-ffff-7057-b326-000000000002"
RUNNING_VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with served("--speed", "20") as url:
        yield url


@pytest.fixture
def h(base: str) -> dict[str, str]:
    r = httpx.post(f"{base}/api/v1/auth/login", json={"username": "admin", "password": "admin"})
    return {"Authorization": f"Bearer {r.json()['token']}"}


class Stream:
    """A GET /events read frame by frame from a real socket."""

    def __init__(self, client: httpx.Client, url: str, headers: dict[str, str]) -> None:
        self._cm = client.stream("GET", url, headers={"Accept": "text/event-stream", **headers})
        self.response = self._cm.__enter__()
        self._chunks = self.response.iter_raw()
        self.parser = SseParser()
        self.pending: list[Frame] = []

    def until(self, done: Callable[[list[Frame]], bool], timeout: float = 15.0) -> list[Frame]:
        """Frames (comments left out) until ``done(frames)`` holds; fails past the deadline."""
        deadline = time.monotonic() + timeout
        got: list[Frame] = []
        while not done(got):
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s: {got}")
            got += [f for f in self.parser.feed(next(self._chunks)) if f.event != "comment"]
        return got

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def _act(base: str, h: dict[str, str], vm: str, action: str, force: bool = False) -> None:
    r = httpx.post(f"{base}/api/v1/vms/{vm}/action", headers=h,
                   json={"action": action, "force": force})
    assert r.status_code == 200, r.text


def _statuses(frames: list[Frame], vm: str) -> list[str]:
    return [f.data["status"] for f in frames if f.event == "vm" and f.data["id"] == vm]


def test_list_then_follow_and_resume_after_a_killed_client(base: str, h: dict[str, str]) -> None:
    position = httpx.get(f"{base}/api/v1/vms", headers=h).headers["x-feed-position"]
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        s = Stream(client, f"{base}/api/v1/events?types=vm", {**h, "Last-Event-ID": position})
        assert s.response.headers["content-type"].startswith("text/event-stream")
        _act(base, h, OFF_VM, "start")
        _act(base, h, OFF_VM, "stop")  # graceful: the guest powers off 4 virtual s later
        seen = s.until(lambda got: _statuses(got, OFF_VM) == ["running", "shutoff"])
        s.close()  # the client dies
    _act(base, h, OFF_VM, "start")
    _act(base, h, OFF_VM, "suspend")
    _act(base, h, OFF_VM, "stop", force=True)
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        s = Stream(client, f"{base}/api/v1/events?types=vm", {**h, "Last-Event-ID": seen[-1].id})
        rest = s.until(lambda got: len(_statuses(got, OFF_VM)) == 3)
        s.close()
    assert _statuses(rest, OFF_VM) == ["running", "paused", "shutoff"]
    # The long-poll view of the same history: the same events, in the same order.
    r = httpx.get(f"{base}/api/v1/events", params={"after": position, "types": "vm"},
                  headers={**h, "Accept": "application/json"})
    assert [e["id"] for e in r.json()["events"]] == [f.id for f in seen + rest]


def test_reset_on_an_id_from_elsewhere_and_a_browser_style_ticket(base: str,
                                                                  h: dict[str, str]) -> None:
    ticket = httpx.post(f"{base}/api/v1/events/ticket", headers=h).json()["ticket"]
    with httpx.Client(timeout=httpx.Timeout(20.0)) as client:
        s = Stream(client, f"{base}/api/v1/events?ticket={ticket}&last_event_id=elsewhere-12",
                   {})
        got = s.until(lambda got: len(got) >= 1)
        assert got[0].event == "reset" and got[0].data["reason"] == "other_stream"
        r = httpx.post(f"{base}/api/v1/vms/{RUNNING_VM}/migrate", headers=h,
                       json={"destination_host_id": NODE2})
        assert r.status_code == 202
        moves = s.until(lambda got: any(f.event == "migration" and f.data["status"] == "completed"
                                        for f in got), timeout=30)
        s.close()
    states = [f.data["status"] for f in moves if f.event == "migration"]
    assert states[0] == "initiated" and states[-1] == "completed" and "running" in states


def test_long_poll_waits_then_answers(base: str, h: dict[str, str]) -> None:
    position = httpx.get(f"{base}/api/v1/hosts", headers=h).headers["x-feed-position"]
    started = time.monotonic()
    r = httpx.get(f"{base}/api/v1/events", params={"after": position, "wait": 0.5},
                  headers={**h, "Accept": "application/json"}, timeout=10)
    assert r.json()["events"] == [] and time.monotonic() - started >= 0.45
