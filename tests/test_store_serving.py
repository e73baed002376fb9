"""`cockpit-api serve` on the store, as real processes: restarts, replicas, start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pg import Postgres
from tests.serving import ROOT, free_port, served

B = "/api/v1"
ADMIN = {"username": "admin", "password": "admin"}
# No configured secret: the signing key is the store's, as in a real deployment.
NO_SECRET: dict[str, str | None] = {"COCKPIT_JWT_SECRET": None}


def _login(base: str, who: dict[str, str] = ADMIN) -> dict[str, Any]:
    r = httpx.post(f"{base}{B}/auth/login", json=who, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _get_vms(base: str, token: str) -> int:
    return httpx.get(f"{base}{B}/vms", headers={"Authorization": f"Bearer {token}"},
                     timeout=30).status_code


def _eventually(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll another process until ``check`` holds, bounded by a deadline."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.1)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_restart_keeps_sessions(tmp_path: Path, engine: str,
                                  request: pytest.FixtureRequest) -> None:
    # SQLite: the default file in the state directory; PostgreSQL: --store.
    env = {**NO_SECRET, "COCKPIT_STATE_DIR": str(tmp_path / "state")}
    args = ["--speed", "0"]
    if engine == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        args += ["--store", pg.new_database()]
    with served(*args, env=env) as base:
        pair = _login(base)
        assert _get_vms(base, pair["token"]) == 200
    with served(*args, env=env) as base:
        # The old access token verifies (the key is in the store), the refresh token works.
        assert _get_vms(base, pair["token"]) == 200
        r = httpx.post(f"{base}{B}/auth/refresh", json={"refresh_token": pair["refresh_token"]},
                       timeout=30)
        assert r.status_code == 200, r.text
        assert _get_vms(base, r.json()["token"]) == 200
    if engine == "sqlite":
        assert "store.db" in {p.name for p in (tmp_path / "state").iterdir()}


def test_serve_with_no_options_writes_only_its_state_dir(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    before = sorted(os.listdir(ROOT))
    env = {"HOME": str(home), "XDG_STATE_HOME": None, "COCKPIT_STATE_DIR": None}
    with served(env=env) as base:
        _login(base)
    state = home / ".local" / "state" / "cockpit-api"
    assert (state / "store.db").is_file()
    assert state.stat().st_mode & 0o777 == 0o700
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert written and all(p.startswith(".local/state/cockpit-api/") for p in written), written
    assert sorted(os.listdir(ROOT)) == before


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Exits before it listens; a free port all the same, in case it did not.
    argv = [sys.executable, "-m", "cockpit_api.cli", "serve", "--port", str(free_port()), *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_an_unreachable_store_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _serve_fails("--store", "postgresql://cockpit:hunter2@127.0.0.1:1/cockpit")
    assert done.returncode == 2, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cockpit-api: the store postgresql://cockpit:***@127.0.0.1:1/cockpit"
                           " cannot be opened"), done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "file").write_text("")  # a file where a directory should be
    done = _serve_fails("--store", f"sqlite:///{tmp_path}/file/x.db")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("cockpit-api: the store sqlite")


def test_two_replicas_on_one_postgresql_are_one_server(postgres: Postgres) -> None:
    url = postgres.new_database()
    with served("--store", url, "--speed", "0", env=NO_SECRET) as a, \
            served("--store", url, "--speed", "0", env=NO_SECRET) as b:
        # A token issued by one is accepted by the other.
        first = _login(a)
        assert _get_vms(b, first["token"]) == 200
        # A refresh on B rotates A's family; its retry on A (within the grace) gets a new
        # pair once; a second retry is reuse, and revokes the family everywhere.
        r = httpx.post(f"{b}{B}/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200
        second = r.json()
        r = httpx.post(f"{a}{B}/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200 and r.json()["refresh_token"] != second["refresh_token"]
        r = httpx.post(f"{a}{B}/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 401 and r.json()["code"] == "refresh_token_reused"
        assert _get_vms(a, second["token"]) == 401
        _eventually(lambda: _get_vms(b, second["token"]) == 401)
        r = httpx.post(f"{b}{B}/auth/refresh", json={"refresh_token": second["refresh_token"]})
        assert r.status_code == 401
        # Logout anywhere is logout everywhere.
        third = _login(b)
        assert _get_vms(a, third["token"]) == 200
        assert httpx.post(f"{a}{B}/auth/logout",
                          json={"refresh_token": third["refresh_token"]}).status_code == 204
        _eventually(lambda: _get_vms(b, third["token"]) == 401)
        r = httpx.post(f"{b}{B}/auth/refresh", json={"refresh_token": third["refresh_token"]})
        assert r.status_code == 401
        # Throttling counts across replicas: 3 failures on A and 2 on B use up viewer's 5.
        for base in (a, a, a, b, b):
            r = httpx.post(f"{base}{B}/auth/login",
                           json={"username": "viewer", "password": "wrong"}, timeout=30)
            assert r.status_code == 401
        r = httpx.post(f"{a}{B}/auth/login", json={"username": "viewer", "password": "viewer"},
                       timeout=30)
        assert r.status_code == 429
        # One audit log: B lists what A did.
        token = _login(b)["token"]
        r = httpx.get(f"{b}{B}/audit", headers={"Authorization": f"Bearer {token}"},
                      params={"limit": 1000})
        logins = [e for e in r.json()["entries"] if e["operation"] == "login"]
        # first, third, and the one that got this token a row each; the 5 wrong and the
        # throttled one counted (unauthenticated rejects: one row per window and status)
        # (a minute's boundary may split them into two rows: the counts add up)
        counts: dict[int, int] = {}
        for e in logins:
            counts[e["status"]] = counts.get(e["status"], 0) + e["count"]
        assert counts == {200: 3, 401: 5, 429: 1}, logins
        assert all(e["count"] == 1 for e in logins if e["status"] == 200), logins


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI with a pipe (not a terminal) on stdin."""
    return subprocess.run([sys.executable, "-m", "cockpit_api.cli", *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=60)


def test_hash_password_reads_a_pipe() -> None:
    from cockpit_api.auth.service import verify_password

    done = _cli("hash-password", stdin="s3cret\n")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert verify_password("s3cret", done.stdout.strip())


def test_rotate_key_makes_a_new_current_key(tmp_path: Path) -> None:
    from cockpit_api.store import default_url, open_store

    store = open_store(default_url(tmp_path))
    first = store.current_signing_key(time.time())
    done = _cli("rotate-key", "--state-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    keys = store.signing_keys()
    assert keys[0].kid != first.kid and keys[0].kid in done.stdout
    assert [k.kid for k in keys[1:]] == [first.kid] and keys[1].retire_after is not None
    store.close()


def test_store_settings_come_from_the_file_the_environment_and_flags(tmp_path: Path) -> None:
    from cockpit_api.config import Settings

    cfg = tmp_path / "cockpit.toml"
    cfg.write_text('[store]\nurl = "postgresql://cockpit:pw@db/cockpit"\n', encoding="utf-8")
    s = Settings.load(cfg, env={})
    assert s.store_url == "postgresql://cockpit:pw@db/cockpit" and s.state_dir is None
    s = Settings.load(env={"XDG_STATE_HOME": str(tmp_path / "xdg")})
    assert s.state_dir == str(tmp_path / "xdg" / "cockpit-api")
    assert s.store_url == f"sqlite:///{tmp_path / 'xdg' / 'cockpit-api' / 'store.db'}"
    assert (tmp_path / "xdg" / "cockpit-api").stat().st_mode & 0o777 == 0o700
    s = Settings.load(env={"COCKPIT_STATE_DIR": str(tmp_path / "env")})
    assert s.store_url == f"sqlite:///{tmp_path / 'env' / 'store.db'}"
    s = Settings.load(cfg, env={"COCKPIT_STORE_URL": "sqlite:///from-env.db"},
                      store_url="sqlite:///from-flag.db")
    assert s.store_url == "sqlite:///from-flag.db"
