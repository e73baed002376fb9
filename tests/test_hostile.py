"""Hostile and careless input: every one ends as a short 4xx problem, and the server lives on.

``HOSTILE`` is the table: one line per input. Each is sent to the in-process app
(admin token unless said otherwise) and must answer its status and ``code`` as
problem+json, short (nothing sent is echoed: every filler below is made of
``FILLER``, and no run of it longer than an excerpt may come back), and the
simulator must answer normally afterwards (no state was lost or poisoned).

Connections (header limits, slowloris, idle sockets), bodies over a real socket
and the server's log are tested against a served process on loopback below.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import NODE1, NODE2
from tests.serving import Server, free_port, receive, serve_process

API = "/api/v1"
VM = "d13c513a-42f8-4da1-97b1-165f0971b7c4"  # web-frontend-01, running on NODE1
MIB = 1024 * 1024
FILLER = "Zq"
EXCERPT_CHARS = 40  # the longest excerpt of input a problem may quote (problems.excerpt)
JSON = {"Content-Type": "application/json"}


def fill(n: int) -> str:
    return (FILLER * (n // 2 + 1))[:n]


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@dataclass(frozen=True)
class Hostile:
    name: str
    method: str
    path: str  # may name {vms_cursor}: a valid cursor of /vms
    status: int
    code: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    pointer: str | None = None  # the first `errors` entry must point here


def _b(obj: object) -> bytes:
    return json.dumps(obj).encode()


BODY_OPS = [("login", "/auth/login"), ("refresh", "/auth/refresh"), ("logout", "/auth/logout"),
            ("action", f"/vms/{VM}/action"), ("migrate", f"/vms/{VM}/migrate")]
LOGIN = _b({"username": "admin", "password": "admin"})

HOSTILE: list[Hostile] = [
    # Bodies: size, depth, media type, non-finite numbers.
    Hostile("100 MB login", "POST", f"{API}/auth/login", 413, "payload_too_large",
            b'{"username": "admin", "password": "' + fill(100 * MIB).encode() + b'"}'),
    Hostile("1 MiB + 1 action", "POST", f"{API}/vms/{VM}/action", 413, "payload_too_large",
            b" " * MIB + b"{}"),
    *[Hostile(f"50,000 levels: {n}", "POST", API + p, 400, "invalid_json", deep(50_000))
      for n, p in BODY_OPS],
    Hostile("50,000 levels: /_sim/clock", "POST", "/_sim/clock", 400, "invalid_json",
            deep(50_000)),
    Hostile("33 levels in a property", "POST", f"{API}/auth/login", 400, "invalid_json",
            b'{"username": ' + deep(33) + b', "password": "x"}'),
    Hostile("brackets in a string are not nesting", "POST", f"{API}/auth/login", 401,
            "bad_credentials", _b({"username": "[{" * 60, "password": "x"})),
    *[Hostile(f"no Content-Type: {n}", "POST", API + p, 415, "unsupported_media_type",
              LOGIN, headers={}) for n, p in BODY_OPS],
    Hostile("text/plain login", "POST", f"{API}/auth/login", 415, "unsupported_media_type",
            LOGIN, headers={"Content-Type": "text/plain; x=" + fill(4000)}),
    Hostile("NaN advance", "POST", "/_sim/clock", 400, "invalid_json", b'{"advance": NaN}'),
    Hostile("Infinity advance", "POST", "/_sim/clock", 400, "invalid_json",
            b'{"advance": Infinity}'),
    Hostile("1e400 advance", "POST", "/_sim/clock", 400, "invalid_json", b'{"advance": 1e400}'),
    Hostile("NaN speed", "POST", "/_sim/clock", 400, "invalid_json", b'{"speed": NaN}'),
    Hostile("-1e400 speed", "POST", "/_sim/clock", 400, "invalid_json", b'{"speed": -1e400}'),
    Hostile("NaN at_percent", "POST", "/_sim/faults", 400, "invalid_json",
            b'{"operation": "migrate", "mode": "fail", "at_percent": NaN}'),
    Hostile("1e400 latency", "POST", "/_sim/latency", 400, "invalid_json", b'{"ms": 1e400}'),
    Hostile("NaN in a scenario", "POST", "/_sim/scenario", 400, "invalid_json",
            b'{"data": {"hosts": [{"hostname": "a"}], "vms": [{"name": "v", "host": "a",'
            b' "guest": {"load": NaN}}]}}'),
    Hostile("not UTF-8", "POST", f"{API}/auth/login", 400, "invalid_json",
            b'{"username": "\xff\xfe", "password": "x"}'),
    Hostile("not JSON", "POST", f"{API}/vms/{VM}/action", 400, "invalid_json",
            b'{"action": ' + fill(5000).encode()),
    # Echoes: a long value or name never comes back, the field is pointed at.
    Hostile("2,000-char password", "POST", f"{API}/auth/login", 400, "bad_request",
            _b({"username": "admin", "password": fill(2000)}), pointer="/body/password"),
    Hostile("long unknown property", "POST", f"{API}/auth/login", 400, "bad_request",
            _b({"username": "admin", "password": "admin", fill(3000): 1})),
    Hostile("8 KB cursor", "GET", f"{API}/vms?cursor={fill(8192)}", 400, "bad_request",
            pointer="/query/cursor"),
    Hostile("long unknown query parameter", "GET", f"{API}/hosts?{fill(3000)}=1", 400,
            "bad_request"),
    Hostile("limit over 1000", "GET", f"{API}/vms?limit=5000", 400, "bad_request",
            pointer="/query/limit"),
    Hostile("bad action", "POST", f"{API}/vms/{VM}/action", 400, "bad_request",
            _b({"action": fill(500)}), pointer="/body/action"),
    Hostile("long fault message", "POST", "/_sim/faults", 400, "bad_request",
            _b({"operation": "action", "message": fill(600)}), pointer="/body/message"),
    Hostile("empty body", "POST", f"{API}/vms/{VM}/action", 400, "bad_request", b"",
            pointer="/body"),
    # Cursors belong to their list; metric windows run forward.
    Hostile("garbage cursor", "GET", f"{API}/vms?cursor=garbage", 400, "invalid_cursor"),
    Hostile("a /vms cursor on /hosts", "GET", f"{API}/hosts?cursor={{vms_cursor}}", 400,
            "invalid_cursor"),
    Hostile("a /vms cursor on /migrations", "GET", f"{API}/migrations?cursor={{vms_cursor}}",
            400, "invalid_cursor"),
    Hostile("VM metrics start > end", "GET", f"{API}/vms/{VM}/metrics?start=2000&end=1000", 400,
            "invalid_window"),
    Hostile("host metrics start > end", "GET",
            f"{API}/hosts/{NODE1}/metrics?start=2000&end=1000", 400, "invalid_window"),
]


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[TestClient, dict[str, str]]]:
    """One app for the whole table (building one takes a second): every case is refused."""
    from cockpit_api.app import create_app
    from cockpit_api.backends.sim import scenario
    from cockpit_api.backends.sim.backend import SimulatedBackend
    from cockpit_api.backends.sim.clock import VirtualClock
    from cockpit_api.config import Settings
    from tests.conftest import SECRET, T0, login

    sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    app = create_app(Settings(validate_responses=True, jwt_secret=SECRET), backend=sim)
    with TestClient(app) as c:
        yield c, login(c, "admin", "admin")


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_input(shared: tuple[TestClient, dict[str, str]], case: Hostile) -> None:
    client, admin = shared
    path = case.path
    if "{vms_cursor}" in path:
        cursor = client.get(f"{API}/vms?limit=1", headers=admin).json()["next_cursor"]
        path = path.replace("{vms_cursor}", cursor)
    r = client.request(case.method, path, content=case.body, headers={**admin, **case.headers})
    assert (r.status_code, r.headers["content-type"]) == (case.status, "application/problem+json")
    problem = r.json()
    assert problem["code"] == case.code and problem["status"] == case.status
    assert len(r.content) < 2048
    assert FILLER * (EXCERPT_CHARS // 2 + 1) not in r.text  # no run of input longer than that
    for word in ("Traceback", "jsonschema", "Failed validating", "codec", "RecursionError"):
        assert word not in r.text
    if case.pointer:
        assert problem["errors"][0]["pointer"] == case.pointer
    # Nothing was lost or poisoned: the simulator and the API answer as before.
    state = client.get("/_sim/state", headers=admin)
    assert state.status_code == 200 and state.json()["now"] == pytest.approx(1_800_000_000.0)
    assert len(client.get(f"{API}/vms?limit=1000", headers=admin).json()["vms"]) == 14


def test_validation_problems_point_at_each_field(client: TestClient,
                                                 admin: dict[str, str]) -> None:
    r = client.get(f"{API}/vms?limit=5000&status=flying", headers=admin)
    assert r.json()["errors"] == [
        {"pointer": "/query/limit", "detail": "must be at most 1000"},
        {"pointer": "/query/status", "detail": "must be one of: nostate, running, blocked, "
                                               "paused, shutdown, shutoff, crashed, pmsuspended"},
    ]
    r = client.post(f"{API}/vms/{VM}/migrate", json={"live": "yes"}, headers=admin)
    assert sorted((e["pointer"], e["detail"]) for e in r.json()["errors"]) == [
        ("/body/destination_host_id", "is required"),
        ("/body/live", "must be of type boolean"),
    ]


def test_anyof_and_oneof_problems_name_the_field_and_the_shapes(
        client: TestClient, admin: dict[str, str]) -> None:
    """They said "does not match any allowed combination of values", naming neither; and
    when one shape fits the value's type, what is wrong inside it follows. Never the value."""
    shapes = "must be a string matching ^[A-Za-z0-9_-]{1,64}$ or an object"
    long_name = "x" * 500 + "!"
    cases: list[tuple[object, list[tuple[str, str]]]] = [
        (5, [("/body/scenario", shapes)]),
        (long_name, [("/body/scenario", shapes),
                     ("/body/scenario", "must match ^[A-Za-z0-9_-]{1,64}$")]),
        ({"hosts": 5}, [("/body/scenario", shapes),
                        ("/body/scenario/hosts", "must be of type array")]),
        ({"y" * 300: 1}, [("/body/scenario", shapes),
                          ("/body/scenario/" + "y" * 39 + "…", "is not allowed")]),
    ]
    for scenario, errors in cases:
        r = client.post("/_sim/sandboxes", json={"scenario": scenario}, headers=admin)
        assert r.status_code == 400, r.text
        problem = r.json()
        assert [(e["pointer"], e["detail"]) for e in problem["errors"]] == errors
        assert problem["detail"].startswith(f"/body/scenario: {shapes}")
        assert "x" * 41 not in r.text and "y" * 41 not in r.text
    r = client.post("/_sim/faults", json={"operation": "action", "mode": "fail"}, headers=admin)
    assert r.status_code == 400
    assert r.json()["errors"] == [{"pointer": "/body", "detail":
                                   "must be an object whose operation is migrate or an object "
                                   "whose mode is reject"}]


