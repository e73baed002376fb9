"""A browser follows the change feed: headless Chromium, EventSource, a ticket, real HTTP.

The page (same origin as the served API) logs in with fetch, trades its token
for a ticket and opens ``new EventSource('/api/v1/events?ticket=...')``; the test
starts a VM, stops it gracefully (the simulated guest powers off a moment later:
the feed's ticker publishes it), then live-migrates another. Half-way, the page
drops its EventSource and reopens it with a new ticket and ``last_event_id``,
as a page does after a network error. The page must see every state, in order,
each event once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.serving import served

if TYPE_CHECKING:
    from playwright.sync_api import Page

OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off on vapor-node-01
MOVER = "48a7c825-2abc-4619-a5ab-d89bd67e4d92"  # web-frontend-02, running on vapor-node-01
NODE2 = "019e0014-ffff-7057-b326-000000000002"

# The page's side: a feed client as a dashboard writes one.
FOLLOW = """
async () => {
  const login = await fetch('/api/v1/auth/login', {method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({username: 'admin', password: 'admin'})});
  window.token = (await login.json()).token;
  window.feed = [];
  window.opened = 0;
  window.follow = async (lastId) => {
    const t = await fetch('/api/v1/events/ticket', {method: 'POST',
        headers: {Authorization: 'Bearer ' + window.token}});
    const {ticket} = await t.json();
    let url = '/api/v1/events?types=vm,migration&ticket=' + encodeURIComponent(ticket);
    if (lastId) url += '&last_event_id=' + encodeURIComponent(lastId);
    const es = new EventSource(url);
    for (const type of ['vm', 'migration', 'reset']) {
      es.addEventListener(type, (e) => window.feed.push(
          {id: e.lastEventId, type, data: JSON.parse(e.data)}));
    }
    es.onopen = () => { window.opened += 1; };
    window.es = es;
  };
  await window.follow(null);
}
"""


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with served("--speed", "20") as url:
        yield url


def _act(base: str, h: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
    r = httpx.post(f"{base}/api/v1{path}", headers=h, json=body)
    assert r.status_code in (200, 202), r.text
    return r


def _feed(page: Page) -> list[dict[str, Any]]:
    feed: list[dict[str, Any]] = page.evaluate("window.feed")
    return feed


def test_a_browser_follows_start_stop_and_a_live_migration(base: str, page: Page) -> None:
    token = httpx.post(f"{base}/api/v1/auth/login",
                       json={"username": "admin", "password": "admin"}).json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    page.goto(f"{base}/api/v1/openapi.json")  # any document of the API's origin
    page.evaluate(FOLLOW)
    page.wait_for_function("window.opened === 1")

    _act(base, h, f"/vms/{OFF_VM}/action", {"action": "start"})
    _act(base, h, f"/vms/{OFF_VM}/action", {"action": "stop"})  # the guest takes 4 virtual s
    page.wait_for_function(
        f"window.feed.some(e => e.data.id === '{OFF_VM}' && e.data.status === 'shutoff')")

    # The connection drops; the page comes back with a new ticket and its last id.
    page.evaluate("window.es.close()")
    _act(base, h, f"/vms/{OFF_VM}/action", {"action": "start"})  # while nobody listens
    page.evaluate("window.follow(window.feed[window.feed.length - 1].id)")
    page.wait_for_function("window.opened === 2")
    job = _act(base, h, f"/vms/{MOVER}/migrate",
               {"destination_host_id": NODE2}).json()["migration_id"]
    page.wait_for_function(
        f"window.feed.some(e => e.data.id === '{MOVER}' && e.data.host_id === '{NODE2}')",
        timeout=30_000)

    feed = _feed(page)
    ids = [e["id"] for e in feed]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert not [e for e in feed if e["type"] == "reset"]
    off = [e["data"]["status"] for e in feed if e["type"] == "vm" and e["data"]["id"] == OFF_VM]
    assert off == ["running", "shutoff", "running"]  # the last one while the page was away
    moves = [(e["type"], e["data"]["status"], e["data"].get("host_id"),
              e["data"].get("migration_id")) for e in feed if e["data"].get("id") in (MOVER, job)]
    jobs = [m[1] for m in moves if m[0] == "migration"]
    assert jobs[0] == "initiated" and jobs[-1] == "completed"
    assert jobs[1:-1] and set(jobs[1:-1]) == {"running"}
    percents = [e["data"]["progress"]["percent"] for e in feed
                if e["type"] == "migration" and e["data"]["status"] == "running"]
    assert percents == sorted(percents)
    vm_states = [m[2:] for m in moves if m[0] == "vm"]
    assert vm_states == [("019e0014-abcd-7057-b326-000000000001", job), (NODE2, None)]
    # Every state the page saw is what the API says now.
    assert feed[-1]["data"] == httpx.get(f"{base}/api/v1/vms/{MOVER}", headers=h).json()
