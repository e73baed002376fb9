"""`cockpit-api serve` as a process: what it prints on start, how it stops, what it answers.

Each test starts real servers on loopback ports (tests/serving.py).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.serving import free_port, serve_process
from tests.sse import Frame, SseParser


def _argv(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port), *args]


def test_a_normal_start_prints_the_banner_and_little_else() -> None:
    """At the default log level, on a fresh state directory (the store is created and
    migrated): no Alembic narration (it printed seven "setup plugin" lines), no Connexion
    "Adding spec json" lines."""
    port = free_port()
    with serve_process(_argv(port, "--speed", "0"), port) as server:
        log = server.log()
    assert "Cockpit API (sim backend) on" in log and "schema upgraded" in log
    assert "alembic" not in log, log
    assert "Adding spec json" not in log, log


# ------------------------------------------------------------------ determinism

OFF_VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off on node-01
RUNNING_VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, on node-01
DB1 = "f4d6d235-08bd-4d96-b6e9-c8092966493d"  # db-primary-01, on node-02
NODE2 = "019e0014-ffff-7057-b326-000000000002"
NODE3 = "019e0014-1a2b-7057-b326-000000000003"
# GETs whose answers are about the process rather than the world, by design:
NOT_THE_WORLD = {
    "/api/v1/events",  # ids carry the process's random epoch: a resume elsewhere resets
    "/api/v1/audit",  # wall-clock times and request ids of the requests themselves
    "/api/v1/auth/me",  # the token's expiry, on the wall clock
    "/_sim/sandboxes", "/_sim/sandboxes/{sandbox_id}",  # random ids
    "/healthz", "/readyz", "/metrics",  # the process's health and counters
}


def _recorded_calls(c: httpx.Client, h: dict[str, str]) -> None:
    """Writes and clock moves, the same on both servers."""
    calls: list[tuple[str, dict[str, object]]] = [
        (f"/api/v1/vms/{OFF_VM}/action", {"action": "start"}),
        (f"/api/v1/vms/{RUNNING_VM}/migrate", {"destination_host_id": NODE2}),
        ("/_sim/clock", {"advance": 5}),  # the migration is under way
        (f"/api/v1/vms/{DB1}/migrate", {"destination_host_id": NODE3}),
        ("/_sim/clock", {"advance": 900}),  # both are done; metrics moved on
        (f"/api/v1/vms/{OFF_VM}/action", {"action": "stop"}),
        ("/_sim/clock", {"advance": 30}),
    ]
    for path, body in calls:
        r = c.post(path, json=body, headers=h)
        assert r.status_code in (200, 202), (path, r.text)


def _world_gets(c: httpx.Client, h: dict[str, str]) -> dict[str, tuple[str, bytes]]:
    """Every GET of the two specs, with every id the world has: (ETag, body) by URL."""
    import yaml

    from cockpit_api.http.served_spec import CONTROL_SPEC, SPEC

    hosts = [x["id"] for x in c.get("/api/v1/hosts", headers=h).json()["hosts"]]
    vms = [x["id"] for x in c.get("/api/v1/vms?limit=1000", headers=h).json()["vms"]]
    jobs = [x["id"] for x in c.get("/api/v1/migrations", headers=h).json()["migrations"]]
    ids = {"{host_id}": hosts, "{id}": vms, "{migration_id}": jobs}
    windows = ["", "?step=300", "?start=1799000000&end=1800000000&step=600"]
    urls: list[str] = []
    for prefix, spec in (("/api/v1", SPEC), ("/_sim", CONTROL_SPEC)):
        for path, item in yaml.safe_load(spec.read_text())["paths"].items():
            if "get" not in item or prefix + path in NOT_THE_WORLD:
                continue
            names = [k for k in ids if k in path]
            assert len(names) <= 1, path
            filled = ([path.replace(names[0], v) for v in ids[names[0]]] if names else [path])
            queries = windows if path.endswith("/metrics") else [""]
            urls += [prefix + p + q for p in filled for q in queries]
    answers = {}
    for url in urls:
        r = c.get(url, headers=h)
        assert r.status_code == 200, (url, r.text)
        answers[url] = (r.headers.get("etag", ""), r.content)
    return answers


def test_two_servers_with_one_seed_clock_and_calls_answer_the_same_bytes() -> None:
    """--clock-start and --speed 0, one recorded sequence of calls on two processes with
    different hash seeds: every GET about the world answers byte for byte the same (host
    metrics differed in a few points: a float sum over a set)."""
    args = ("--clock-start", "2027-01-15T08:00:00Z", "--speed", "0")
    answers = []
    for hash_seed in ("1", "2"):
        port = free_port()
        with serve_process(_argv(port, *args), port, env={"PYTHONHASHSEED": hash_seed}) as s, \
                httpx.Client(base_url=s.base, timeout=30) as c:
            r = c.post("/api/v1/auth/login", json={"username": "admin", "password": "admin"})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            _recorded_calls(c, h)
            answers.append(_world_gets(c, h))
    first, second = answers
    assert first.keys() == second.keys() and len(first) > 70  # 4 hosts, 14 VMs, 2 jobs
    differ = [url for url in first if first[url] != second[url]]
    assert not differ, differ[:5]


# ------------------------------------------------------------------ shutdown


def _open_stream(base: str, token: str, last_id: str | None = None) -> socket.socket:
    """A plain SSE client on a raw socket (no library between the test and the bytes)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    extra = f"Last-Event-ID: {last_id}\r\n" if last_id else ""
    sock.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
                 f"Authorization: Bearer {token}\r\n{extra}\r\n".encode())
    return sock


