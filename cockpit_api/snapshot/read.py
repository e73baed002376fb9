"""What a snapshot reads: the API's pages through a read-only session (its own login, or a
session the caller holds), turned into scenario data (hosts, VMs, finished jobs, fitted
charts). Only GETs of the public API; every failure is one :class:`SnapshotError`."""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import yaml

from cockpit_api.snapshot.fit import RUNNING, fit_chart, fit_links

DEFAULT_WINDOW = 86_400
DEFAULT_METRICS_VMS = 500  # charts fitted per snapshot; the rest keep the simulator's own
# Samples per window: enough for every harmonic a fitted chart is made of (and their
# products, up to the 304th of a day) to stay apart, so a whole day fits back exactly;
# half the API's 1,440, so a chart costs the server half as much.
SAMPLES = 720
PAGE = 1000
LOGIN_WAIT_BUDGET = 30.0  # seconds a throttled login may wait in all (429 Retry-After)
FINISHED = ("completed", "failed", "cancelled")


Progress = Callable[[str], None]



class SnapshotError(Exception):
    """The snapshot could not be taken; the message is the one line the user sees."""


# ---------------------------------------------------------------- the client


def api_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/api/v1") else f"{base}/api/v1"


def public_url(url: str) -> str:
    """The URL without user info or query: what a header comment may name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Reader:
    """GETs of the public API as JSON: what a snapshot reads through. Every failure becomes
    one SnapshotError. A subclass says how one GET is sent (:meth:`fetch`)."""

    shown = "the API"  # the API's public URL, for messages

    def fetch(self, path: str, params: dict[str, Any] | None) -> tuple[int, Any]:
        """One GET: its status and its JSON body (None when it is not JSON)."""
        raise NotImplementedError

    def get(self, path: str, params: dict[str, Any] | None = None,
            *, allow: tuple[int, ...] = ()) -> Any:
        """The JSON of a GET; None for a status in ``allow``."""
        status, body = self.fetch(path, params)
        if status in allow:
            return None
        if status != 200:
            what = ""
            if _is_problem(body):
                what = f" ({one_line(body.get('code') or body.get('title'))}: " \
                       f"{one_line(body.get('detail'))[:160]})"
            raise SnapshotError(f"GET {path} failed: {status}{what}")
        if body is None:
            raise SnapshotError(f"{self.shown} does not look like a Cockpit API: GET {path} "
                                "answered something other than JSON")
        return body

    def pages(self, path: str, key: str, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """Every item of a paged list, one page in memory at a time."""
        cursor: str | None = None
        for _ in range(10_000_000):  # bounded: a server handing out cursors forever stops here
            page = self.get(path, {**(params or {}), "limit": PAGE,
                                   **({"cursor": cursor} if cursor else {})})
            items = page.get(key) if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise SnapshotError(f"{self.shown} does not look like a Cockpit API: GET {path} "
                                    f"answered no `{key}` list")
            yield from items
            cursor = page.get("next_cursor")
            if not cursor:
                return
        raise SnapshotError(f"GET {path}: the pages never end")


class SessionReader(Reader):
    """GETs through a session the caller holds (``cockpit-api twin``'s: paced, refreshed on
    401), so that a snapshot costs no login of its own: ``fetch(path, params)`` sends one
    GET and returns its status and JSON body."""

    def __init__(self, fetch: Callable[[str, dict[str, Any] | None], tuple[int, Any]],
                 shown: str) -> None:
        self._fetch = fetch
        self.shown = shown

    def fetch(self, path: str, params: dict[str, Any] | None) -> tuple[int, Any]:
        return self._fetch(path, params)


class ApiReader(Reader):
    """The snapshot's own read-only session: logs in, refreshes on 401, logs out."""

    def __init__(self, base_url: str, *, timeout: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.root = api_root(base_url)
        self.shown = public_url(self.root)
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)
        self.token: str | None = None
        self.refresh_token: str | None = None
        self._sleep = sleep

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self.http.request(method, self.root + path, **kw)
        except httpx.HTTPError as exc:
            raise SnapshotError(f"cannot reach {self.shown}: {one_line(exc)}") from None

    def login(self, username: str, password: str) -> None:
        waited = 0.0
        while True:
            r = self._send("POST", "/auth/login", json={"username": username,
                                                          "password": password})
            if r.status_code != 429:
                break
            wait = _retry_after(r)
            if wait is None or waited + wait > LOGIN_WAIT_BUDGET:
                after = f" (retry after {wait:g} s)" if wait is not None else ""
                raise SnapshotError(f"login as {username} is throttled by {self.shown}{after}")
            self._sleep(wait)
            waited += wait
        body = _json_or_none(r)
        if r.status_code == 401 and _is_problem(body):
            raise SnapshotError(f"login as {username} refused by {self.shown}: wrong username "
                                "or password")
        if r.status_code != 200 or not isinstance(body, dict) \
                or not isinstance(body.get("token"), str):
            raise SnapshotError(f"{self.shown} does not look like a Cockpit API: POST "
                                f"/auth/login answered {r.status_code} "
                                f"{r.headers.get('content-type', 'without a content type')}")
        self.token = body["token"]
        self.refresh_token = body.get("refresh_token")

    def logout(self) -> None:
        if self.refresh_token:
            # Best effort: the snapshot is taken; a failed logout only leaves a session to expire.
            with contextlib.suppress(httpx.HTTPError):
                self.http.post(self.root + "/auth/logout",
                               json={"refresh_token": self.refresh_token})
        self.token = self.refresh_token = None

    def fetch(self, path: str, params: dict[str, Any] | None) -> tuple[int, Any]:
        r = self._send("GET", path, params=params,
                       headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code == 401 and self.refresh_token:
            self._refresh()
            r = self._send("GET", path, params=params,
                           headers={"Authorization": f"Bearer {self.token}"})
        return r.status_code, _json_or_none(r)

    def _refresh(self) -> None:
        r = self._send("POST", "/auth/refresh", json={"refresh_token": self.refresh_token})
        body = _json_or_none(r)
        if r.status_code != 200 or not isinstance(body, dict) or "token" not in body:
            raise SnapshotError(f"the session ended and could not be refreshed ({r.status_code})")
        self.token, self.refresh_token = body["token"], body.get("refresh_token")


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _json_or_none(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return None


def _is_problem(body: Any) -> bool:
    return isinstance(body, dict) and "status" in body and "code" in body


def one_line(x: Any) -> str:
    return " ".join(str(x).split())


# ---------------------------------------------------------------- taking the snapshot

def read_state(api: Reader, window: int, rx: re.Pattern[str] | None, metrics_vms: int,
          say: Progress) -> dict[str, Any]:
    hosts = []
    for h in api.pages("/hosts", "hosts"):
        try:
            if rx is not None and not rx.search(h["hostname"]):
                continue
            hosts.append({"id": str(h["id"]), "hostname": str(h["hostname"]),
                          "status": str(h["status"]), "cpus": int(h["cpus"]),
                          "memory_mib": int(h["memory_mib"]),
                          "sync_cursor": int(h["sync_cursor"])})
        except (KeyError, TypeError, ValueError):
            raise SnapshotError(f"{api.shown} does not look like a Cockpit API: a host lacks "
                                "id, hostname, status, cpus, memory_mib or sync_cursor") from None
    say(f"snapshot: {len(hosts)} hosts")
    host_ids = {h["id"] for h in hosts}
    by_id: dict[str, dict[str, Any]] = {}
    sources: list[Iterator[Any]]
    if rx is None:
        sources = [api.pages("/vms", "vms")]
    else:
        sources = [api.pages("/vms", "vms", {"host_id": h["id"]}) for h in hosts]
    last = time.monotonic()
    for source in sources:
        for v in source:
            vm = _vm(api, v)
            if vm["host"] not in host_ids:
                continue
            # Keyed by id: a VM that moves between two page reads is listed twice (once
            # per host); the later read wins.
            by_id[vm["id"]] = vm
            if time.monotonic() - last > 1.0:
                say(f"snapshot: {len(by_id)} VMs")
                last = time.monotonic()
    vms = list(by_id.values())
    del by_id
    say(f"snapshot: {len(vms)} VMs")
    memory_of = {v["id"]: v["memory_mib"] for v in vms}
    jobs = [j for j in (_job(api, m) for m in api.pages("/migrations", "migrations"))
            if j is not None and j["vm"] in memory_of and j["source"] in host_ids
            and j["destination"] in host_ids]
    say(f"snapshot: {len(jobs)} finished migrations")
    if metrics_vms > 0:
        _fit_charts(api, vms, window, metrics_vms, say)
    hosts.sort(key=lambda h: (h["hostname"], h["id"]))
    vms.sort(key=lambda v: (v["name"], v["id"]))
    return {"name": "snapshot", "seed": 0, "users": _demo_users(), "hosts": hosts, "vms": vms,
            "links": fit_links(jobs, memory_of), "migrations": jobs}


def _vm(api: Reader, v: Any) -> dict[str, Any]:
    try:
        vm: dict[str, Any] = {
            "id": str(v["id"]), "name": str(v["name"]), "host": str(v["host_id"]),
            "status": str(v["status"]), "vcpus": int(v["vcpus"]),
            "memory_mib": int(v["memory_mib"]), "persistent": bool(v["persistent"])}
        also = [str(h) for h in v.get("also_defined_on") or ()]
    except (KeyError, TypeError, ValueError):
        raise SnapshotError(f"{api.shown} does not look like a Cockpit API: a VM lacks id, "
                            "name, host_id, status, vcpus, memory_mib or persistent") from None
    if also:
        vm["also_defined_on"] = sorted(also)
    return vm


def _job(api: Reader, m: Any) -> dict[str, Any] | None:
    """A finished job as a scenario history entry (durations to the millisecond), or None."""
    try:
        if m["status"] not in FINISHED:
            return None  # one still running is not history yet; the VM shows where it is now
        created, started, finished = (_instant(m.get(k)) for k in
                                      ("created_at", "started_at", "finished_at"))
        if created is None or finished is None:
            return None
        began = started if started is not None else finished
        progress = m.get("progress") or {}
        return {"id": str(m["id"]), "vm": str(m["vm_id"]), "source": str(m["source_host_id"]),
                "destination": str(m["destination_host_id"]), "live": bool(m["live"]),
                "persistent": bool(m["persistent"]), "undefine_source": bool(m["undefine_source"]),
                "copy_storage": str(m["copy_storage"]), "status": str(m["status"]),
                "data_total_bytes": int(progress.get("data_total_bytes") or 0),
                "data_processed_bytes": int(progress.get("data_processed_bytes") or 0),
                "setup_seconds": round(max(0.0, began - created), 3),
                "copy_seconds": round(max(0.0, finished - began), 3),
                "error": None if m.get("error") is None else str(m["error"])}
    except (KeyError, TypeError, ValueError):
        raise SnapshotError(f"{api.shown} does not look like a Cockpit API: a migration job "
                            "lacks one of the fields openapi.yaml requires") from None


def _instant(text: Any) -> float | None:
    from datetime import UTC, datetime

    if not isinstance(text, str):
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _fit_charts(api: Reader, vms: list[dict[str, Any]], window: int, limit: int,
                say: Progress) -> None:
    running = [v for v in sorted(vms, key=lambda v: (v["name"], v["id"]))
               if v["status"] in RUNNING][:limit]
    if not running:
        return
    # The server's now, from a default window's end: the same instants for every VM.
    probe = api.get(f"/vms/{running[0]['id']}/metrics", {"step": 3600}, allow=(404, 503))
    step = max(1, math.ceil(window / SAMPLES))
    now = int(probe["end"]) if isinstance(probe, dict) and "end" in probe else int(time.time())
    end = now - now % step
    start = end - (window // step - 1) * step
    last = time.monotonic()
    for n, vm in enumerate(running, start=1):
        # 404: gone since it was listed; 503: its host is unreachable now. Either way the
        # chart cannot be seen, and the VM keeps the simulator's (said in a comment).
        series = api.get(f"/vms/{vm['id']}/metrics", {"start": start, "end": end, "step": step},
                         allow=(404, 503))
        if isinstance(series, dict) and isinstance(series.get("points"), list):
            try:
                chart = fit_chart(series["points"], vm["memory_mib"])
            except (KeyError, TypeError, ValueError):
                raise SnapshotError(f"{api.shown} does not look like a Cockpit API: a metric "
                                    "point lacks a field openapi.yaml requires") from None
            if chart is not None:
                vm["guest"] = chart
        if time.monotonic() - last > 1.0:
            say(f"snapshot: metrics {n}/{len(running)}")
            last = time.monotonic()
    say(f"snapshot: metrics {len(running)}/{len(running)}")


def _demo_users() -> list[dict[str, Any]]:
    from cockpit_api.backends.sim.scenario import SCENARIO_DIR

    data = yaml.safe_load((SCENARIO_DIR / "default.yaml").read_text(encoding="utf-8"))
    return [dict(u) for u in data.get("users") or []]

