"""schemathesis hooks for ``cockpit-api conformance`` (loaded through SCHEMATHESIS_HOOKS).

Two jobs:

- auth: log in with the operator's credentials, send the token, refresh it with
  the refresh token before it expires (and log in again if that fails);
- safety: every request that changes a VM is rewritten, just before it is sent,
  to target only the VMs the operator named, and a cancel only ever names a
  migration this run started. Read-only runs never reach here with a write:
  the command excludes those operations.

Settings come from the COCKPIT_CONFORMANCE environment variable (JSON), set by
:mod:`cockpit_api.conformance.runner`.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import schemathesis

_CFG: dict[str, Any] = json.loads(os.environ.get("COCKPIT_CONFORMANCE", "{}"))
_API = str(_CFG.get("api", "")).rstrip("/")
_ALLOWED: list[str] = list(_CFG.get("vms", []))
_WRITES = {"vm_action", "migrate_vm", "cancel_migration"}
# A migration id no server will have: cancels of anything else become this.
_NO_MIGRATION = "conformance-run-none"


class _Session:
    """One login, refreshed before expiry; thread-safe (schemathesis may run workers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh: str | None = None
        self._expires = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires:
                self._renew()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._expires = 0.0

    def _renew(self) -> None:
        pair = None
        if self._refresh is not None:
            r = httpx.post(f"{_API}/auth/refresh", json={"refresh_token": self._refresh},
                           timeout=30)
            pair = r.json() if r.status_code == 200 else None
        if pair is None:
            r = httpx.post(f"{_API}/auth/login", timeout=30,
                           json={"username": _CFG["username"], "password": _CFG["password"]})
            r.raise_for_status()
            pair = r.json()
        self._token, self._refresh = pair["token"], pair["refresh_token"]
        # Renew at 80% of the lifetime so no request goes out with a dying token.
        self._expires = time.monotonic() + 0.8 * float(pair["expires_in"])


_SESSION = _Session()


@schemathesis.auth(refresh_interval=1)
class CockpitAuth:
    def get(self, case: Any, ctx: Any) -> str:
        return _SESSION.token()

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


_next_vm = itertools.cycle(_ALLOWED or ["00000000-0000-4000-8000-000000000000"])
_started: list[str] = []
_started_lock = threading.Lock()


_auth_calls = itertools.count()


def _real_credentials(op: str, case: Any) -> None:
    """Send the real credentials in one positive login/refresh case out of four.

    Fuzzed credentials only ever get 401, which leaves the success answers
    untested and makes schemathesis report the operations as unauthenticated.
    Every other login case that names the operator's own user is moved to
    another username: wrong passwords for the real account would lock it out
    (per-user login throttling) on the deployment under test.
    """
    if not isinstance(case.body, dict):
        return
    meta = getattr(case, "meta", None)
    positive = meta is not None and meta.generation.mode.is_positive
    real = positive and next(_auth_calls) % 4 == 0
    if op == "login":
        if real:
            case.body = {"username": _CFG["username"], "password": _CFG["password"]}
        elif case.body.get("username") == _CFG["username"]:
            case.body = {**case.body, "username": f"{_CFG['username']}-conformance-probe"}
    elif op == "refresh" and real:
        r = httpx.post(f"{_API}/auth/login", timeout=30,
                       json={"username": _CFG["username"], "password": _CFG["password"]})
        if r.status_code == 200:
            case.body = {"refresh_token": r.json()["refresh_token"]}


# Long-polls wait as asked (up to 60 s) when nothing happens, which schemathesis would report
# as a slow answer: a second is enough to check that a wait returns a valid page.
_MAX_WAIT = 1.0


def _short_wait(case: Any) -> None:
    query = case.query if isinstance(case.query, dict) else None
    if query is None or "wait" not in query:
        return
    try:
        if float(query["wait"]) > _MAX_WAIT:
            query["wait"] = _MAX_WAIT
    except (TypeError, ValueError):
        pass  # a malformed wait is a negative case: the server must refuse it as sent


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    op = getattr(case.operation.definition, "raw", {}).get("operationId")
    if op in ("login", "refresh"):
        _real_credentials(op, case)
    if op == "get_events":
        _short_wait(case)
    if op not in _WRITES:
        return
    params = case.path_parameters if case.path_parameters is not None else {}
    if op in ("vm_action", "migrate_vm"):
        if not _CFG.get("allow_writes") or not _ALLOWED:
            raise RuntimeError(f"refusing to send {op}: writes are not allowed in this run")
        if params.get("id") not in _ALLOWED:
            params["id"] = next(_next_vm)
    elif op == "cancel_migration":
        with _started_lock:
            known = list(_started)
        if params.get("migration_id") not in known:
            params["migration_id"] = known[-1] if known else _NO_MIGRATION
    case.path_parameters = params


# Calls per operation and status class, for the per-operation summary.
_CALLS: defaultdict[str, Counter[str]] = defaultdict(Counter)


@atexit.register
def _dump_calls() -> None:
    target = os.environ.get("COCKPIT_CONFORMANCE_CALLS")
    if target:
        with open(target, "w", encoding="utf-8") as f:
            json.dump(_CALLS, f)


@schemathesis.hook
def after_call(ctx: Any, case: Any, response: Any) -> None:
    op = getattr(case.operation.definition, "raw", {}).get("operationId")
    _CALLS[case.operation.label][f"{response.status_code // 100}xx"] += 1
    if op == "migrate_vm" and response.status_code == 202:
        with _started_lock:
            _started.append(response.json()["migration_id"])
    if response.status_code == 401 and op not in ("login", "refresh", "logout"):
        _SESSION.invalidate()
