"""``cockpit-api twin``: prove, step by step, that the mock behaves like a deployment.

It takes the deployment's snapshot (``cockpit-api snapshot``'s data, read through
its own session: hosts, VMs, stale definitions, job history, each host pair's
fitted migration speed), builds a *twin* of it
(a simulator holding the same cluster: embedded in this process by default, or
a sandbox on a served mock with ``--mock-url``), then runs one Hypothesis
rule-based state machine (:mod:`cockpit_api.twin.machine`) against both, step
by step, and compares every answer, the canary VMs' settled state, each job's
end state, the change feed's events and the times (within a band).

Safety on a real cluster: only the canary VMs (``--vm`` / ``--vm-pattern``)
are ever written; every other VM is only read and dry-run
(``?dry_run=true``: checked, nothing changed). Requests to the deployment are
paced (``--max-rate``), a 401 refreshes the session, a 429 waits its
``Retry-After``, the whole run is bounded (``--max-time``), and Ctrl-C first
lets the canaries settle (cancelling this run's unfinished migrations) and says
the state each is left in.

Exit code: 0 when nothing diverged (or only known differences); 1 on any other
divergence, reported with the shrunk sequence of steps that reproduces it
(markdown: ``--report``; JUnit: ``--junit``) and a table of real/twin time
ratios per kind of step; 2 when it cannot start (as ``conformance``).
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from cockpit_api.conformance.runner import api_root

Json = dict[str, Any]
KNOWN_DIFFERENCES = Path(__file__).resolve().parents[2] / "docs" / "twin-known-differences.yaml"


class CannotStart(Exception):
    """The run cannot begin (unreachable, login refused, no canary): exit 2."""


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and self.status >= 400:
            code = self.body.get("code")
            return str(code) if code is not None else None
        return None


class Pacer:
    """At most ``rate`` requests a second (None: no limit), and a deadline for the run."""

    def __init__(self, rate: float | None, deadline: float | None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gap = 1.0 / rate if rate else 0.0
        self.deadline = deadline
        self.sleep = sleep
        self.clock = clock
        self._next = 0.0

    def wait(self) -> None:
        now = self.clock()
        if self.deadline is not None and now > self.deadline:
            raise TimeUp("the run's time budget (--max-time) is spent")
        if self._next > now:
            self.sleep(self._next - now)
        self._next = max(now, self._next) + self.gap


class TimeUp(BaseException):
    """The run's budget is spent. A BaseException so that Hypothesis does not take it for
    a failing example (it would shrink it): the run stops and reports what it has."""


class Api:
    """A logged-in client of one world's /api/v1: paced, refreshing, patient with 429."""

    def __init__(self, client: httpx.Client, root: str, username: str, password: str,
                 pacer: Pacer | None = None) -> None:
        self.client = client
        self.root = root.rstrip("/")
        self.username, self.password = username, password
        self.pacer = pacer or Pacer(None, None)
        self.requests = 0
        self.renewals = 0  # 401s answered by refreshing the session (or logging in again)
        self._refresh: str | None = None
        self._token: str | None = None
        self._parent: Api | None = None

    def login(self) -> None:
        r = self._send("POST", "/auth/login",
                       json={"username": self.username, "password": self.password}, auth=False)
        if r.status != 200:
            raise CannotStart(f"login as {self.username} at {self.root} failed: {r.status} "
                              f"{r.code or ''}")
        self._token, self._refresh = r.body["token"], r.body["refresh_token"]

    def sibling(self, root: str) -> Api:
        """The same session at another root (a control plane next to /api/v1): it renews
        through this one's /api/v1."""
        other = Api(self.client, root, self.username, self.password, self.pacer)
        other._token, other._refresh = self._token, self._refresh
        other._parent = self
        return other

    def _renew(self) -> None:
        self.renewals += 1
        if self._parent is not None:
            if self._parent._token == self._token:  # the parent has not renewed yet
                self._parent._renew()
            self._token, self._refresh = self._parent._token, self._parent._refresh
            return
        if self._refresh:
            r = self._send("POST", "/auth/refresh", json={"refresh_token": self._refresh},
                           auth=False)
            if r.status == 200:
                self._token, self._refresh = r.body["token"], r.body["refresh_token"]
                return
        self.login()

    def call(self, method: str, path: str, *, json: Json | None = None,
             params: dict[str, Any] | None = None) -> Answer:
        r = self._send(method, path, json=json, params=params)
        if r.status == 401:
            self._renew()
            r = self._send(method, path, json=json, params=params)
        return r

    def _send(self, method: str, path: str, *, json: Json | None = None,
              params: dict[str, Any] | None = None, auth: bool = True) -> Answer:
        headers = {"Accept": "application/json"}
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        for _ in range(5):  # 429s in a row, each waited out: bounded
            self.pacer.wait()
            self.requests += 1
            r = self.client.request(method, self.root + path, json=json, params=params,
                                    headers=headers)
            if r.status_code == 429:
                self.pacer.sleep(min(60.0, float(r.headers.get("retry-after", "1") or 1)))
                continue
            break
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = r.text
        return Answer(r.status_code, body, {k.lower(): v for k, v in r.headers.items()})

    def get(self, path: str, **params: Any) -> Answer:
        return self.call("GET", path, params=params or None)

    def all(self, path: str, key: str) -> tuple[list[Json], str | None]:
        """Every item of a list (paged), and the first page's feed position."""
        items: list[Json] = []
        cursor: str | None = None
        position: str | None = None
        for _ in range(10_000):
            r = self.get(path, limit=1000, **({"cursor": cursor} if cursor else {}))
            if r.status != 200:
                raise CannotStart(f"GET {path}: {r.status} {r.code or ''}")
            position = position or r.headers.get("x-feed-position")
            items += r.body[key]
            cursor = r.body["next_cursor"]
            if not cursor:
                break
        return items, position

    def events(self, after: str) -> tuple[list[Json], str]:
        """The change feed's events after ``after`` (JSON long-poll, no wait)."""
        out: list[Json] = []
        for _ in range(100):
            r = self.get("/events", after=after, wait=0, types="vm,vm_removed,migration")
            if r.status != 200:
                return out, after
            out += r.body["events"]
            if r.body["position"] == after or not r.body["events"]:
                return out, after
            after = r.body["position"]
        return out, after