def test_a_valid_chunked_body_works(client: TestClient, admin: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"destination_host_id": '
        yield f'"{NODE2}"}}'.encode()

    r = client.post(f"{API}/vms/{VM}/migrate", content=chunks(), headers={**admin, **JSON})
    assert r.status_code == 202, r.text
    r = client.post(f"{API}/auth/login", content=iter([LOGIN[:5], LOGIN[5:]]), headers=JSON)
    assert r.status_code == 200, r.text


def test_a_nan_clock_cannot_poison_the_simulator(client: TestClient,
                                                 admin: dict[str, str]) -> None:
    for body in (b'{"advance": NaN}', b'{"speed": Infinity}'):
        client.post("/_sim/clock", content=body, headers={**admin, **JSON})
    assert client.get(f"{API}/vms/{VM}", headers=admin).status_code == 200
    r = client.post("/_sim/clock", json={"advance": 30}, headers=admin)
    assert r.status_code == 200 and r.json()["now"] == 1_800_000_030.0


def test_the_body_limit_is_a_setting(sim: object, tmp_path: Path) -> None:
    from cockpit_api.app import create_app
    from cockpit_api.config import Settings
    from tests.conftest import SECRET

    # Its own state directory: without one, Settings.load opens the store in $HOME.
    settings = Settings.load(env={"COCKPIT_MAX_BODY_BYTES": "64", "COCKPIT_JWT_SECRET": SECRET,
                                  "COCKPIT_MAX_JSON_DEPTH": "2",
                                  "COCKPIT_STATE_DIR": str(tmp_path)})
    with TestClient(create_app(settings, backend=sim)) as c:  # type: ignore[arg-type]
        assert c.post(f"{API}/auth/login", content=LOGIN, headers=JSON).status_code == 200
        r = c.post(f"{API}/auth/login", content=LOGIN + b" " * 64, headers=JSON)
        assert r.status_code == 413
        r = c.post(f"{API}/auth/login", content=b'{"username": [[1]], "password": "x"}',
                   headers=JSON)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_json")


# ------------------------------------------------------------------ a served process

LIMITS = """
[limits]
max_body_bytes = 65536
header_timeout = 1.5
keepalive_timeout = 1.0
max_headers = 50
max_header_bytes = 8192
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("limits") / "cockpit.toml"
    config.write_text(LIMITS, encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
            "--config", str(config), "--log-level", "trace", "--access-log"]
    with serve_process(argv, port) as s:
        yield s


def _port(server: Server) -> int:
    return int(server.base.rsplit(":", 1)[1])


@contextlib.contextmanager
def _socket(server: Server) -> Iterator[socket.socket]:
    s = socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
    try:
        yield s
    finally:
        s.close()


def _answer(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout``): its answer, if any."""
    return receive(s, timeout, errors=(ConnectionResetError,))


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _served_ok(server: Server) -> None:
    r = httpx.get(f"{server.base}{API}/hosts", timeout=2)
    assert r.status_code == 401  # answered at once, by the app


@pytest.mark.parametrize(("name", "head", "status"), [
    ("100 headers", b"".join(b"X-%d: a\r\n" % i for i in range(100)), 431),
    ("1 MB header", b"X-Big: " + b"a" * MIB + b"\r\n", 431),
    ("10,000 headers", b"X: a\r\n" * 10_000, 431),
])
def test_header_limits_are_431(server: Server, name: str, head: bytes, status: int) -> None:
    with _socket(server) as s:
        with contextlib.suppress(OSError):  # the server may close while we still send
            s.sendall(b"GET /api/v1/hosts HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
        answer = _answer(s)
    assert _status(answer) == status, answer[:200]
    assert b"application/problem+json" in answer and b'"headers_too_large"' in answer
    _served_ok(server)


def test_a_long_url_is_414(server: Server) -> None:
    with _socket(server) as s:
        with contextlib.suppress(OSError):
            s.sendall(b"GET /api/v1/hosts?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(_answer(s)) == 414


def test_idle_and_slow_clients_are_dropped_while_others_are_served(server: Server) -> None:
    silent = [socket.create_connection(("127.0.0.1", _port(server)), timeout=10)
              for _ in range(100)]
    try:
        with _socket(server) as slow:
            slow.sendall(b"GET /api/v1/hosts HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            answer = b""
            # A slowloris: a header line every 0.2 s keeps bytes coming; the head deadline
            # (1.5 s) still ends it. Meanwhile others are served at once.
            while time.monotonic() - started < 5:
                ready, _, _ = select.select([slow], [], [], 0.2)
                if ready:
                    answer = _answer(slow)
                    break
                with contextlib.suppress(OSError):
                    slow.sendall(b"X-Slow: 1\r\n")
                _served_ok(server)
            assert _status(answer) == 408, answer[:200]
            assert 1.4 < time.monotonic() - started < 3.5
        # The silent sockets were closed by the server (idle timeout 1 s), each of them.
        for s in silent:
            assert _answer(s, timeout=3) == b""
            assert time.monotonic() - started < 6
    finally:
        for s in silent:
            s.close()
    _served_ok(server)


def test_a_keep_alive_connection_is_closed_when_idle(server: Server) -> None:
    with _socket(server) as s:
        s.sendall(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        answer = _answer(s, timeout=4)
        assert _status(answer) == 200 and time.monotonic() - started < 3


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_413_before_it_is_read(server: Server, chunked: bool) -> None:
    head = b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with _socket(server) as s:
        if chunked:
            s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (16384, b"a" * 16384)
            with contextlib.suppress(OSError):
                for _ in range(8):  # 128 KiB, over the 64 KiB limit
                    s.sendall(chunk)
        else:
            # Announces 100 MB, sends 1 KB: the answer must not wait for the rest.
            s.sendall(head + b"Content-Length: 100000000\r\n\r\n" + b"a" * 1024)
        answer = _answer(s)
    assert _status(answer) == 413, answer[:200]
    assert b"connection: close" in answer.lower() and b"a" * 64 not in answer
    _served_ok(server)


def test_no_password_or_token_reaches_the_log(server: Server) -> None:
    secret_password = "Zq-wrong-password-" + fill(30)
    client = httpx.Client(base_url=server.base, timeout=10)
    client.post(f"{API}/auth/login", json={"username": "admin", "password": secret_password})
    client.post(f"{API}/auth/login", json={"username": "admin", "password": fill(3000)})
    client.post(f"{API}/auth/login", json={"username": secret_password, "password": "admin"})
    pair = client.post(f"{API}/auth/login", json={"username": "admin", "password": "admin"}).json()
    bearer = {"Authorization": f"Bearer {pair['token']}"}
    client.get(f"{API}/vms?limit=5000", headers=bearer)
    client.get(f"{API}/vms?ticket={pair['token']}", headers=bearer)
    client.post(f"{API}/auth/refresh", json={"refresh_token": pair["refresh_token"] + "x"})
    client.post(f"{API}/auth/logout", json={"refresh_token": pair["refresh_token"]})
    client.close()
    log = server.log()
    assert "/api/v1/vms" in log and "TRACE" in log  # access and trace logs were written
    for secret in (secret_password, fill(60), pair["token"], pair["refresh_token"]):
        assert secret not in log


def test_hash_password_reads_a_pipe(tmp_path: Path) -> None:
    import subprocess

    from cockpit_api.auth.service import verify_password

    run = subprocess.run([sys.executable, "-m", "cockpit_api.cli", "hash-password"],
                         input="s3cret\n", capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert verify_password("s3cret", run.stdout.strip())


@pytest.mark.parametrize("env", [{"COCKPIT_MAX_BODY_BYTES": "1MB"}, {"COCKPIT_BODY_TIMEOUT": "nan"},
                                 {"COCKPIT_HEADER_TIMEOUT": "inf"}, {"COCKPIT_MAX_HEADERS": "0"},
                                 {"COCKPIT_MAX_JSON_DEPTH": "5000"}])
def test_limits_must_be_sane(env: dict[str, str]) -> None:
    from cockpit_api.config import ConfigError, Settings

    with pytest.raises(ConfigError):
        Settings.load(env=env)


def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    import asyncio
    from typing import Any

    from cockpit_api.http.body_limits import BodyLimits, RequestLimits

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not be reached")

    async def run() -> list[Any]:
        sent: list[Any] = []
        never = asyncio.Event()

        async def receive() -> Any:
            await never.wait()  # a client that announced a body and sends nothing
            return {}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": f"{API}/auth/login",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"9")]}
        await RequestLimits(app, BodyLimits(body_timeout=0.05))(scope, receive, send)
        return sent

    start, body = asyncio.run(run())
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["code"] == "request_timeout"
