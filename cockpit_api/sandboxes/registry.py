"""Sandboxes: isolated simulated worlds, each served under ``/sandboxes/{id}/`` by one app.

The Connexion app is built once and shared. A sandbox is only what a world
holds: a :class:`SimulatedBackend` (cluster, clock, faults, latency) and an
:class:`AuthService` (users, sessions, throttling, its own JWT secret, so a
token of one world means nothing in another). :meth:`SandboxRegistry.route`
finds the sandbox a request names, renews its idle lifetime, and tells
``CockpitApp`` which Services to put in the scope and which ``root_path`` to
set: Starlette and Connexion route below a root path by themselves, and serve
the specs with ``servers`` pointing at it, so a client changes only its base
URL. Creating one costs a scenario build (parsed scenarios are cached, demo
passwords hashed once), not an app build.

Expiry is lazy and by the app's wall clock (the injectable ``auth_clock``):
an idle sandbox is dropped on the next look at the registry after its
``expires_at``, so tests move a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cockpit_api.auth.service import User, hash_password
from cockpit_api.backends.base import Conflict, DemoUser, InvalidArgument, NotFound
from cockpit_api.backends.sim import scenario as scenarios
from cockpit_api.config import Settings
from cockpit_api.feed.changes import feed_of
from cockpit_api.ops.prometheus import Metrics
from cockpit_api.state import MISSING_SANDBOX, SANDBOX_PREFIX, Services
from cockpit_api.world import build_services, sim_backend

PREFIX = SANDBOX_PREFIX
MISSING_KEY = MISSING_SANDBOX
_SCENARIO_CACHE = 16


@dataclass(slots=True)
class Sandbox:
    id: str
    services: Services
    scenario: str
    label: str | None
    created_at: float
    last_used: float
    ttl_seconds: int

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl_seconds

    @property
    def path(self) -> str:
        return PREFIX + self.id


class SandboxRegistry:
    """The sandboxes of one app: create, find (renewing), list, delete, expire."""

    def __init__(self, settings: Settings, clock: Callable[[], float],
                 config_users: list[User], metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._config_users = config_users
        # The server's request metrics count every world's requests (one /metrics).
        self.metrics = metrics if metrics is not None else Metrics()
        self._boxes: dict[str, Sandbox] = {}
        self._next_expiry = float("inf")
        # scrypt costs ~30 ms on purpose; a sandbox's demo users would make each create
        # that slow. Demo passwords are hashed once per (user, password) and reused.
        self._hashes: dict[tuple[str, str], str] = {}
        self._parsed: OrderedDict[tuple[str, int | None], scenarios.Scenario] = OrderedDict()
        self._raw: dict[str, dict[str, Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def remember(self, demo: Iterable[DemoUser], users: dict[str, User]) -> None:
        """Reuse the hashes the default world already made for the same demo passwords."""
        configured = {u.username for u in self._config_users}  # those win over demo users
        for u in demo:
            known = users.get(u.username)
            if known is not None and u.username not in configured:
                self._hashes[(u.username, u.password)] = known.password_hash

    # ------------------------------------------------------------ requests

    def route(self, path: str) -> tuple[str, Sandbox | None]:
        """For a path under ``/sandboxes/``: (the id, its sandbox or None), renewed."""
        sid = path[len(PREFIX):].split("/", 1)[0]
        now = self.clock()
        self._sweep(now)
        box = self._boxes.get(sid)
        if box is not None:
            box.last_used = now
        return sid, box

    # ------------------------------------------------------------ control plane

    def __len__(self) -> int:
        return len(self._boxes)

    async def create(self, *, scenario: str | dict[str, Any] | None = None,
                     seed: int | None = None, speed: float | None = None,
                     clock_start: float | None = None, ttl_seconds: int | None = None,
                     label: str | None = None) -> Sandbox:
        now = self.clock()
        self._sweep(now)
        cap = self.settings.sandbox_max
        if len(self._boxes) >= cap:
            raise Conflict(
                f"the cap of {cap} sandboxes is reached: delete one (DELETE "
                "/_sim/sandboxes/{id}), let one expire, or raise sandbox_max", code="sandbox_limit")
        sc = self._scenario(scenario, seed)
        budget = self.settings.sandbox_vm_budget
        held = sum(len(sim.scenario.vms) for b in self._boxes.values()
                   if (sim := b.services.sim) is not None)
        if held + len(sc.vms) > budget:
            # Memory is what a VM costs (~1.5 KiB): a few large sandboxes must not take it all.
            raise Conflict(
                f"sandboxes may hold {budget} VMs in all; {held} are held and this scenario "
                f"has {len(sc.vms)}: delete a sandbox or raise sandbox_vm_budget",
                code="sandbox_limit")
        # Unless told otherwise, a sandbox's clock starts where the server's was pinned
        # (--clock-start), else now, and runs at the server's --speed.
        if clock_start is None:
            clock_start = now if self.settings.clock_start is None else self.settings.clock_start
        backend = sim_backend(self.settings, sc, clock_start, speed)
        s = self.settings
        sid = secrets.token_hex(8)
        # Its own secret: a token of one world (or of the default one) is refused here.
        services = build_services(s, backend, self._users(sc), clock=self.clock,
                                  metrics=self.metrics, secret=secrets.token_urlsafe(32),
                                  sandbox_id=sid)
        services.sandboxes = self
        box = Sandbox(sid, services, sc.name, label, now, now, ttl_seconds or s.sandbox_ttl)
        feed_of(backend)  # its change feed's history starts with the sandbox
        await backend.start()
        services.started = True
        self._boxes[sid] = box
        self._next_expiry = min(self._next_expiry, box.expires_at)
        return box

    def get(self, sid: str) -> Sandbox:
        self._sweep(self.clock())
        box = self._boxes.get(sid)
        if box is None:
            raise NotFound(f"no sandbox {sid}: it expired or was deleted",
                           code="sandbox_not_found")
        return box

    def all(self) -> list[Sandbox]:
        self._sweep(self.clock())
        return sorted(self._boxes.values(), key=lambda b: (b.created_at, b.id))

    async def delete(self, sid: str) -> None:
        box = self.get(sid)
        del self._boxes[sid]
        await box.services.backend.close()

    async def close(self) -> None:
        boxes, self._boxes = list(self._boxes.values()), {}
        for box in boxes:
            await box.services.backend.close()
        if self._closing:
            await asyncio.gather(*self._closing)

    # ------------------------------------------------------------ internals

    def _sweep(self, now: float) -> None:
        if now < self._next_expiry:
            return  # the earliest deadline has not come: nothing can have expired
        gone = [b for b in self._boxes.values() if b.expires_at <= now]
        for box in gone:
            del self._boxes[box.id]
            self._close_later(box)
        self._next_expiry = min((b.expires_at for b in self._boxes.values()),
                                default=float("inf"))

    def _close_later(self, box: Sandbox) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a sync caller): the simulator holds nothing to release
        task = loop.create_task(box.services.backend.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _scenario(self, source: str | dict[str, Any] | None,
                  seed: int | None) -> scenarios.Scenario:
        if isinstance(source, dict):
            data = dict(source)
            if seed is not None:
                data["seed"] = seed
            data.setdefault("name", "inline")
            return scenarios.load(data)
        # Without a name: the scenario the server was started with (which the config may
        # give as a file path); a requested name is only ever scenarios/NAME.yaml.
        name = source or self.settings.scenario
        key = (name, seed)
        cached = self._parsed.get(key)
        if cached is not None:
            self._parsed.move_to_end(key)
            return cached
        raw = self._raw.get(name)
        if raw is None:
            raw = self._raw[name] = self._read(name, trusted=source is None)
        parsed = scenarios.load(raw if seed is None else dict(raw, seed=seed))
        self._parsed[key] = parsed
        if len(self._parsed) > _SCENARIO_CACHE:
            self._parsed.popitem(last=False)
        return parsed

    @staticmethod
    def _read(name: str, *, trusted: bool) -> dict[str, Any]:
        path = scenarios.SCENARIO_DIR / f"{name}.yaml"
        if trusted and not path.is_file():
            path = Path(name)
        elif not name.replace("-", "").replace("_", "").isalnum():
            path = scenarios.SCENARIO_DIR / "\0"  # never a file
        if not path.is_file():
            raise NotFound(f"no scenario named {name}", code="scenario_not_found")
        data = scenarios.read_data(path)  # a large snapshot reads as JSON lines, in seconds
        if not isinstance(data, dict):
            raise InvalidArgument(f"scenario {name} is not a mapping", code="bad_scenario")
        return data

    def _users(self, sc: scenarios.Scenario) -> list[User]:
        users = list(self._config_users)
        known = {u.username for u in users}
        demo = sc.users or self._default_users()
        for u in demo:
            if u.username in known:
                continue
            digest = self._hashes.get((u.username, u.password))
            if digest is None:
                digest = self._hashes[(u.username, u.password)] = hash_password(u.password)
            users.append(User(u.username, digest, u.role))
        return users

    def _default_users(self) -> list[scenarios.UserSpec]:
        # An inline scenario without users gets the default scenario's demo users.
        raw = self._raw.get("default")
        if raw is None:
            raw = self._raw["default"] = self._read("default", trusted=False)
        return scenarios.load({"users": raw.get("users", [])}).users
