"""Hostile input against the store, round two (issue 18 items 2, 5, 11, 12, 16, 17, 18).

A readable state directory (the signing key), an audit log that anonymous traffic
grows, cursors that overflow, a full disk that drops audit entries, a refresh retry
taken for theft, two servers on one state directory, ``rotate-key`` on a typo.
In-process where the app is enough; real ``cockpit-api`` processes for the CLI,
the state directory and its lock; a real 1 MiB filesystem for the full disk.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from cockpit_api.app import CockpitApp, create_app
from cockpit_api.auth.service import AuthError, AuthService, AuthSettings, User, hash_password
from cockpit_api.backends.sim import scenario
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock
from cockpit_api.config import Settings
from cockpit_api.store import Store, open_store
from tests.conftest import SECRET, T0, FakeClock, login
from tests.pg import Postgres
from tests.serving import ROOT, free_port, served

API = "/api/v1"
VM = "bc2c8e3e-93af-4954-a14c-1d7e84488709"  # build-runner-01, shut off
NO_SECRET: dict[str, str | None] = {"COCKPIT_JWT_SECRET": None}


def _app(settings: Settings, store: Store | None = None,
         clock: FakeClock | None = None) -> CockpitApp:
    sim = SimulatedBackend(scenario.load("default"), VirtualClock(T0))
    return create_app(settings, backend=sim, store=store, auth_clock=clock or FakeClock())


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _eventually(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll another process until ``check`` holds, bounded by a deadline."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


# ------------------------------------------------------- item 11: audit cursors


def test_audit_cursors_are_ascii_digits_of_a_bounded_length(client: TestClient,
                                                            admin: dict[str, str]) -> None:
    for _ in range(3):
        client.post(f"{API}/vms/{VM}/action", json={"action": "start"}, headers=admin)
    first = client.get(f"{API}/audit", headers=admin, params={"limit": 1}).json()
    assert first["next_cursor"] is not None
    r = client.get(f"{API}/audit", headers=admin, params={"cursor": first["next_cursor"]})
    assert r.status_code == 200 and r.json()["entries"]
    # 23 digits overflowed the 64-bit column (a 500); "٣" is a digit to str.isdigit and
    # to int(); the rest are numbers _cursor never writes.
    for text in ("audit:99999999999999999999999", "audit:٣", "audit:0", "audit:007",
                 "audit:+3", "audit: 3", "audit:3_0", "audit:9" * 19, "audit:"):
        r = client.get(f"{API}/audit", headers=admin, params={"cursor": _cursor(text)})
        assert r.status_code == 400, (text, r.status_code, r.text)
        assert r.json()["code"] == "invalid_cursor"
        assert text not in r.text  # never an echo
    # The largest id the column holds is still a cursor.
    r = client.get(f"{API}/audit", headers=admin,
                   params={"cursor": _cursor("audit:" + "9" * 18)})
    assert r.status_code == 200


# ---------------------------------------------------- item 16: refresh retry grace


@pytest.fixture
def auth(store_url: str) -> Iterator[tuple[AuthService, FakeClock]]:
    clock = FakeClock()
    store = open_store(store_url)
    service = AuthService([User("admin", hash_password("admin"), "admin")],
                          AuthSettings(SECRET), clock=clock, store=store)  # grace: 10 s
    yield service, clock
    store.close()


def _sid(token: str) -> str:
    sid: str = jwt.decode(token, options={"verify_signature": False})["sid"]
    return sid


def test_a_refresh_retried_within_the_grace_gets_a_pair_once(
        auth: tuple[AuthService, FakeClock]) -> None:
    service, clock = auth
    a = service.login("admin", "admin", "10.0.0.1")
    b = service.refresh(a.refresh_token)  # committed; say the answer never arrived
    clock.t += 3
    c = service.refresh(a.refresh_token)  # the client's retry: not reuse
    assert c.refresh_token not in (a.refresh_token, b.refresh_token)
    assert _sid(c.token) == _sid(a.token)  # the same session goes on
    service.verify(c.token)
    d = service.refresh(c.refresh_token)  # and it keeps rotating
    service.verify(d.token)
    # A second retry of the same token is reuse: the session is revoked.
    clock.t += 1
    with pytest.raises(AuthError) as info:
        service.refresh(a.refresh_token)
    assert info.value.code == "refresh_token_reused"
    with pytest.raises(AuthError):
        service.verify(d.token)


def test_after_the_grace_or_past_the_successor_a_replaced_token_is_reuse(
        auth: tuple[AuthService, FakeClock]) -> None:
    service, clock = auth
    a = service.login("admin", "admin", "10.0.0.1")
    b = service.refresh(a.refresh_token)
    clock.t += 10.5  # past the grace
    with pytest.raises(AuthError) as info:
        service.refresh(a.refresh_token)
    assert info.value.code == "refresh_token_reused"
    with pytest.raises(AuthError):
        service.refresh(b.refresh_token)  # revoked with its family
    # Two generations back is reuse at once: the successor was used, so it arrived.
    a = service.login("admin", "admin", "10.0.0.1")
    b = service.refresh(a.refresh_token)
    service.refresh(b.refresh_token)
    with pytest.raises(AuthError) as info:
        service.refresh(a.refresh_token)
    assert info.value.code == "refresh_token_reused"
    # The successor the retry replaced is spent: whoever still has it is a copy.
    a = service.login("admin", "admin", "10.0.0.1")
    b = service.refresh(a.refresh_token)
    c = service.refresh(a.refresh_token)
    with pytest.raises(AuthError) as info:
        service.refresh(b.refresh_token)
    assert info.value.code == "refresh_token_reused"
    with pytest.raises(AuthError):
        service.verify(c.token)


def test_a_retry_in_the_grace_is_recognised_once_by_the_store(
        auth: tuple[AuthService, FakeClock]) -> None:
    from cockpit_api.store import Session

    store = auth[0].store
    store.create_session(Session("fam", "sid", "admin", T0, T0 + 100), "d0")
    assert store.rotate_refresh("fam", "d0", "d1", T0 + 1, T0 + 100, grace=10).outcome == \
        "rotated"
    # Two retries at once (say, two replicas): one gets the pair, the other is reuse.
    assert store.rotate_refresh("fam", "d0", "d2", T0 + 2, T0 + 100, grace=10).outcome == \
        "retried"
    assert store.rotate_refresh("fam", "d0", "d3", T0 + 2, T0 + 100, grace=10).outcome == \
        "reused"


# -------------------------------------------- item 5: anonymous traffic, caps


def test_unauthenticated_rejects_are_counted_not_written_row_by_row() -> None:
    app = _app(Settings(jwt_secret=SECRET))
    store = app.services.auth.store
    with TestClient(app) as c:
        h = login(c, "admin", "admin")
        before = len(store.audit_page(100_000))
        sent = 0
        for i in range(60):
            c.post(f"{API}/vms/{VM}/action", json={"action": "start"},
                   headers={"Authorization": f"Bearer forged-{i}"})  # 401
            c.post(f"{API}/auth/login", json={"username": f"u{i}", "password": "x"})  # 401/429
            c.post(f"{API}/auth/logout", json={"refresh_token": f"f{i}.no"})  # 204, no session
            c.post(f"{API}/auth/login", json={"username": "admin"})  # 400
            sent += 4
        rows = store.audit_page(100_000)
        new = rows[: len(rows) - before]
        # A handful of counted rows (per operation and status), not 240.
        assert len(new) <= 8, [(e.operation, e.status, getattr(e, "count", 1)) for e in new]
        assert sum(e.count for e in new) == sent
        assert all(e.actor is None and e.address is None for e in new)
        listed = c.get(f"{API}/audit", headers=h, params={"limit": 1000}).json()["entries"]
        assert sum(e["count"] for e in listed[: len(new)]) == sent
        # An authenticated write is a row of its own, as before.
        c.post(f"{API}/vms/{VM}/action", json={"action": "start"}, headers=h)
        newest = store.audit_page(1)[0]
        assert (newest.actor, newest.count, newest.operation) == ("admin", 1, "vm_action")


def test_the_audit_log_of_each_world_is_capped() -> None:
    clock = FakeClock()
    app = _app(Settings(jwt_secret=SECRET, audit_max_rows=30, sandbox_audit_max_rows=10),
               clock=clock)
    store = app.services.auth.store
    with TestClient(app) as c:
        h = login(c, "admin", "admin")
        for _ in range(60):
            c.post(f"{API}/vms/{VM}/action", json={"action": "start"}, headers=h)
        rows = store.audit_page(1000)
        assert len(rows) == 30 and rows[0].id is not None
        assert [e.id for e in rows] == list(range(rows[0].id, rows[0].id - 30, -1))
        # A sandbox's log lives in its memory: capped by sandbox_audit_max_rows.
        box = c.post("/_sim/sandboxes", json={"speed": 0}, headers=h).json()
        r = c.post(f"{box['path']}{API}/auth/login",
                   json={"username": "admin", "password": "admin"})
        bh = {"Authorization": f"Bearer {r.json()['token']}"}
        for _ in range(40):
            c.post(f"{box['path']}{API}/vms/{VM}/action", json={"action": "start"}, headers=bh)
        sandbox = app.services.sandboxes
        assert sandbox is not None
        inner = sandbox.get(box["id"]).services.auth.store
        assert len(inner.audit_page(1000)) == 10
        listed = c.get(f"{box['path']}{API}/audit", headers=bh, params={"limit": 1000})
        assert len(listed.json()["entries"]) == 10


# --------------------------------------------------------- item 12: a full disk


@contextlib.contextmanager
def _tiny_filesystem() -> Iterator[Path]:
    """A real 1 MiB tmpfs (root only), unmounted at the end whatever happens."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 1 MiB tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="cockpit-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                           str(where)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=30, check=False)
        where.rmdir()