# --------------------------------------------------------------------------- the scenario


@dataclass(frozen=True, slots=True)
class GuestModel:
    """How the deployment's guests behave where the API cannot see it (a known difference
    modelled in the twin): matched by VM name."""

    pattern: str
    acpi: str = "obey"
    shutdown_seconds: float = 4.0
    disk_gib: int = 20  # what copy_storage=all copies
    reason: str = ""

    def matches(self, name: str) -> bool:
        return re.search(self.pattern, name) is not None


def snapshot_of(api: Api) -> Json:
    """The deployment as ``cockpit-api snapshot`` takes it (hosts, VMs with their stale
    definitions, the finished jobs and each host pair's migration speed fitted from them),
    read through the twin's own session: no second login, paced by ``--max-rate``.

    No charts (``metrics_vms=0``): the twin does not compare metrics, and a chart costs a
    metrics read per running VM at each example.
    """
    from cockpit_api.snapshot import read, take

    def fetch(path: str, params: dict[str, Any] | None) -> tuple[int, Any]:
        try:
            r = api.get(path, **(params or {}))
        except httpx.HTTPError as exc:
            raise read.SnapshotError(f"cannot reach {api.root}: {exc}") from None
        return r.status, None if isinstance(r.body, str) else r.body

    reader = read.SessionReader(fetch, read.public_url(api.root))
    try:
        return take.snapshot_through(reader, metrics_vms=0)
    except read.SnapshotError as exc:
        raise CannotStart(f"cannot take the deployment's snapshot: {exc}") from None


