"""Issue 18's feed items against a served `cockpit-api serve` process (real sockets, signals,
file descriptors); the in-process checks are tests/test_hostile_feed.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving import Server, free_port, receive, serve_process
from tests.test_hostile_feed import FORGED

API = "/api/v1"
VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
SSE = {"Accept": "text/event-stream"}
JSON_ACCEPT = {"Accept": "application/json"}
NON_FINITE = ["nan", "NaN", "inf", "-Infinity", "1e400"]


# ------------------------------------------------------------------ served processes


def _state(pid: int) -> str:
    """The process's state letter (Z: exited, not yet reaped), '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _token(base: str, user: str = "admin") -> str:
    r = httpx.post(f"{base}{API}/auth/login", json={"username": user, "password": user},
                   timeout=10)
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def _gauge(base: str, name: str, headers: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{base}/metrics", headers=headers, timeout=5).text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))


def _open_stream(port: int, token: str, timeout: float = 3.0,
                 query: str = "", accept: str = "text/event-stream") -> tuple[socket.socket, bytes]:
    """A raw GET /events; the socket and the answer's head (b'' if none came in time)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(f"GET {API}/events{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
              f"Accept: {accept}\r\n\r\n".encode())
    return s, receive(s, timeout, until=lambda head: b"\r\n\r\n" in head, size=4096)


def _serve(*args: str, env: dict[str, str | None] | None = None,
           prefix: tuple[str, ...] = ()) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    argv = [*prefix, sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
            *args]
    return serve_process(argv, port, env=env)


def _port(server: Server) -> int:
    return int(server.base.rsplit(":", 1)[1])


def test_served_nan_wait_is_400_and_a_left_long_poll_does_not_hold_sigterm() -> None:
    with _serve("--log-level", "warning") as server:
        token = _token(server.base)
        h = {"Authorization": f"Bearer {token}", **JSON_ACCEPT}
        r = httpx.get(f"{server.base}{API}/events?wait=nan", headers=h, timeout=5)
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")
        s, head = _open_stream(_port(server), token, query="?wait=60",
                               accept="application/json", timeout=0.5)
        assert head == b""  # waiting for an event
        deadline = time.monotonic() + 5
        while _gauge(server.base, "cockpit_feed_subscribers") != 1:
            assert time.monotonic() < deadline, "the long poll never counted"
            time.sleep(0.02)
        s.close()  # the client leaves
        while _gauge(server.base, "cockpit_feed_subscribers") != 0:
            assert time.monotonic() < deadline + 5, "the long poll outlived its client"
            time.sleep(0.02)
        os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _state(server.pid) not in ("Z", ""):
            assert time.monotonic() < deadline, "SIGTERM was held up:\n" + server.log()
            time.sleep(0.02)
        assert "Waiting for background tasks" not in server.log()


def test_served_streams_stop_short_of_the_file_descriptor_limit() -> None:
    """Under ulimit -n 320, with the per-user and total caps out of the way: streams are
    refused (429) while /healthz, login and GET /vms still answer."""
    limit = 320
    env: dict[str, str | None] = {"COCKPIT_MAX_STREAMS_PER_USER": "100000",
                                  "COCKPIT_MAX_STREAMS": "100000"}
    with _serve("--log-level", "warning", env=env,
                prefix=("prlimit", f"--nofile={limit}:{limit}", "--")) as server:
        token = _token(server.base)
        port = _port(server)
        opened: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(limit):
                s, head = _open_stream(port, token)
                status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.1 ") else b"none"
                if status == b"200":
                    opened.append(s)
                    continue
                s.close()
                assert status == b"429", (len(opened), head[:300], server.log()[-2000:])
                assert b"retry-after: 5\r\nconnection: close" in head.lower()
                refused += 1
                if refused >= 5:
                    break
            assert 100 <= len(opened) < limit - 128
            for _ in range(3):  # everybody else is still served
                assert httpx.get(f"{server.base}/healthz", timeout=5).status_code == 200
                other = _token(server.base, "viewer")
                r = httpx.get(f"{server.base}{API}/vms", timeout=5,
                              headers={"Authorization": f"Bearer {other}"})
                assert r.status_code == 200
        finally:
            for s in opened:
                s.close()
        deadline = time.monotonic() + 10
        while True:  # the places come back once the streams are gone
            s, head = _open_stream(port, token)
            s.close()
            if head.startswith(b"HTTP/1.1 200"):
                break
            assert time.monotonic() < deadline, head[:300]
            time.sleep(0.05)


def _config(tmp: Path, username: str) -> Path:
    from cockpit_api.auth.service import hash_password

    path = tmp / "cockpit.toml"
    path.write_text(f"[[users]]\nusername = {json.dumps(username)}\n"
                    f"password_hash = \"{hash_password('pw')}\"\nrole = \"viewer\"\n",
                    encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_served_logs_carry_no_forged_line_and_no_secret(fmt: str, tmp_path: Path) -> None:
    """--log-level trace: uvicorn prints each ASGI scope (query string, headers) too."""
    evil = "ops" + FORGED
    metrics_token = "metrics-token-" + "Zq" * 20
    with _serve("--log-level", "trace", "--access-log", "--log-format", fmt,
                "--config", str(_config(tmp_path, evil)),
                env={"COCKPIT_METRICS_TOKEN": metrics_token}) as server:
        c = httpx.Client(base_url=server.base, timeout=10)
        r = c.post(f"{API}/auth/login", json={"username": evil, "password": "pw"})
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        assert c.get(f"{API}/vms", headers={"Authorization": f"Bearer {token}"}
                     ).status_code == 200
        c.get(f"{API}/vms%0aINFO%20cockpit_api.access:%20GET%20/forged%20200%e2%80%a8")
        ticket = c.post(f"{API}/events/ticket",
                        headers={"Authorization": f"Bearer {token}"}).json()["ticket"]
        assert c.get(f"{API}/events?ticket={ticket}", headers=JSON_ACCEPT).status_code == 200
        assert c.get("/metrics", headers={"Authorization": f"bearer {metrics_token}"}
                     ).status_code == 200
        # The X-Forwarded-For of a local process is not believed (no trusted proxies).
        admin = {"Authorization": f"Bearer {_token(server.base)}"}
        c.post(f"{API}/vms/{VM}/action?dry_run=true", json={"action": "start"},
               headers={**admin, "X-Forwarded-For": "<script>"})
        entries = c.get(f"{API}/audit", headers=admin).json()["entries"]
        c.close()
        # (Rows that count anonymous rejects keep no address at all.)
        assert {e["address"] for e in entries if e["actor"] is not None} == {"127.0.0.1"}
        assert any(e["actor"] == "ops\\x0aINFO cockpit_api.http.access: POST /forged 200 "
                   "user=admin\\x0d\\u2028\\x1b[2J\\u202e" for e in entries)
        time.sleep(0.3)  # the JSON access log writes its lines in batches, 0.1 s at most
        log = server.log()
    assert "TRACE" in log or '"level": "trace"' in log or '"level":"trace"' in log
    for secret in (ticket, token, metrics_token):
        assert secret not in log, secret
    for line in log.splitlines():
        assert not line.startswith(("INFO cockpit_api.http.access: POST /forged",
                                    "INFO cockpit_api.http.access: GET /forged")), line
        assert "\u2028" not in line and "\x1b" not in line and "\u202e" not in line
    if fmt == "json":
        for line in log.splitlines():
            if line.startswith("{"):
                json.loads(line)


def test_served_trusted_proxies_are_believed_and_nobody_else() -> None:
    with _serve("--log-level", "warning", env={"COCKPIT_TRUSTED_PROXIES": "127.0.0.1"}) as server:
        c = httpx.Client(base_url=server.base, timeout=10)
        admin = {"Authorization": f"Bearer {_token(server.base)}"}
        for forwarded in ("203.0.113.7", "<script>"):
            c.post(f"{API}/vms/{VM}/action?dry_run=true", json={"action": "start"},
                   headers={**admin, "X-Forwarded-For": forwarded})
        entries = c.get(f"{API}/audit", headers=admin).json()["entries"]
        c.close()
    # Newest first: the proxy's "<script>" is no address; 203.0.113.7 is believed.
    assert [e["address"] for e in entries if e["path"].endswith("/action")] == \
        [None, "203.0.113.7"]