def test_on_a_full_disk_an_answered_write_has_its_audit_entry() -> None:
    with _tiny_filesystem() as fs:
        store = open_store(f"sqlite:///{fs / 'store.db'}")
        app = _app(Settings(jwt_secret=SECRET), store=store)
        try:
            with TestClient(app) as c:
                h = login(c, "admin", "admin")
                assert c.get("/readyz").status_code == 200
                # Most of the space gone; what is left fills within a few hundred writes.
                filler = fs / "filler"
                free = shutil.disk_usage(fs).free
                filler.write_bytes(b"\0" * max(0, free - 160 * 1024))
                answered, refused = 0, 0
                for i in range(3000):
                    r = c.post(f"{API}/vms/{VM}/action",
                               json={"action": "start" if i % 2 else "stop"}, headers=h)
                    if r.status_code == 503:
                        assert r.json()["code"] == "store_unavailable"
                        assert r.headers["retry-after"] == "5"
                        refused += 1
                        if refused == 20:
                            break
                    else:
                        answered += 1
                assert refused == 20, "the disk never filled"
                # Every answered action has its entry (reads still work on a full disk).
                rows = store.audit_page(100_000)
                actions = [e for e in rows if e.operation == "vm_action"]
                assert len(actions) == answered, (len(actions), answered)
                r = c.get("/readyz")
                assert r.status_code == 503 and "store" in r.json()["detail"]
                assert "cannot write" in r.json()["detail"]
                # Space again: readiness says so, and writes are served (and audited).
                filler.unlink()
                assert c.get("/readyz").status_code == 200
                r = c.post(f"{API}/vms/{VM}/action", json={"action": "start"}, headers=h)
                assert r.status_code in (200, 409), r.text
                assert store.audit_page(1)[0].status == r.status_code
        finally:
            store.close()