def _read_until(sock: socket.socket, marker: bytes | None, deadline: float) -> bytes:
    """Bytes until ``marker`` appears, or (None) until the server closes; bounded."""
    got = b""
    while marker is None or marker not in got:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _frames(raw: bytes) -> list[Frame]:
    """The SSE frames in an HTTP/1.1 chunked answer's bytes (complete chunks only)."""
    if b"\r\n\r\n" not in raw:
        return []
    body, data = raw.split(b"\r\n\r\n", 1)[1], b""
    while b"\r\n" in body:
        size_line, rest = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            break
        data, body = data + rest[:size], rest[size + 2:]
    return SseParser().feed(data)


def _wait_for(sock: socket.socket, raw: bytes, until: Callable[[list[Frame]], bool],
              deadline: float) -> tuple[bytes, list[Frame]]:
    while not until(frames := _frames(raw)):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed before the frames wanted: {raw!r}"
        raw += chunk
    return raw, frames


def test_shutdown_ends_streams_at_once_and_exits_in_bounded_time(tmp_path: Path) -> None:
    """SIGTERM with streams open, a client that never reads and a body that never
    arrives: every stream gets its last event (reset, reason shutdown) and a `retry:`
    hint and ends, the process exits within --shutdown-timeout whatever the clients do
    (it stayed alive as long as any stream did), and a client that reconnects to the
    server started next, with its Last-Event-ID, is told to reset and then follows."""
    port = free_port()
    env = {"COCKPIT_STATE_DIR": str(tmp_path)}  # the next server keeps the sessions
    argv = _argv(port, "--speed", "0", "--shutdown-timeout", "1")
    with contextlib.ExitStack() as stack, serve_process(argv, port, env=env) as old:
        assert old.proc is not None
        login = httpx.post(f"{old.base}/api/v1/auth/login",
                           json={"username": "admin", "password": "admin"})
        token = login.json()["token"]
        deadline = time.monotonic() + 10
        readers = [_open_stream(old.base, token) for _ in range(3)]
        for sock in readers:
            stack.callback(sock.close)
        for sock in readers:
            _read_until(sock, b": position", deadline)  # subscribed
        idle = _open_stream(old.base, token)  # never read from again
        stalled = socket.create_connection(("127.0.0.1", port))
        stack.callback(idle.close)
        stack.callback(stalled.close)
        stalled.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"user")
        started = time.monotonic()
        old.proc.send_signal(signal.SIGTERM)
        tails = [_read_until(sock, None, time.monotonic() + 10) for sock in readers]
        old.proc.wait(timeout=15)  # on main: alive for as long as the streams stayed open
        took = time.monotonic() - started
        for tail in tails:
            frames = SseParser().feed(tail.replace(b"\r\n", b"\n"))
            assert b"retry: 1000\n" in tail, tail
            assert frames[-1].event == "reset" and frames[-1].data["reason"] == "shutdown"
            assert tail.endswith(b"0\r\n\r\n"), tail  # the chunked body's end: a clean close
        last_id = frames[-1].id
        assert last_id is not None and frames[-1].data["position"] == last_id
        assert took < 1 + 4, f"exit took {took:.1f} s"  # the timeout, and margin for a busy CI
        log = old.log()
        assert "Cancel 1 running task(s)" in log and "Traceback" not in log, log

    with contextlib.ExitStack() as stack, serve_process(argv, port, env=env) as new:
        sock = _open_stream(new.base, token, last_id)
        stack.callback(sock.close)
        deadline = time.monotonic() + 10
        raw, frames = _wait_for(sock, b"", lambda fs: any(f.event == "reset" for f in fs),
                                deadline)
        reset = next(f for f in frames if f.event == "reset")
        assert reset.data["reason"] == "other_stream"  # a new process: re-list, then follow
        r = httpx.post(f"{new.base}/api/v1/vms/{OFF_VM}/action", json={"action": "start"},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text  # the old token works on the new server
        _raw, frames = _wait_for(sock, raw, lambda fs: any(
            f.event == "vm" and f.data["status"] == "running" for f in fs), deadline)


# The page's side of a restart: follow with a ticket; on the last `reset` (reason
# shutdown), close, and reopen with a new ticket and last_event_id as soon as a server
# answers again (a ticket is single-use: EventSource's own retry would reuse it).
FOLLOW_ACROSS_RESTARTS = """
async () => {
  const login = await fetch('/api/v1/auth/login', {method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({username: 'admin', password: 'admin'})});
  const token = (await login.json()).token;
  window.feed = [];
  window.opened = 0;
  const follow = async (lastId) => {
    const t = await fetch('/api/v1/events/ticket', {method: 'POST',
        headers: {Authorization: 'Bearer ' + token}});
    const {ticket} = await t.json();
    let url = '/api/v1/events?types=vm&ticket=' + encodeURIComponent(ticket);
    if (lastId) url += '&last_event_id=' + encodeURIComponent(lastId);
    const es = new EventSource(url);
    es.onopen = () => { window.opened += 1; };
    es.addEventListener('vm', (e) => window.feed.push({type: 'vm', data: JSON.parse(e.data)}));
    es.addEventListener('reset', (e) => {
      const data = JSON.parse(e.data);
      window.feed.push({type: 'reset', data});
      if (data.reason !== 'shutdown') return;
      es.close();
      const again = () => follow(e.lastEventId).catch(() => setTimeout(again, 100));
      setTimeout(again, 100);
    });
  };
  await follow(null);
}
"""


def test_an_eventsource_page_follows_the_feed_across_a_restart(page: Any, console: Any,
                                                               tmp_path: Path) -> None:
    """Headless Chromium: the page's EventSource gets the shutdown reset, reopens on the
    next server with its last id, gets reset other_stream, then that server's changes."""
    # Between the two servers the page's retries find nothing listening: expected here.
    console.allow(r"Failed to load resource: net::ERR_CONNECTION_REFUSED")
    port = free_port()
    env = {"COCKPIT_STATE_DIR": str(tmp_path)}
    argv = _argv(port, "--speed", "0", "--shutdown-timeout", "1")
    with serve_process(argv, port, env=env) as old:
        assert old.proc is not None
        page.goto(f"{old.base}/healthz")
        page.evaluate(FOLLOW_ACROSS_RESTARTS)
        page.wait_for_function("window.opened === 1")
        old.proc.send_signal(signal.SIGTERM)
        page.wait_for_function(
            "window.feed.some(e => e.type === 'reset' && e.data.reason === 'shutdown')")
        old.proc.wait(timeout=15)
    with serve_process(argv, port, env=env) as new:
        page.wait_for_function(
            "window.opened === 2 && window.feed.some("
            "e => e.type === 'reset' && e.data.reason === 'other_stream')")
        admin = httpx.post(f"{new.base}/api/v1/auth/login",
                           json={"username": "admin", "password": "admin"}).json()["token"]
        r = httpx.post(f"{new.base}/api/v1/vms/{OFF_VM}/action", json={"action": "start"},
                       headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        page.wait_for_function(
            f"window.feed.some(e => e.type === 'vm' && e.data.id === '{OFF_VM}' "
            "&& e.data.status === 'running')")
    kinds = [(e["type"], e["data"].get("reason")) for e in page.evaluate("window.feed")]
    assert kinds[:2] == [("reset", "shutdown"), ("reset", "other_stream")], kinds