def twin_scenario(data: Json, guests: list[GuestModel] = (),  # type: ignore[assignment]
                  password: str = "twin") -> Json:
    """The twin's scenario from a snapshot's data: the guest models of the known-differences
    file (what the API cannot show: ACPI, shutdown time, disk size) and the twin's admin."""
    vms = []
    for v in data["vms"]:
        vm = dict(v)
        for g in guests:
            if g.matches(v["name"]):
                vm["guest"] = {**v.get("guest", {}), "acpi": g.acpi,
                               "shutdown_seconds": g.shutdown_seconds, "disk_gib": g.disk_gib}
                break
        vms.append(vm)
    return dict(data, name="twin", seed=1, vms=vms,
                users=[{"username": "admin", "password": password, "role": "admin"}])


# --------------------------------------------------------------------------- worlds


class World:
    """One side of the comparison: an Api, and how time passes there."""

    name = "world"
    api: Api

    def elapsed_since(self, mark: float) -> float:
        raise NotImplementedError

    def mark(self) -> float:
        raise NotImplementedError

    def pass_time(self, seconds: float) -> None:
        raise NotImplementedError

    def settle(self, horizon: float) -> None:
        """Let what is pending happen (the twin: move its clock until nothing is due)."""

    def lose_host(self, host_id: str, lost: bool) -> None:
        """The twin's side of a fault script: the host drops off (True) or is back."""
        raise NotImplementedError

    def close(self) -> None:
        return None


class Deployment(World):
    """The real thing: wall time. ``speed`` > 1 for a served mock run with ``--speed``
    (its seconds pass that much faster than the wall's)."""

    name = "deployment"

    def __init__(self, api: Api, speed: float = 1.0) -> None:
        self.api = api
        self.speed = speed

    def mark(self) -> float:
        return time.monotonic()

    def elapsed_since(self, mark: float) -> float:
        return (time.monotonic() - mark) * self.speed

    def pass_time(self, seconds: float) -> None:
        self.api.pacer.sleep(seconds / self.speed)


class EmbeddedTwin(World):
    """The simulator in this process, behind the real app, on a frozen virtual clock."""

    name = "twin"

    def __init__(self, scenario: Json) -> None:
        import warnings

        from starlette.testclient import TestClient

        from cockpit_api.backends.sim import scenario as scenarios
        from cockpit_api.backends.sim.backend import SimulatedBackend
        from cockpit_api.backends.sim.clock import VirtualClock

        self._load = scenarios.load
        from cockpit_api.app import create_app
        from cockpit_api.config import Settings

        self.sim = SimulatedBackend(scenarios.load(scenario), VirtualClock(time.time()))
        # Its own secret and an in-memory store: nothing of it outlives the run.
        app = create_app(Settings(jwt_secret=uuid.uuid4().hex * 2), backend=self.sim)
        self._store = app.services.auth.store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._client = TestClient(app, base_url="http://twin")
        self._client.__enter__()
        self.api = Api(self._client, "http://twin/api/v1", "admin",
                       scenario["users"][0]["password"])
        self.api.login()

    def mark(self) -> float:
        return self.sim.now()

    def elapsed_since(self, mark: float) -> float:
        return self.sim.now() - mark

    def pass_time(self, seconds: float) -> None:
        self.sim.advance(seconds)

    def settle(self, horizon: float) -> None:
        end = self.sim.now() + horizon
        for _ in range(100_000):
            due = self.sim.next_due()
            if due is None or due > end:
                return
            self.sim.advance(max(0.0, due - self.sim.now()))

    def lose_host(self, host_id: str, lost: bool) -> None:
        self.sim.set_host_status(host_id, "disconnected" if lost else "connected")

    def reload(self, scenario: Json) -> EmbeddedTwin:
        """The same app over a new scenario (an app per example would cost ~0.5 s each)."""
        self.sim.reset(self._load(scenario))
        return self

    def close(self) -> None:
        self._client.__exit__(None, None, None)
        self._store.close()


