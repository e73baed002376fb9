"""Hostile input, round two (issue 18): the feed, the stream caps, tickets, metrics and logs.

In-process (the app over the simulator, a frozen virtual clock, a fake wall
clock); the served processes on loopback (tests/test_hostile_feed_served.py) check
what only a real server shows: the file-descriptor limit, SIGTERM, uvicorn's own
trace log, forwarded headers. Every wait is bounded; nothing sleeps for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import sys
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import ConfigError, Settings
from cockpit_api.feed.changes import Feed, Tickets, feed_of
from cockpit_api.http.served_spec import CONTROL_SPEC, OPS_SPEC, SPEC
from tests.conftest import NODE2, SECRET, T0, FakeClock
from tests.sse import AsgiStream

API = "/api/v1"
VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
SSE = {"Accept": "text/event-stream"}
JSON_ACCEPT = {"Accept": "application/json"}
NON_FINITE = ["nan", "NaN", "inf", "-Infinity", "1e400"]


class World:
    """An app over the default scenario, an async client, and logins in any world."""

    def __init__(self, **settings: Any) -> None:
        self.sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
        self.auth_clock = FakeClock()
        self.app: CockpitApp = create_app(
            Settings(validate_responses=True, jwt_secret=SECRET, **settings), backend=self.sim,
            auth_clock=self.auth_clock)
        self.feed: Feed = feed_of(self.sim)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                      base_url="http://testserver")

    async def login(self, user: str = "admin", base: str = "") -> dict[str, str]:
        r = await self.http.post(f"{base}{API}/auth/login",
                                 json={"username": user, "password": user})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    async def sandbox(self, admin: dict[str, str], **body: Any) -> str:
        r = await self.http.post("/_sim/sandboxes", json={"speed": 0, **body}, headers=admin)
        assert r.status_code == 201, r.text
        path: str = r.json()["path"]
        return path

    def stream(self, h: dict[str, str], base: str = "", query: str = "") -> AsgiStream:
        return AsgiStream(self.app, f"{base}{API}/events{query}", {**h, **SSE})

    async def metric(self, name: str, base: str = "") -> dict[str, float]:
        """Every sample of ``name`` in /metrics, by its label text ('' without labels)."""
        r = await self.http.get(f"{base}/metrics")
        assert r.status_code == 200, r.text
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                key, _, value = line.rpartition(" ")
                out[key[len(name):]] = float(value)
        return out


def run(test: Callable[[World], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        world = World(**settings)
        try:
            await test(world)
        finally:
            await world.http.aclose()

    asyncio.run(main())


# ------------------------------------------------------------------ 1. non-finite numbers


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _numeric_query_parameters() -> list[tuple[str, str, str, str]]:
    """(spec prefix, method, path with its path parameters filled in, parameter) for every
    number or integer query parameter of every spec the server serves."""
    found = []
    for prefix, path in ((API, SPEC), ("/_sim", CONTROL_SPEC), ("", OPS_SPEC)):
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        for template, item in spec["paths"].items():
            for method, op in item.items():
                if method not in ("get", "put", "post", "delete", "patch"):
                    continue
                params = [_resolve(spec, p) for p in [*item.get("parameters", []),
                                                      *op.get("parameters", [])]]
                filled = template
                for p in params:
                    if p["in"] == "path":
                        example = p.get("example") or _resolve(spec, p["schema"]).get("example")
                        filled = filled.replace("{" + p["name"] + "}", str(example))
                for p in params:
                    schema = _resolve(spec, p.get("schema", {}))
                    if p["in"] == "query" and schema.get("type") in ("number", "integer"):
                        found.append((prefix, method.upper(), filled, p["name"]))
    return found


NUMERIC = _numeric_query_parameters()


def test_the_table_of_numeric_query_parameters_covers_the_feed() -> None:
    assert (API, "GET", "/events", "wait") in NUMERIC
    assert {(p, n) for p, _m, _t, n in NUMERIC} >= {(API, "limit"), (API, "step"), (API, "start")}


@pytest.mark.parametrize("where", ["root", "sandbox"])
def test_non_finite_numbers_are_refused_in_every_query_parameter(where: str) -> None:
    """wait=nan passed minimum/maximum (NaN compares false) and pinned a core forever."""
    async def body(w: World) -> None:
        admin = await w.login()
        base, h = "", admin
        if where == "sandbox":
            base = await w.sandbox(admin)
            h = await w.login(base=base)
        for prefix, method, path, name in NUMERIC:
            for value in NON_FINITE:
                url = f"{base}{prefix}{path}?{name}={value}"
                async with asyncio.timeout(5):  # the NaN long poll never answered
                    r = await w.http.request(method, url, headers={**h, **JSON_ACCEPT})
                assert r.status_code == 400, (url, r.status_code, r.text)
                problem = r.json()
                assert problem["code"] == "bad_request", url
                assert problem["errors"][0]["pointer"] == f"/query/{name}", url
        assert w.feed.subscribers == 0

    run(body)


@pytest.mark.parametrize("where", ["query", "path", "header"])
def test_the_parameter_validator_refuses_non_finite_numbers_anywhere(where: str) -> None:
    """Every spec (API, control plane, ops) is served with this validator: a number
    parameter added to any of them later is covered, wherever it sits."""
    from cockpit_api.http.problems import InvalidRequest
    from cockpit_api.http.validators import CachedParameterValidator

    param = {"name": "x", "in": where, "schema": {"type": "number", "minimum": 0}}

    class Request:
        query_params = {"x": math.nan} if where == "query" else {}
        path_params = {"x": math.inf} if where == "path" else {}
        headers = {"x": -math.inf} if where == "header" else {}
        cookies: dict[str, Any] = {}

    validator = CachedParameterValidator([param], uri_parser=None, strict_validation=True)
    with pytest.raises(InvalidRequest) as refused:
        validator.validate_request(Request())  # type: ignore[arg-type]
    assert refused.value.errors == [{"pointer": f"/{where}/x", "detail": "must be a finite number"}]


def test_a_long_poll_ends_when_its_client_leaves() -> None:
    async def body(w: World) -> None:
        h = await w.login()
        poll = AsgiStream(w.app, f"{API}/events?wait=60", {**h, **JSON_ACCEPT})
        task = asyncio.get_running_loop().create_task(poll._run())
        async with asyncio.timeout(5):
            while w.feed.subscribers == 0:  # the poll is waiting in the feed
                await asyncio.sleep(0)
        poll._disconnect.set()  # the client goes
        async with asyncio.timeout(2):  # not the 60 s it asked to wait
            await task
        assert w.feed.subscribers == 0 and w.app.services.streams is not None
        assert w.app.services.streams.total == 0
        assert poll.status is None  # nobody to answer

    run(body)


# ------------------------------------------------------------------ 3. caps on streams


def test_streams_are_capped_per_user_and_in_total_with_429_and_retry_after() -> None:
    async def body(w: World) -> None:
        admin, viewer = await w.login(), await w.login("viewer")
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                s = await stack.enter_async_context(w.stream(admin))
                assert s.status == 200
            for headers in ({**admin, **SSE}, {**admin, **JSON_ACCEPT}):  # streams, long polls
                r = await w.http.get(f"{API}/events", headers=headers)
                assert r.status_code == 429, r.text
                assert r.json()["code"] == "too_many_streams"
                assert int(r.headers["retry-after"]) > 0
                assert r.headers["connection"] == "close"
            # Another user still gets one; a sandbox's streams count in the total.
            s = await stack.enter_async_context(w.stream(viewer))
            assert s.status == 200
            base = await w.sandbox(admin)
            boxed = await w.login(base=base)
            s = await stack.enter_async_context(w.stream(boxed, base))
            assert s.status == 200
            assert (await w.metric("cockpit_feed_subscribers")) == {"": 4.0}
            r = await w.http.get(f"{API}/events", headers={**viewer, **JSON_ACCEPT})
            assert r.status_code == 429 and "4" in r.json()["detail"]
        # Closed: the places are free again.
        assert (await w.metric("cockpit_feed_subscribers")) == {"": 0.0}
        async with w.stream(admin) as s:
            assert s.status == 200

    run(body, max_streams_per_user=2, max_streams=4)


def test_streams_leave_file_descriptors_for_other_clients() -> None:
    async def body(w: World) -> None:
        h = await w.login()
        use = [100, 1024]
        assert w.app.services.streams is not None
        w.app.services.streams._fd_use = lambda: (use[0], use[1])
        async with w.stream(h) as s:
            assert s.status == 200
        use[0] = 1024 - 128  # the headroom (default 128) is reached
        r = await w.http.get(f"{API}/events", headers={**h, **SSE})
        assert (r.status_code, r.json()["code"]) == (429, "too_many_streams")
        assert (await w.http.get("/healthz")).status_code == 200  # others are still served

    run(body)


def test_stream_limits_are_settings(tmp_path: Path) -> None:
    from cockpit_api.feed.changes import StreamLimits

    s = Settings.load(env={"COCKPIT_MAX_STREAMS_PER_USER": "3", "COCKPIT_MAX_STREAMS": "7",
                           "COCKPIT_STREAM_FD_HEADROOM": "64",
                           "COCKPIT_STATE_DIR": str(tmp_path)})
    assert StreamLimits.of(s) == StreamLimits(3, 7, 64)
    with pytest.raises(ConfigError):
        Settings.load(env={"COCKPIT_MAX_STREAMS": "-1"})


# ------------------------------------------------------------------ 8. metrics integrity


def test_a_sandboxes_metrics_never_touch_the_default_worlds_series() -> None:
    async def body(w: World) -> None:
        admin = await w.login()
        r = await w.http.post(f"{API}/vms/{VM}/migrate", headers=admin,
                              json={"destination_host_id": NODE2})
        assert r.status_code == 202
        w.sim.advance(3600)  # the migration completes
        finished = await w.metric("cockpit_migrations_finished_total")
        assert finished['{outcome="completed"}'] == 1.0
        hosts = await w.metric("cockpit_host_connected")
        tiny = {"hosts": [{"hostname": "zz-sandbox-host"}], "vms": [{"name": "v", "host":
                                                                     "zz-sandbox-host"}]}
        base = await w.sandbox(admin, scenario=tiny)
        for _ in range(3):  # unauthenticated, under the sandbox
            sandboxed = await w.metric("cockpit_migrations_finished_total", base)
            assert sandboxed == finished
        assert await w.metric("cockpit_migrations_finished_total") == finished
        assert await w.metric("cockpit_host_connected") == hosts
        assert not any("zz-sandbox-host" in k for k in await w.metric("cockpit_host_connected"))

    run(body)


def test_the_sandbox_and_subscriber_gauges_move() -> None:
    async def body(w: World) -> None:
        admin = await w.login()
        assert await w.metric("cockpit_sandboxes") == {"": 0.0}
        a = await w.sandbox(admin)
        await w.sandbox(admin)
        assert await w.metric("cockpit_sandboxes") == {"": 2.0}
        r = await w.http.delete(f"/_sim/sandboxes/{a.rsplit('/', 1)[1]}", headers=admin)
        assert r.status_code == 204
        assert await w.metric("cockpit_sandboxes") == {"": 1.0}
        w.auth_clock.t += 3600  # the other expires
        assert await w.metric("cockpit_sandboxes") == {"": 0.0}
        admin = await w.login()  # the old token expired with the hour
        async with w.stream(admin), w.stream(admin):
            assert await w.metric("cockpit_feed_subscribers") == {"": 2.0}
        assert await w.metric("cockpit_feed_subscribers") == {"": 0.0}

    run(body)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_metrics_accept_the_bearer_scheme_in_any_case(scheme: str) -> None:
    token = "metrics-token-" + "m" * 32

    async def body(w: World) -> None:
        r = await w.http.get("/metrics", headers={"Authorization": f"{scheme} {token}"})
        assert r.status_code == 200, r.text
        for wrong in (f"{scheme} {token}x", f"Basic {token}", token, ""):
            r = await w.http.get("/metrics", headers={"Authorization": wrong})
            assert r.status_code == 401, wrong

    run(body, metrics_token=token)


# ------------------------------------------------------------------ 9. log injection


def _record(msg: str, *args: Any, name: str = "cockpit_api", **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


FORGED = "\nINFO cockpit_api.http.access: POST /forged 200 user=admin\r\u2028\x1b[2J\u202e"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_escape_control_characters(fmt: str) -> None:
    from cockpit_api.ops import logs

    formatter = logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()
    records = [
        _record("login failed for %s", "eve" + FORGED),
        _record("%s %s %d", "GET", "/api/v1/vms" + FORGED, 404, name=logs.ACCESS_LOGGER,
                method="GET", path="/api/v1/vms" + FORGED, user="eve" + FORGED),
    ]
    try:
        raise ValueError("bad" + FORGED)
    except ValueError:
        records.append(_record("failed"))
        records[-1].exc_info = sys.exc_info()
    for record in records:
        line = formatter.format(record)
        if fmt == "json":
            assert "\n" not in line
            entry = json.loads(line)
            # As a log viewer shows it: the message, then the traceback.
            line = "\n    ".join([entry["message"], *filter(None, [entry.get("exc")])])
        first, *rest = line.split("\n")
        # Only a traceback continues a record, each of its lines indented.
        assert all(part.startswith("    ") for part in rest), line
        for c in ("\r", "\u2028", "\x1b", "\u202e"):
            assert c not in line
        assert "INFO cockpit_api.http.access" not in first or "\\x0a" in first


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_lines_escape_control_characters(fmt: str, capsys: pytest.CaptureFixture[str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from cockpit_api.ops import logs

    writer = logs.access_writer(fmt)
    with caplog.at_level(logging.INFO, logger=logs.ACCESS_LOGGER):
        writer("GET", "/api/v1/vms" + FORGED, "other", 404, 0.001, "eve" + FORGED, "rid")
        writer.flush()
    if fmt == "json":
        out = capsys.readouterr().err
        assert out.count("\n") == 1
        entry = json.loads(out)
        assert "\n" not in entry["path"] + entry["user"] + entry["message"]
        assert entry["path"].startswith("/api/v1/vms\\x0aINFO")
    else:
        line = logs.TextFormatter().format(caplog.records[0])
        assert "\n" not in line and "\r" not in line and "\u2028" not in line


# ------------------------------------------------------------------ 13. secrets in logs

REDACTED = [  # (what a log line would carry, the secret in it), uvicorn's trace shapes among them
    ("ASGI [3] Started scope={'query_string': b'ticket=Zq7ticketZq7', 'path': '/api/v1/events'}",
     "Zq7ticketZq7"),
    ("GET /api/v1/events?types=vm&ticket=Zq7ticketZq7 HTTP/1.1", "Zq7ticketZq7"),
    ("scope headers [(b'authorization', b'Bearer Zq7metricsZq7')]", "Zq7metricsZq7"),
    ("Authorization: bearer Zq7metricsZq7", "Zq7metricsZq7"),
    ("refresh with token=Zq7refreshZq7 failed", "Zq7refreshZq7"),
    ("a JWT in a path /x/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl", "eyJzdWIiOiJhIn0"),
]


@pytest.mark.parametrize(("text", "secret"), REDACTED, ids=[r[0][:30] for r in REDACTED])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_secret_reaches_a_log_line(fmt: str, text: str, secret: str) -> None:
    from cockpit_api.ops import logs

    formatter = logs.JsonFormatter() if fmt == "json" else logs.TextFormatter()
    record = _record("%s", text, name="uvicorn.asgi")
    record.levelno, record.levelname = 5, "TRACE"
    line = formatter.format(record)
    assert secret not in line and "***" in line
    # Words are not secrets.
    assert "send a bearer token" in formatter.format(_record("send a bearer token"))


# ------------------------------------------------------------------ 10. forwarded headers


def test_audit_entries_store_actors_and_paths_escaped() -> None:
    async def body(w: World) -> None:
        r = await w.http.post(f"{API}/auth/login", headers={"X-Forwarded-For": "<script>"},
                              json={"username": "eve" + FORGED, "password": "x"})
        assert r.status_code == 401
        admin = await w.login()
        # An admin's write to a path with a newline: its row is the admin's, path escaped.
        r = await w.http.post(f"{API}/vms/x%0aINFO%20forged/action?dry_run=true",
                              headers={**admin, "X-Forwarded-For": "<script>"},
                              json={"action": "start"})
        assert r.status_code == 400  # not a VM id (the path's pattern)
        entries = (await w.http.get(f"{API}/audit", headers=admin)).json()["entries"]
        # The failed login is counted (issue 18 item 5): the name it tried is the client's
        # text, and no row keeps it.
        tried = next(e for e in entries if e["status"] == 401)
        assert tried["actor"] is None and tried["address"] is None
        written = next(e for e in entries if e["status"] == 400)
        assert written["path"].startswith(f"{API}/vms/x\\x0aINFO") and "\n" not in written["path"]
        assert written["actor"] == "admin"
        assert written["address"] == "127.0.0.1"  # httpx's ASGI client, not X-Forwarded-For

    run(body)


def test_trusted_proxies_must_be_addresses(tmp_path: Path) -> None:
    assert Settings.load(env={"COCKPIT_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16",
                              "COCKPIT_STATE_DIR": str(tmp_path)}
                         ).trusted_proxies == ["10.0.0.5", "10.1.0.0/16"]
    assert Settings().trusted_proxies == []  # none trusted by default
    with pytest.raises(ConfigError):
        Settings.load(env={"COCKPIT_TRUSTED_PROXIES": "proxy.example"})


# ------------------------------------------------------------------ 14. tickets


def test_a_user_flooding_tickets_drops_only_their_own() -> None:
    tickets = Tickets()
    admins = tickets.issue("admin-token", T0, "admin")
    first = tickets.issue("viewer-token", T0, "viewer")
    for _ in range(10_001):
        tickets.issue("viewer-token", T0 + 1, "viewer")
    assert len(tickets) == 1 + tickets.per_user
    assert tickets.redeem(first, T0 + 2) is None  # the viewer's oldest went
    assert tickets.redeem(admins, T0 + 2) == "admin-token"  # never another user's


def test_tickets_in_all_are_capped_with_429_not_evicted() -> None:
    from cockpit_api.feed.changes import TooManyStreams

    tickets = Tickets(per_user=2, total=4)
    mine = [tickets.issue(f"t{i}", T0, f"user{i}") for i in range(4)]
    with pytest.raises(TooManyStreams) as refused:
        tickets.issue("t", T0 + 1, "user9")
    assert refused.value.code == "too_many_tickets" and refused.value.retry_after == 29
    assert [tickets.redeem(t, T0 + 2) for t in mine] == ["t0", "t1", "t2", "t3"]
    assert tickets.issue("t", T0 + 31, "user9")  # once they expire, there is room


def test_ticket_floods_over_http_keep_other_users_tickets() -> None:
    async def body(w: World) -> None:
        admin, viewer = await w.login(), await w.login("viewer")
        r = await w.http.post(f"{API}/events/ticket", headers=admin)
        admins = r.json()["ticket"]
        issued = [(await w.http.post(f"{API}/events/ticket", headers=viewer)).json()["ticket"]
                  for _ in range(w.feed.tickets.per_user + 1)]
        r = await w.http.get(f"{API}/events?ticket={issued[0]}", headers=JSON_ACCEPT)
        assert r.status_code == 401  # the viewer's own oldest was dropped
        r = await w.http.get(f"{API}/events?ticket={issued[-1]}", headers=JSON_ACCEPT)
        assert r.status_code == 200
        r = await w.http.get(f"{API}/events?ticket={admins}", headers=JSON_ACCEPT)
        assert r.status_code == 200

    run(body)


# ------------------------------------------------------------------ 15. sandboxes going away


def test_streams_into_a_deleted_sandbox_end_at_once_and_release_it() -> None:
    async def body(w: World) -> None:
        admin = await w.login()
        base = await w.sandbox(admin)
        sid = base.rsplit("/", 1)[1]
        boxed = await w.login(base=base)
        box = w.app.services.sandboxes.get(sid)  # type: ignore[union-attr]
        world = weakref.ref(box.services.backend)
        del box
        poll = AsgiStream(w.app, f"{base}{API}/events?wait=60", {**boxed, **JSON_ACCEPT})
        poll_task = asyncio.get_running_loop().create_task(poll._run())
        async with w.stream(boxed, base) as s:
            await s.frames(1)
            r = await w.http.delete(f"/_sim/sandboxes/{sid}", headers=admin)
            assert r.status_code == 204
            got = await s.frames(10, timeout=2)  # at once: not when the token expires
            assert s.ended and got[-1].comment == "the sandbox was deleted or expired"
            async with asyncio.timeout(2):
                await poll_task
            assert poll.status == 200
            assert json.loads(await poll.body())["events"] == []
        del s, poll, poll_task, got
        for _ in range(3):
            await asyncio.sleep(0)  # the feed's ticker takes its cancellation
        gc.collect()
        assert world() is None  # nothing holds the deleted world any more
        assert w.app.services.streams is not None and w.app.services.streams.total == 0

    run(body)


def test_streams_into_an_expired_sandbox_end() -> None:
    async def body(w: World) -> None:
        admin = await w.login()
        base = await w.sandbox(admin, ttl_seconds=60)
        boxed = await w.login(base=base)
        sid = base.rsplit("/", 1)[1]
        feed = feed_of(w.app.services.sandboxes.get(sid).services.backend)  # type: ignore[union-attr]
        feed.session_check_seconds = 0  # look on every wake-up
        async with w.stream(boxed, base) as s:
            await s.frames(1)
            w.auth_clock.t += 61  # idle past its lifetime; nobody asks the registry
            feed.pulse()  # the feed's own pulse, once a second when served
            got = await s.frames(10, timeout=2)
        assert s.ended and got[-1].comment == "the sandbox was deleted or expired"

    run(body)


def test_stream_gate_counts_release_once() -> None:
    from cockpit_api.feed.changes import StreamGate, StreamLimits

    gate = StreamGate(StreamLimits(per_user=1, total=5), fd_use=lambda: None)
    slot = gate.admit(None, "admin")
    slot.release()
    slot.release()
    assert gate.total == 0
    gate.admit("box", "admin").release()
    assert gate.total == 0 and gate._per_user == {}