# ------------------------------------------------ item 2: a private state dir


def _cli(*args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, **(env or {}))
    full.pop("COCKPIT_JWT_SECRET", None)
    return subprocess.run([sys.executable, "-m", "cockpit_api.cli", *args], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=timeout)


def _one_line_exit_2(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cockpit-api: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_open_state_dir_is_refused_and_the_store_files_are_private(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    done = _cli("serve", "--port", str(free_port()), "--state-dir", str(shared), timeout=20)
    _one_line_exit_2(done, str(shared), "0755", "chmod 700")
    assert list(shared.iterdir()) == []  # nothing was made in it
    shared.chmod(0o730)  # group-writable is as bad
    _one_line_exit_2(_cli("rotate-key", "--state-dir", str(shared)), "0730")
    # A private one: served with the usual umask, every file it makes is 0600,
    # and an older, wider store.db is narrowed.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "store.db").touch(mode=0o644)
    (private / "store.db").chmod(0o644)
    old = os.umask(0o022)
    try:
        with served("--state-dir", str(private), env=NO_SECRET) as base:
            r = httpx.post(f"{base}{API}/auth/login",
                           json={"username": "admin", "password": "admin"}, timeout=30)
            assert r.status_code == 200
            made = sorted(p.name for p in private.iterdir())
            assert {"store.db", "store.db-wal", "store.db-shm", "serve.lock"} <= set(made)
            assert {p.name: _mode(p) for p in private.iterdir()} == dict.fromkeys(made, 0o600)
    finally:
        os.umask(old)
    assert _mode(private) == 0o700


# ------------------------------------------------ item 17: one server per state dir


def test_a_second_server_on_one_state_dir_exits_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with served("--state-dir", str(state)) as base:
        port = free_port()
        argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(port),
                "--state-dir", str(state)]
        second = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            out, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            out, err = second.communicate()
            pytest.fail(f"the second server kept running:\n{err}")
        _one_line_exit_2(subprocess.CompletedProcess(argv, second.returncode, out, err),
                         str(state), "in use by another cockpit-api serve", "--state-dir")
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # the first serves
    # Once the first is gone, the directory is free again (the kernel's lock, no stale file).
    with served("--state-dir", str(state)) as base:
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


def test_replicas_on_one_postgresql_with_their_own_state_dirs_serve(
        tmp_path: Path, postgres: Postgres) -> None:
    url = postgres.new_database()
    with served("--store", url, "--state-dir", str(tmp_path / "a"), env=NO_SECRET) as a, \
            served("--store", url, "--state-dir", str(tmp_path / "b"), env=NO_SECRET) as b:
        r = httpx.post(f"{a}{API}/auth/login", json={"username": "admin", "password": "admin"},
                       timeout=30)
        token = r.json()["token"]
        r = httpx.get(f"{b}{API}/vms", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200


# -------------------------------------------------------- item 18: rotate-key


def test_rotate_key_refuses_a_missing_store(tmp_path: Path, postgres: Postgres) -> None:
    typo = tmp_path / "stat-dir"
    _one_line_exit_2(_cli("rotate-key", "--state-dir", str(typo)), "no store", str(typo))
    assert not typo.exists()  # no empty store (or directory) made
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    _one_line_exit_2(_cli("rotate-key", "--state-dir", str(empty)), "no store")
    assert list(empty.iterdir()) == []
    # A database without the schema is no store either (and is left without one).
    url = postgres.new_database()
    _one_line_exit_2(_cli("rotate-key", "--store", url), "holds no store")
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_rotate_key_revoke_retires_a_key_at_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with served("--state-dir", str(state), env=NO_SECRET) as base:
        def login_() -> dict[str, Any]:
            r = httpx.post(f"{base}{API}/auth/login",
                           json={"username": "admin", "password": "admin"}, timeout=30)
            assert r.status_code == 200
            body: dict[str, Any] = r.json()
            return body

        def vms(token: str) -> int:
            return httpx.get(f"{base}{API}/vms", headers={"Authorization": f"Bearer {token}"},
                             timeout=30).status_code

        leaked = login_()
        kid = jwt.get_unverified_header(leaked["token"])["kid"]
        assert vms(leaked["token"]) == 200
        done = _cli("rotate-key", "--state-dir", str(state), "--revoke", kid)
        assert done.returncode == 0, done.stderr
        assert kid in done.stdout and "revoked" in done.stdout
        # The server polls the store every second: the leaked key's tokens are refused.
        _eventually(lambda: vms(leaked["token"]) == 401, seconds=10)
        fresh = login_()
        assert jwt.get_unverified_header(fresh["token"])["kid"] != kid
        assert vms(fresh["token"]) == 200
        _one_line_exit_2(_cli("rotate-key", "--state-dir", str(state), "--revoke", kid),
                         "no signing key")
