"""Auth on the store: sessions, revocation, throttling under concurrency, keys, audit.

The app runs in-process over a real store on each engine (the ``store_url``
fixture: SQLite and PostgreSQL), reached through httpx's ASGI transport so that
each request can come from the client address the test chooses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from cockpit_api.store import Store, open_store
from cockpit_api.store.sql import SqlStore
from tests.conftest import SECRET, T0, FakeClock
from tests.pg import Postgres

pytestmark = pytest.mark.anyio

B = "/api/v1"
ADMIN = {"username": "admin", "password": "admin"}
VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def _app(store: Store, clock: FakeClock, secret: str | None = SECRET) -> CockpitApp:
    sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    return create_app(Settings(validate_responses=True, jwt_secret=secret), backend=sim,
                      store=store, auth_clock=clock)


@pytest.fixture
def app(store: Store, auth_clock: FakeClock) -> CockpitApp:
    return _app(store, auth_clock)


class Client:
    """Requests to the in-process app from a chosen client address."""

    def __init__(self, app: CockpitApp) -> None:
        self.app = app

    def at(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://cockpit")


@pytest.fixture
async def http(app: CockpitApp) -> AsyncIterator[httpx.AsyncClient]:
    async with Client(app).at("10.0.0.1") as c:
        yield c


async def _login(c: httpx.AsyncClient, who: dict[str, str] = ADMIN) -> dict[str, Any]:
    r = await c.post(f"{B}/auth/login", json=who)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------- throttling


async def test_a_burst_of_wrong_passwords_checks_at_most_the_limit(
        app: CockpitApp, password_checks: list[tuple[str, str]]) -> None:
    checked = password_checks
    async with Client(app).at("10.0.0.7") as c:
        wrong = [c.post(f"{B}/auth/login", json={"username": "admin", "password": f"x{i}"})
                 for i in range(100)]
        right = c.post(f"{B}/auth/login", json=ADMIN)
        answers = await asyncio.gather(*wrong, right)
    statuses = [r.status_code for r in answers]
    assert len(checked) <= 5, f"{len(checked)} passwords checked"
    assert statuses.count(401) == len(checked) and statuses.count(429) == 101 - len(checked)
    assert statuses[-1] == 429  # the right password, inside the burst, is refused too
    assert all(int(r.headers["retry-after"]) > 0 for r in answers if r.status_code == 429)


async def test_failures_from_one_address_do_not_lock_the_user_out_elsewhere(
        app: CockpitApp, auth_clock: FakeClock) -> None:
    client = Client(app)
    async with client.at("203.0.113.9") as attacker, client.at("10.0.0.2") as owner:
        for i in range(20):
            r = await attacker.post(f"{B}/auth/login",
                                    json={"username": "admin", "password": f"guess{i}"})
            assert r.status_code in (401, 429)
        assert (await attacker.post(f"{B}/auth/login", json=ADMIN)).status_code == 429
        # The owner, from another address, logs in as usual.
        await _login(owner)
        # A success forgives that pair only: the attacker's address is still throttled.
        assert (await attacker.post(f"{B}/auth/login", json=ADMIN)).status_code == 429
        auth_clock.t += 300
        await _login(attacker)


async def test_the_address_limit_bounds_spraying(app: CockpitApp) -> None:
    async with Client(app).at("198.51.100.4") as c:
        for i in range(50):
            r = await c.post(f"{B}/auth/login", json={"username": f"user{i}", "password": "x"})
            assert r.status_code == 401
        r = await c.post(f"{B}/auth/login", json=ADMIN)
        assert r.status_code == 429 and r.json()["code"] == "throttled"


async def test_sim_reset_clears_throttling(http: httpx.AsyncClient) -> None:
    token = (await _login(http))["token"]
    for _ in range(5):
        await http.post(f"{B}/auth/login", json={"username": "admin", "password": "nope"})
    assert (await http.post(f"{B}/auth/login", json=ADMIN)).status_code == 429
    assert (await http.post("/_sim/reset", headers=_bearer(token))).status_code == 200
    await _login(http)


# ----------------------------------------------------------- sessions


async def test_logout_revokes_the_sessions_access_tokens(app: CockpitApp,
                                                         http: httpx.AsyncClient) -> None:
    mine, other = await _login(http), await _login(http)
    refreshed = (await http.post(f"{B}/auth/refresh",
                                 json={"refresh_token": mine["refresh_token"]})).json()
    for token in (mine["token"], refreshed["token"], other["token"]):
        assert (await http.get(f"{B}/vms", headers=_bearer(token))).status_code == 200
    r = await http.post(f"{B}/auth/logout", json={"refresh_token": refreshed["refresh_token"]})
    assert r.status_code == 204
    for token in (mine["token"], refreshed["token"]):
        r = await http.get(f"{B}/vms", headers=_bearer(token))
        assert r.status_code == 401 and r.json()["code"] == "invalid_token"
        assert "session has ended" in r.json()["detail"]
    auth = app.services.auth  # what long-lived streams ask
    claims = auth.verify(other["token"])
    assert auth.session_active(claims)
    ended = jwt.decode(mine["token"], options={"verify_signature": False})["sid"]
    assert not auth.session_active({**claims, "sid": ended})
    # Another session of the same user is untouched.
    assert (await http.get(f"{B}/vms", headers=_bearer(other["token"]))).status_code == 200


async def test_refresh_reuse_revokes_the_access_tokens_too(http: httpx.AsyncClient,
                                                           auth_clock: FakeClock) -> None:
    first = await _login(http)
    second = (await http.post(f"{B}/auth/refresh",
                              json={"refresh_token": first["refresh_token"]})).json()
    auth_clock.t += 11  # past the retry grace (refresh_grace, 10 s)
    r = await http.post(f"{B}/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "refresh_token_reused"
    assert (await http.get(f"{B}/vms", headers=_bearer(second["token"]))).status_code == 401
    r = await http.post(f"{B}/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401


async def test_refreshing_forever_keeps_one_row(http: httpx.AsyncClient, store: Store) -> None:
    rt = (await _login(http))["refresh_token"]
    for _ in range(40):
        r = await http.post(f"{B}/auth/refresh", json={"refresh_token": rt})
        assert r.status_code == 200
        rt = r.json()["refresh_token"]
    assert isinstance(store, SqlStore)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sessions")).scalar() == 1


def test_sessions_and_revocations_are_pruned(app: CockpitApp, auth_clock: FakeClock) -> None:
    auth = app.services.auth
    a = auth.login("admin", "admin", "c")
    auth.login("viewer", "viewer", "c")
    auth.logout(a.refresh_token)
    assert len(auth._revoked) == 1
    auth_clock.t += 3600 + 31
    auth.prune()  # the logged-out session's tokens are all expired now
    assert auth._revoked == {}
    store = auth.store
    assert isinstance(store, SqlStore)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sessions")).scalar() == 1
    auth_clock.t += 7 * 86400
    auth.prune()
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sessions")).scalar() == 0


# ---------------------------------------------------------- hostile exp


def _raw_token(payload: str, secret: str = SECRET) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(payload.encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _claims_text(exp: str, iat: str = str(int(T0))) -> str:
    return (f'{{"sub": "admin", "role": "admin", "iat": {iat}, "exp": {exp}, "jti": "j", '
            f'"sid": "s", "iss": "cockpit-api", "aud": "cockpit-api", "typ": "access"}}')


@pytest.mark.parametrize("exp", [
    pytest.param('"tomorrow"', id="string"),
    pytest.param("1e400", id="infinite"),
    pytest.param("NaN", id="nan"),
    pytest.param("true", id="boolean"),
    pytest.param("null", id="null"),
    pytest.param(str(int(T0) + 3600 * 24 * 365), id="a-year-out"),
    pytest.param(str(int(T0) + 3601 + 30), id="just-past-the-lifetime"),
])
async def test_exp_that_is_not_a_number_or_too_far_out_is_401(http: httpx.AsyncClient,
                                                              exp: str) -> None:
    r = await http.get(f"{B}/vms", headers=_bearer(_raw_token(_claims_text(exp))))
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "invalid_token"


async def test_the_exp_check_has_a_control(http: httpx.AsyncClient) -> None:
    token = _raw_token(_claims_text(str(int(T0) + 3600)))
    assert (await http.get(f"{B}/vms", headers=_bearer(token))).status_code == 200


# ---------------------------------------------------------- signing keys


async def test_keys_come_from_the_store_and_rotate(store: Store, auth_clock: FakeClock) -> None:
    app = _app(store, auth_clock, secret=None)
    async with Client(app).at("10.0.0.1") as c:
        old = await _login(c)
        kid = jwt.get_unverified_header(old["token"])["kid"]
        assert kid == store.current_signing_key(T0).kid
        new_kid = app.services.auth.rotate_key()
        assert new_kid != kid
        new = await _login(c)
        assert jwt.get_unverified_header(new["token"])["kid"] == new_kid
        for token in (old["token"], new["token"]):  # the old key verifies until expiry
            assert (await c.get(f"{B}/vms", headers=_bearer(token))).status_code == 200
    # Another instance on the same store (a restart, a replica) verifies both.
    again = _app(store, auth_clock, secret=None)
    async with Client(again).at("10.0.0.1") as c:
        for token in (old["token"], new["token"]):
            assert (await c.get(f"{B}/vms", headers=_bearer(token))).status_code == 200
        r = await c.post(f"{B}/auth/refresh", json={"refresh_token": old["refresh_token"]})
        assert r.status_code == 200
        assert jwt.get_unverified_header(r.json()["token"])["kid"] == new_kid


async def test_a_new_instance_on_the_store_keeps_everyone_logged_in(
        store: Store, auth_clock: FakeClock) -> None:
    async with Client(_app(store, auth_clock, secret=None)).at("10.0.0.1") as c:
        kept, ended = await _login(c), await _login(c)
        assert (await c.post(f"{B}/auth/logout",
                             json={"refresh_token": ended["refresh_token"]})).status_code == 204
    async with Client(_app(store, auth_clock, secret=None)).at("10.0.0.1") as c:
        assert (await c.get(f"{B}/vms", headers=_bearer(kept["token"]))).status_code == 200
        # Logged out before the restart: still logged out after it.
        assert (await c.get(f"{B}/vms", headers=_bearer(ended["token"]))).status_code == 401
        r = await c.post(f"{B}/auth/refresh", json={"refresh_token": kept["refresh_token"]})
        assert r.status_code == 200


# ----------------------------------------------------------------- audit


async def test_every_write_is_audited(app: CockpitApp) -> None:
    client = Client(app)
    async with client.at("10.0.0.5") as c:
        await c.post(f"{B}/auth/login", json={"username": "admin", "password": "wrong"})
        admin = await _login(c)
        h = _bearer(admin["token"])
        r = await c.post(f"{B}/vms/{VM}/action", json={"action": "start"},
                         headers={**h, "X-Request-Id": "req-123"})
        assert r.status_code == 200
        await c.post(f"{B}/vms/{VM}/action", json={"action": "start"}, headers=h)  # 409
        await c.post("/_sim/reset", headers=h)
        await c.post(f"{B}/auth/refresh", json={"refresh_token": admin["refresh_token"]})
        await c.post(f"{B}/vms/{VM}/action", json={"action": "stop"},
                     headers=_bearer("not-a-token"))  # refused by the security layer: audited
        await c.get(f"{B}/vms", headers=h)  # reads are not audited
        await c.post(f"{B}/nowhere", headers=h)  # no operation: not audited
        r = await c.get(f"{B}/audit", headers=h)
    assert r.status_code == 200, r.text
    entries = r.json()["entries"]
    seen = [(e["operation"], e["status"], e["actor"]) for e in entries]
    assert seen == [
        ("vm_action", 401, None),
        ("refresh", 200, "admin"),
        ("reset", 200, "admin"),
        ("vm_action", 409, "admin"),
        ("vm_action", 200, "admin"),
        ("login", 200, "admin"),
        ("login", 401, None),  # unauthenticated rejects are counted, without the name tried
    ]
    assert [e["count"] for e in entries] == [1] * 7
    action = entries[4]
    assert action["request_id"] == "req-123" and action["address"] == "10.0.0.5"
    assert action["path"] == f"{B}/vms/{VM}/action" and action["method"] == "POST"
    assert action["role"] == "admin" and action["at"].endswith("Z")
    # Without the header, the id the server made for the request (cockpit_api/http/access.py).
    assert entries[3]["request_id"] and entries[3]["request_id"] != "req-123"


async def test_the_audit_log_pages_and_is_for_admins(http: httpx.AsyncClient) -> None:
    for _ in range(4):
        await _login(http)
    admin = _bearer((await _login(http))["token"])
    viewer = _bearer((await _login(http, {"username": "viewer", "password": "viewer"}))["token"])
    assert (await http.get(f"{B}/audit", headers=viewer)).status_code == 403
    assert (await http.get(f"{B}/audit")).status_code == 401
    ids: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await http.get(f"{B}/audit", headers=admin, params=params)).json()
        ids += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(ids) == 6 and ids == sorted(ids, reverse=True)  # 6 logins, newest first
    for cursor in ("bm90LW91cnM", "dm1zOmEAYg"):  # garbage; a /vms cursor
        r = await http.get(f"{B}/audit", headers=admin, params={"cursor": cursor})
        assert r.status_code == 400 and r.json()["code"] == "invalid_cursor"


# ------------------------------------------------------ losing the store


async def test_a_lost_store_keeps_reads_and_refuses_logins(postgres: Postgres,
                                                           auth_clock: FakeClock) -> None:
    url = postgres.new_database()
    store = open_store(url)
    app = _app(store, auth_clock)
    async with Client(app).at("10.0.0.1") as c:
        pair = await _login(c)
        name = url.split("/")[3].split("?")[0]
        admin = sa.create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        assert (await c.get(f"{B}/vms", headers=_bearer(pair["token"]))).status_code == 200
        for path, body in (("login", ADMIN), ("refresh", {"refresh_token": pair["refresh_token"]}),
                           ("logout", {"refresh_token": pair["refresh_token"]})):
            r = await c.post(f"{B}/auth/{path}", json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["code"] == "store_unavailable" and r.headers["retry-after"] == "5"
        # A write that does not need the store is refused all the same: its audit entry
        # cannot be committed (an answered write always has one).
        r = await c.post(f"{B}/vms/{VM}/action", json={"action": "start"},
                         headers=_bearer(pair["token"]))
        assert r.status_code == 503 and r.json()["code"] == "store_unavailable"
    store.close()


def test_the_operation_index_knows_every_write_of_the_served_specs(app: CockpitApp) -> None:
    index = app.auditor.index
    assert index.find("POST", f"{B}/vms/{VM}/action") == "vm_action"
    assert index.find("POST", f"{B}/auth/login") == "login"
    assert index.find("POST", "/_sim/reset") == "reset"
    assert index.find("POST", f"{B}/vms/{VM}/action/extra") is None
    assert index.find("POST", f"{B}/vms") is None  # no such write
    assert index.find("GET", f"{B}/vms") is None  # reads are not indexed


async def test_store_calls_are_timed_and_the_store_is_a_readiness_check(
        app: CockpitApp, http: httpx.AsyncClient) -> None:
    await _login(http)
    text = (await http.get("/metrics")).text
    assert 'cockpit_store_call_duration_seconds_count{operation="count_attempts"} 1.0' in text
    assert 'cockpit_store_call_duration_seconds_count{operation="create_session"} 1.0' in text
    assert await app.services.ready_checks["store"]() is None
