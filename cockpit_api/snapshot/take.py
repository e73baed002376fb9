"""``cockpit-api snapshot``: a deployment's state and behaviour, written as a scenario file.

It logs in, reads hosts, every page of VMs, the migration jobs and each running
VM's metrics over a window, then logs out: only GETs of the public API, so it
works against any deployment of openapi.yaml. What it writes is a scenario
(backends/sim/scenario.py) that ``serve --scenario FILE`` and the sandboxes load:
the same hosts and VMs (ids, names, placement, power state), each VM's chart
fitted from its metrics, each host pair's migration speed fitted from the jobs
that completed, and those jobs as history. Same state, same bytes: the body is
sorted and has no wall-clock time in it, and snapshot -> serve -> snapshot is a
fixed point.

``--diff FILE`` compares a deployment with a snapshot instead, lists what
changed and exits 1 when anything did (0 when nothing did).

Exit code: 0 written (or no drift); 1 drift; 2 the snapshot could not be taken
(unreachable, refused, not this API, a page failing): one line on stderr, and no
file (it is written to a temporary file and renamed at the end).

Library use: :func:`take_snapshot` returns the scenario data, :func:`render` turns
it into the file's text; :func:`snapshot_through` takes it through a session the
caller already holds (``cockpit-api twin``: no second login, its pacing).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
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
_FLOW_SEP = (", ", ": ")

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
                what = f" ({_one_line(body.get('code') or body.get('title'))}: " \
                       f"{_one_line(body.get('detail'))[:160]})"
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


class _Api(Reader):
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
            raise SnapshotError(f"cannot reach {self.shown}: {_one_line(exc)}") from None

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


def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


# ---------------------------------------------------------------- taking the snapshot


def parse_window(text: str) -> int:
    """``24h``, ``90m``, ``2d``, ``3600`` (seconds) -> seconds, at least one minute."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a window like 24h, 90m or 3600")
    seconds = int(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[m[2]]
    if not 60 <= seconds <= 7 * 86_400:
        raise argparse.ArgumentTypeError("the window is between 1 minute and 7 days")
    return seconds


def take_snapshot(base_url: str, username: str, password: str, *,
                  window: int = DEFAULT_WINDOW, anonymize: bool = False, salt: str | None = None,
                  host_pattern: str | None = None, users: list[dict[str, Any]] | None = None,
                  metrics_vms: int = DEFAULT_METRICS_VMS, fit: bool = True,
                  progress: Progress | None = None) -> dict[str, Any]:
    """The scenario data of a deployment (see :func:`render` for the file).

    ``fit=False`` reads the state only (hosts, VMs, jobs): what ``--diff`` needs.
    ``anonymize`` re-derives names and ids from ``salt`` (same input and salt, same
    pseudonyms; without one, a random salt).
    Raises :class:`SnapshotError` with a one-line reason.
    """
    api = _Api(base_url)
    try:
        api.login(username, password)
        try:
            return snapshot_through(api, window=window, anonymize=anonymize, salt=salt,
                                    host_pattern=host_pattern, users=users,
                                    metrics_vms=metrics_vms, fit=fit, progress=progress)
        finally:
            api.logout()
    finally:
        api.close()


def snapshot_through(reader: Reader, *, window: int = DEFAULT_WINDOW, anonymize: bool = False,
                     salt: str | None = None, host_pattern: str | None = None,
                     users: list[dict[str, Any]] | None = None,
                     metrics_vms: int = DEFAULT_METRICS_VMS, fit: bool = True,
                     progress: Progress | None = None) -> dict[str, Any]:
    """:func:`take_snapshot` through a session already open (a :class:`SessionReader`):
    the same data, no login or logout of its own."""
    say = progress or (lambda _msg: None)
    rx = re.compile(host_pattern) if host_pattern else None
    data = _read(reader, window, rx, metrics_vms if fit else 0, say)
    if users is not None:
        data["users"] = users
    if anonymize:
        data = _anonymize(data, salt or secrets.token_hex(16))
    return data


def _read(api: Reader, window: int, rx: re.Pattern[str] | None, metrics_vms: int,
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


# ---------------------------------------------------------------- anonymizing


class _Pseudonyms:
    """Stable pseudonyms and ids from a salt (HMAC-SHA256): same input and salt, same output."""

    def __init__(self, salt: str) -> None:
        self._key = salt.encode()
        self._ids: dict[str, str] = {}

    def digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uuid(self, kind: str, value: str) -> str:
        if value not in self._ids:
            self._ids[value] = str(uuid.UUID(bytes=self.digest(kind, value)[:16], version=4))
        return self._ids[value]

    def name(self, kind: str, value: str, prefix: str, width: int = 10) -> str:
        return f"{prefix}-{self.digest(kind, value).hex()[:width]}"


def _anonymize(data: dict[str, Any], salt: str) -> dict[str, Any]:
    p = _Pseudonyms(salt)
    hid = {h["id"]: p.uuid("host", h["id"]) for h in data["hosts"]}
    hosts = [dict(h, id=hid[h["id"]], hostname=p.name("hostname", h["hostname"], "host") +
                  ".example.invalid") for h in data["hosts"]]
    vms = []
    for v in data["vms"]:
        vm = dict(v, id=p.uuid("vm", v["id"]), name=p.name("vm-name", v["name"], "vm"),
                  host=hid[v["host"]])
        if "also_defined_on" in v:
            vm["also_defined_on"] = sorted(hid[h] for h in v["also_defined_on"] if h in hid)
        vms.append(vm)
    _unique(hosts, "hostname")
    _unique(vms, "name")
    links = [dict(ln, source=hid[ln["source"]], destination=hid[ln["destination"]])
             for ln in data["links"]]
    jobs = [dict(j, id=p.digest("job", j["id"]).hex()[:12], vm=p.uuid("vm", j["vm"]),
                 source=hid[j["source"]], destination=hid[j["destination"]],
                 # An error's text may name hosts, URIs or paths: keep only what happened.
                 error=None if j["error"] is None else f"migration {j['status']}")
            for j in data["migrations"]]
    hosts.sort(key=lambda h: (h["hostname"], h["id"]))
    vms.sort(key=lambda v: (v["name"], v["id"]))
    links.sort(key=lambda ln: (ln["source"], ln["destination"]))
    return dict(data, hosts=hosts, vms=vms, links=links, migrations=jobs)


def _unique(items: list[dict[str, Any]], key: str) -> None:
    # Pseudonyms are 40 bits of HMAC: a collision is unlikely, never silent.
    seen: set[str] = set()
    for it in items:
        if it[key] in seen:
            raise SnapshotError(f"two pseudonyms collide ({it[key]}): try another --salt")
        seen.add(it[key])


# ---------------------------------------------------------------- the file


def render(data: dict[str, Any], *, source_url: str, window: int = DEFAULT_WINDOW,
           anonymized: bool = False) -> str:
    """The scenario file's text: a header comment, then one sorted line per item."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = version("cockpit-api")
    except PackageNotFoundError:
        tool = "unknown"
    body = _body(data)
    digest = hashlib.sha256(body.encode()).hexdigest()
    fitted = sum(1 for v in data["vms"] if "guest" in v)
    header = [
        f"# cockpit-api snapshot of {public_url(api_root(source_url))}",
        f"# tool cockpit-api {tool}; metrics window {window} s; "
        f"{'anonymized (names and ids re-derived from a salt)' if anonymized else 'ids kept'}",
        f"# sha256 of the body below: {digest}",
        f"# {len(data['hosts'])} hosts, {len(data['vms'])} VMs ({fitted} with a chart fitted "
        f"from their metrics), {len(data['links'])} host pairs with a fitted migration speed, "
        f"{len(data['migrations'])} finished migrations",
        "# Not shown by the API, so the simulator's defaults: every guest's acpi (obey),",
        "# shutdown_seconds (4) and disk_gib (20); a VM without `guest` draws its chart from the",
        "# seed (it was not running, or beyond --metrics-vms); a host pair without a link migrates",
        "# at 512 MiB/s after 0.5 s. Users: the demo users unless --users named others.",
        "# Serve it: cockpit-api serve --scenario THIS_FILE",
    ]
    return "\n".join(header) + "\n" + body


def _body(data: dict[str, Any]) -> str:
    out = [f"name: {json.dumps(data['name'])}", f"seed: {int(data['seed'])}"]
    for key in ("users", "hosts", "vms", "links", "migrations"):
        items = data.get(key) or []
        if not items:
            out.append(f"{key}: []")
            continue
        out.append(f"{key}:")
        out.extend(f"  - {json.dumps(it, separators=_FLOW_SEP)}" for it in items)
    return "\n".join(out) + "\n"


def write_atomically(text: str, target: Path) -> None:
    """Write ``text`` to ``target`` through a temporary file in its directory, then rename."""
    target = target.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- drift


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed from snapshot ``old`` to state ``new`` (scenario data), one line each."""
    lines: list[str] = []
    oh = {h["id"]: h for h in old.get("hosts") or []}
    nh = {h["id"]: h for h in new.get("hosts") or []}
    names = {i: h["hostname"] for i, h in {**oh, **nh}.items()}
    for i in sorted(set(oh) | set(nh), key=lambda i: names[i]):
        a, b = oh.get(i), nh.get(i)
        if a is None:
            lines.append(f"host added: {names[i]} ({i})")
        elif b is None:
            lines.append(f"host removed: {names[i]} ({i})")
        else:
            changes = [f"{k} {a.get(k)} -> {b.get(k)}"
                       for k in ("hostname", "status", "cpus", "memory_mib")
                       if a.get(k) != b.get(k)]
            if changes:
                lines.append(f"host changed: {names[i]}: {', '.join(changes)}")
    ov = {v["id"]: v for v in old.get("vms") or []}
    nv = {v["id"]: v for v in new.get("vms") or []}
    vname = {i: v["name"] for i, v in {**ov, **nv}.items()}
    for i in sorted(set(ov) | set(nv), key=lambda i: (vname[i], i)):
        a, b = ov.get(i), nv.get(i)
        if a is None:
            lines.append(f"VM added: {vname[i]} ({i}) on {names.get(b['host'], b['host'])}")  # type: ignore[index]
            continue
        if b is None:
            lines.append(f"VM removed: {vname[i]} ({i})")
            continue
        if a["host"] != b["host"]:
            lines.append(f"VM moved: {vname[i]}: {names.get(a['host'], a['host'])} -> "
                         f"{names.get(b['host'], b['host'])}")
        if a.get("status") != b.get("status"):
            lines.append(f"VM state changed: {vname[i]}: {a.get('status')} -> {b.get('status')}")
        changes = [f"{k} {a.get(k)} -> {b.get(k)}" for k in ("name", "vcpus", "memory_mib",
                                                              "persistent")
                   if a.get(k) != b.get(k)]
        if changes:
            lines.append(f"VM changed: {vname[i]}: {', '.join(changes)}")
    return lines


def _load_snapshot(path: Path) -> dict[str, Any]:
    """A scenario file (a snapshot or any other) as the data :func:`diff` compares."""
    from cockpit_api.backends.base import BackendError
    from cockpit_api.backends.sim import scenario as scenarios

    if not path.is_file():
        raise SnapshotError(f"no scenario file {path}")
    try:
        sc = scenarios.load(path)
    except BackendError as exc:
        raise SnapshotError(f"{path} is not a scenario: {_one_line(exc)}") from None
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise SnapshotError(f"cannot read {path}: {_one_line(exc)[:160]}") from None
    return {
        "hosts": [{"id": h.id, "hostname": h.hostname, "status": h.status, "cpus": h.cpus,
                   "memory_mib": h.memory_mib} for h in sc.hosts],
        "vms": [{"id": v.id, "name": v.name, "host": v.host_id, "status": v.status,
                 "vcpus": v.vcpus, "memory_mib": v.memory_mib, "persistent": v.persistent}
                for v in sc.vms],
    }


# ---------------------------------------------------------------- the command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshot", help="write a deployment's state and behaviour as a scenario",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="e.g. https://cockpit.example.org")
    p.add_argument("--username", required=True)
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from stdin (else COCKPIT_PASSWORD, else a prompt)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="the scenario file to write (default: stdout)")
    p.add_argument("--window", type=parse_window, default=DEFAULT_WINDOW,
                   help="metrics window the charts are fitted from (default 24h)")
    p.add_argument("--anonymize", action="store_true",
                   help="pseudonyms for host and VM names, ids re-derived from --salt")
    p.add_argument("--salt", default=os.environ.get("COCKPIT_SNAPSHOT_SALT"),
                   help="the anonymizing salt (or COCKPIT_SNAPSHOT_SALT; default: random)")
    p.add_argument("--host-pattern", metavar="REGEX", type=_regex, default=None,
                   help="only hosts whose hostname matches, and their VMs")
    p.add_argument("--users", type=Path, default=None, metavar="FILE",
                   help="a YAML list of {username, password, role} for the scenario")
    p.add_argument("--metrics-vms", type=int, default=DEFAULT_METRICS_VMS, metavar="N",
                   help=f"fit the charts of at most N running VMs (default {DEFAULT_METRICS_VMS};"
                        " 0: none)")
    p.add_argument("--diff", type=Path, default=None, metavar="FILE",
                   help="list what changed since the snapshot FILE instead (exit 1 if anything)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=main)


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from None
    return text


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    env = os.environ.get("COCKPIT_PASSWORD")
    if env is not None:
        return env
    import getpass

    try:
        return getpass.getpass(f"password for {args.username}: ")
    except EOFError:
        raise SnapshotError("no password: use --password-stdin or COCKPIT_PASSWORD") from None


def _users(path: Path | None) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SnapshotError(f"cannot read the users file {path}: {_one_line(exc)}") from None
    if not isinstance(data, list) or not all(
            isinstance(u, dict) and isinstance(u.get("username"), str)
            and isinstance(u.get("password"), str)
            and u.get("role", "viewer") in ("admin", "viewer") for u in data):
        raise SnapshotError(f"{path}: a list of {{username, password, role: admin|viewer}}")
    return [{"username": u["username"], "password": u["password"],
             "role": u.get("role", "viewer")} for u in data]


def main(args: argparse.Namespace) -> int:
    quiet = args.quiet
    # Our own progress lines say what happens; httpx's per-request INFO lines would drown them.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        return _run(args, say)
    except SnapshotError as exc:
        print(f"cockpit-api snapshot: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, say: Progress) -> int:
    password = _password(args)
    users = _users(args.users)
    salt = args.salt
    if args.diff is not None:
        old = _load_snapshot(args.diff)
        with args.diff.open(encoding="utf-8") as f:
            head = [f.readline() for _ in range(2)]
        anonymized = head[0].startswith("# cockpit-api snapshot") and "anonymized" in head[1]
        if anonymized and not salt:
            raise SnapshotError(f"{args.diff} is anonymized: give the same --salt")
        new = take_snapshot(args.base_url, args.username, password, anonymize=anonymized,
                            salt=salt, host_pattern=args.host_pattern, fit=False,
                            progress=say)
        lines = diff(old, new)
        for line in lines:
            print(line)
        say(f"snapshot: {len(lines)} change(s) since {args.diff}")
        return 1 if lines else 0
    if args.anonymize and not salt:
        salt = secrets.token_hex(16)
        say("snapshot: a random salt (give --salt to get the same pseudonyms next time)")
    data = take_snapshot(args.base_url, args.username, password, window=args.window,
                         anonymize=args.anonymize, salt=salt, host_pattern=args.host_pattern,
                         users=users, metrics_vms=args.metrics_vms, progress=say)
    text = render(data, source_url=args.base_url, window=args.window, anonymized=args.anonymize)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        try:
            write_atomically(text, args.output)
        except OSError as exc:
            raise SnapshotError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        say(f"snapshot: wrote {args.output} ({len(data['hosts'])} hosts, {len(data['vms'])} VMs)")
    return 0