class ServedTwin(World):
    """A sandbox on a served mock (``--mock-url``): the twin over real HTTP."""

    name = "twin"
    STEP = 0.25  # virtual seconds per advance while something is pending

    def __init__(self, mock_url: str, username: str, password: str, scenario: Json) -> None:
        base = mock_url.rstrip("/")
        self._http = httpx.Client(timeout=30)
        admin = Api(self._http, api_root(base), username, password)
        admin.login()
        admin = admin.sibling(f"{base}/_sim")
        r = admin.call("POST", "/sandboxes",
                       json={"scenario": scenario, "speed": 0, "clock_start": time.time(),
                             "label": "cockpit-api twin"})
        if r.status != 201:
            raise CannotStart(f"cannot create a sandbox on {base}: {r.status} {r.code or ''}")
        self._admin, self._box = admin, r.body["id"]
        root = f"{base}/sandboxes/{self._box}"
        self.api = Api(self._http, f"{root}/api/v1", "admin", scenario["users"][0]["password"])
        self.api.login()
        self._control = self.api.sibling(f"{root}/_sim")
        self._now = time.time()

    def _clock(self, advance: float) -> Json:
        r = self._control.call("POST", "/clock", json={"advance": advance})
        if r.status != 200:
            raise CannotStart(f"the mock's clock did not move: {r.status} {r.code or ''}")
        body: Json = r.body
        self._now = float(body["now"])
        return body

    def mark(self) -> float:
        return float(self._clock(0)["now"])

    def elapsed_since(self, mark: float) -> float:
        return self._now - mark

    def pass_time(self, seconds: float) -> None:
        self._clock(seconds)

    def settle(self, horizon: float) -> None:
        state = self._clock(0)
        moved = 0.0
        while state["pending_events"] and moved < horizon:
            state = self._clock(self.STEP)
            moved += self.STEP

    def lose_host(self, host_id: str, lost: bool) -> None:
        what = "disconnect" if lost else "reconnect"
        r = self._control.call("POST", f"/hosts/{host_id}/{what}")
        if r.status != 200:
            raise CannotStart(f"the mock did not {what} {host_id}: {r.status} {r.code or ''}")

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self._admin.call("DELETE", f"/sandboxes/{self._box}")
        self._http.close()


# --------------------------------------------------------------------------- known differences


@dataclass(frozen=True, slots=True)
class Known:
    """A divergence explained in the known-differences file: reported, never failing."""

    id: str
    reason: str
    step: str | None = None  # regex on the step's description
    what: str | None = None  # regex on what differs ("status", "code", "vm ...", "time")

    def matches(self, step: str, what: str) -> bool:
        if self.step is None and self.what is None:
            return False  # documents another pair's difference (its `where`)
        return (self.step is None or re.search(self.step, step) is not None) and \
            (self.what is None or re.search(self.what, what) is not None)


@dataclass(slots=True)
class KnownDifferences:
    guests: list[GuestModel] = field(default_factory=list)
    differences: list[Known] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> KnownDifferences:
        if path is None:
            return cls()
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CannotStart(f"cannot read the known differences {path}: {exc}") from None
        out = cls()
        for g in doc.get("guests") or []:
            if not g.get("reason"):
                raise CannotStart(f"{path}: guest model {g.get('name')!r} has no reason")
            out.guests.append(GuestModel(g["name"], g.get("acpi", "obey"),
                                         float(g.get("shutdown_seconds", 4.0)),
                                         int(g.get("disk_gib", 20)), g["reason"]))
        for d in doc.get("differences") or []:
            if not d.get("reason") or not d.get("id"):
                raise CannotStart(f"{path}: every difference needs an id and a reason: {d}")
            out.differences.append(Known(d["id"], d["reason"], d.get("step"), d.get("what")))
        return out

    def explain(self, step: str, what: str) -> Known | None:
        return next((k for k in self.differences if k.matches(step, what)), None)


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Options:
    steps: int = 50
    seed: int = 1
    band: float = 0.5  # the twin's time x (1 +- band) + slack
    slack: float = 2.0
    horizon: float = 600.0  # virtual seconds the twin may run ahead to settle
    max_time: float | None = None
    known: KnownDifferences = field(default_factory=KnownDifferences)
