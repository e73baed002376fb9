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
passwords hashed once, off the event loop), not an app build.

Bounds, because a sandbox's admin is anyone who read the demo passwords: at most
``sandbox_max`` sandboxes, and ``sandbox_vm_budget`` VMs in all of them together.
The budget is checked on every path that loads a scenario into a sandbox (create,
``$S/_sim/scenario``, ``$S/_sim/reset``) from the document's size, counted
*before* anything is built (:func:`vm_count`), and what is being built is reserved
so that concurrent loads cannot overshoot it. Configured ``[[users]]`` exist in
every world; their failed logins count in the default world's store whatever
world is asked (:class:`~cockpit_api.auth.service.SharedThrottle`), so neither more
sandboxes nor a sandbox's reset give an attacker more guesses.

Expiry is lazy and by the app's wall clock (the injectable ``auth_clock``):
an idle sandbox is dropped on the next look at the registry after its
``expires_at``, so tests move a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cockpit_api.auth.service import (
    HashPool,
    SharedThrottle,
    User,
    hash_password,
)
from cockpit_api.backends.base import Conflict, DemoUser, InvalidArgument, NotFound
from cockpit_api.backends.sim import scenario as scenarios
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.config import Settings
from cockpit_api.feed.changes import StreamGate, feed_of
from cockpit_api.ops.prometheus import Metrics
from cockpit_api.state import MISSING_SANDBOX, SANDBOX_PREFIX, ReadyCheck, Services
from cockpit_api.world import build_services, sim_backend

PREFIX = SANDBOX_PREFIX
MISSING_KEY = MISSING_SANDBOX
_SCENARIO_CACHE = 16


def vm_count(data: dict[str, Any]) -> int:
    """How many VMs a scenario document will hold, counted without building it.

    Mirrors ``cockpit_api.backends.sim.scenario._parse``: the listed VMs, plus ``generate.vms``
    when the scenario has a host to put them on.
    """
    try:
        gen = data.get("generate") or {}
        listed_hosts = len(data.get("hosts") or [])
        listed_vms = len(data.get("vms") or [])
        generated = int(gen.get("vms", 0)) if listed_hosts + int(gen.get("hosts", 0)) else 0
    except (AttributeError, TypeError, ValueError):
        raise InvalidArgument("bad scenario: hosts, vms and generate have the wrong shape",
                              code="bad_scenario") from None
    return listed_vms + max(0, generated)


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
                 config_users: list[User], metrics: Metrics | None = None, *,
                 streams: StreamGate | None = None,
                 hasher: HashPool | None = None, throttle: SharedThrottle | None = None,
                 ready_checks: Callable[[Services], dict[str, ReadyCheck]] | None = None,
                 ) -> None:
        self.settings = settings
        self.clock = clock
        self._config_users = config_users
        # The server's request metrics count every world's requests (one /metrics).
        self.metrics = metrics if metrics is not None else Metrics()
        self.streams = streams  # the server's stream caps count every world's streams
        # scrypt runs in these few threads, never on the event loop (shared by every world).
        self.hasher = hasher if hasher is not None else HashPool(settings.password_hash_workers)
        self._own_hasher = hasher is None  # closed with the registry (else: the app's)
        # Where configured users' failed logins are counted (the default world's store).
        self._throttle = throttle
        self._ready_checks = ready_checks
        self._boxes: dict[str, Sandbox] = {}
        self._next_expiry = float("inf")
        # Creates under way (awaiting their hashes): they count against the caps already.
        self._pending = 0
        self._reserved_vms = 0
        # scrypt costs ~40 ms on purpose; a sandbox's demo users would make each create
        # that slow. Demo passwords are hashed once per (user, password) and reused, in a
        # bounded LRU (password_hash_cache): inline scenarios bring users of their own.
        self._hashes: OrderedDict[bytes, str] = OrderedDict()
        self._parsed: OrderedDict[tuple[str, int | None], scenarios.Scenario] = OrderedDict()
        self._raw: dict[str, dict[str, Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def remember(self, demo: Iterable[DemoUser], users: dict[str, User]) -> None:
        """Reuse the hashes the default world already made for the same demo passwords."""
        configured = {u.username for u in self._config_users}  # those win over demo users
        for u in demo:
            known = users.get(u.username)
            if known is not None and u.username not in configured:
                self._cache_hash(_hash_key(u), known.password_hash)

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

    def alive(self, sid: str) -> bool:
        """Whether sandbox ``sid`` still exists (expiring what is due; renewing nothing)."""
        self._sweep(self.clock())
        return sid in self._boxes

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
        if len(self._boxes) + self._pending >= cap:
            raise Conflict(
                f"the cap of {cap} sandboxes is reached: delete one (DELETE "
                "/_sim/sandboxes/{id}), let one expire, or raise sandbox_max", code="sandbox_limit")
        # The budget is checked on the document's size, before anything is built: a refused
        # create costs a count, not a world.
        with self._reserve(vm_count(self._document(scenario))), self._creating():
            sc = await self._scenario(scenario, seed)
            users = await self._users(sc)
            # Unless told otherwise, a sandbox's clock starts where the server's was pinned
            # (--clock-start), else now, and runs at the server's --speed.
            if clock_start is None:
                clock_start = now if self.settings.clock_start is None \
                    else self.settings.clock_start
            backend = await asyncio.to_thread(sim_backend, self.settings, sc, clock_start, speed)
            s = self.settings
            sid = secrets.token_hex(8)
            # Its own secret: a token of one world (or of the default one) is refused here.
            services = build_services(s, backend, users, clock=self.clock, metrics=self.metrics,
                                      secret=secrets.token_urlsafe(32), sandbox_id=sid,
                                      hasher=self.hasher, throttle=self._throttle)
            services.sandboxes = self
            services.streams = self.streams
            if self._ready_checks is not None:
                services.ready_checks.update(self._ready_checks(services))
            box = Sandbox(sid, services, sc.name, label, now, now,
                          ttl_seconds or s.sandbox_ttl)
            feed_of(backend)  # its change feed's history starts with the sandbox
            await backend.start()
            services.started = True
            self._boxes[sid] = box
        self._next_expiry = min(self._next_expiry, box.expires_at)
        self.metrics.sandboxes.set(len(self._boxes))
        return box

    async def load(self, sid: str, *, name: str | None = None,
                   data: dict[str, Any] | None = None) -> SimulatedBackend:
        """``$S/_sim/scenario``: a new scenario in a sandbox, within the VM budget."""
        box = self.get(sid)
        backend = box.services.backend
        assert isinstance(backend, SimulatedBackend)
        source: str | dict[str, Any] = data if data is not None else (name or "default")
        with self._reserve(vm_count(self._document(source)), replacing=sid):
            sc = await self._scenario(source, None)
            built = await asyncio.to_thread(backend.build_reset, sc)  # not on the loop
            if self._boxes.get(sid) is not box:
                raise NotFound("the sandbox was deleted while its scenario loaded",
                               code="sandbox_not_found")
            backend.reset(sc, built=built)
        box.scenario = sc.name
        return backend

    def admit_reset(self, sid: str) -> None:
        """``$S/_sim/reset`` rebuilds the sandbox's scenario: it must still fit the budget."""
        box = self.get(sid)
        backend = box.services.backend
        assert isinstance(backend, SimulatedBackend)
        with self._reserve(len(backend.scenario.vms), replacing=sid):
            pass

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
        self.metrics.sandboxes.set(len(self._boxes))
        feed_of(box.services.backend).close()  # its streams end now, letting go of the world
        await box.services.backend.close()

    async def close(self) -> None:
        boxes, self._boxes = list(self._boxes.values()), {}
        self.metrics.sandboxes.set(0)
        for box in boxes:
            feed_of(box.services.backend).close()
            await box.services.backend.close()
        if self._closing:
            await asyncio.gather(*self._closing)
        if self._own_hasher:
            self.hasher.close()

    # ------------------------------------------------------------ internals

    def _sweep(self, now: float) -> None:
        if now < self._next_expiry:
            return  # the earliest deadline has not come: nothing can have expired
        gone = [b for b in self._boxes.values() if b.expires_at <= now]
        for box in gone:
            del self._boxes[box.id]
            feed_of(box.services.backend).close()  # its streams end at once
            self._close_later(box)
        if gone:
            self.metrics.sandboxes.set(len(self._boxes))
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

    def held_vms(self, *, excluding: str | None = None) -> int:
        """VMs the sandboxes hold now, and those being built (reserved)."""
        return self._reserved_vms + sum(
            len(b.services.backend.scenario.vms) for b in self._boxes.values()
            if b.id != excluding and isinstance(b.services.backend, SimulatedBackend))

    @contextmanager
    def _reserve(self, vms: int, *, replacing: str | None = None) -> Iterator[None]:
        """Check the VM budget for ``vms`` more (in place of sandbox ``replacing``'s), and
        hold them while the world is built; released when it is in (or failed)."""
        budget = self.settings.sandbox_vm_budget
        held = self.held_vms(excluding=replacing)
        if held + vms > budget:
            # Memory is what a VM costs (~1.5 KiB): a few large sandboxes must not take it all.
            others = "the other sandboxes hold" if replacing else "are held and"
            raise Conflict(
                f"sandboxes may hold {budget} VMs in all; {held} {others} this scenario "
                f"has {vms}: delete a sandbox, load a smaller scenario or raise "
                "sandbox_vm_budget", code="sandbox_limit")
        self._reserved_vms += vms
        try:
            yield
        finally:
            self._reserved_vms -= vms

    @contextmanager
    def _creating(self) -> Iterator[None]:
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    def _document(self, source: str | dict[str, Any] | None) -> dict[str, Any]:
        """The scenario document a create or load names (read once per name)."""
        if isinstance(source, dict):
            return source
        name = source or self.settings.scenario
        raw = self._raw.get(name)
        if raw is None:
            raw = self._raw[name] = self._read(name, trusted=source is None)
        return raw

    async def _scenario(self, source: str | dict[str, Any] | None,
                        seed: int | None) -> scenarios.Scenario:
        if isinstance(source, dict):
            data = dict(source)
            if seed is not None:
                data["seed"] = seed
            data.setdefault("name", "inline")
            # Parsing 100,000 generated VMs takes ~0.5 s: not on the event loop.
            return await asyncio.to_thread(scenarios.load, data)
        # Without a name: the scenario the server was started with (which the config may
        # give as a file path); a requested name is only ever scenarios/NAME.yaml.
        name = source or self.settings.scenario
        key = (name, seed)
        cached = self._parsed.get(key)
        if cached is not None:
            self._parsed.move_to_end(key)
            return cached
        raw = self._document(source)
        parsed = await asyncio.to_thread(
            scenarios.load, raw if seed is None else dict(raw, seed=seed))
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

    async def _users(self, sc: scenarios.Scenario) -> list[User]:
        users = list(self._config_users)
        known = {u.username for u in users}
        demo = [u for u in sc.users or self._default_users() if u.username not in known]
        keys = [_hash_key(u) for u in demo]
        digests = {k: self._hashes[k] for k in keys if k in self._hashes}
        missing = {k: u.password for k, u in zip(keys, demo, strict=True) if k not in digests}
        # In the hash pool, all at once: 100 users with distinct passwords cost ~4 s of
        # scrypt, which would stall every client if it ran here on the loop.
        fresh = await asyncio.gather(*(self.hasher.run(hash_password, pw)
                                       for pw in missing.values()))
        digests.update(zip(missing, fresh, strict=True))
        for key in keys:
            self._cache_hash(key, digests[key])  # fresh ones in, used ones renewed
        users += [User(u.username, digests[k], u.role) for k, u in zip(keys, demo, strict=True)]
        return users

    def _cache_hash(self, key: bytes, digest: str) -> None:
        self._hashes[key] = digest
        self._hashes.move_to_end(key)
        while len(self._hashes) > self.settings.password_hash_cache:
            self._hashes.popitem(last=False)

    @property
    def cached_hashes(self) -> int:
        return len(self._hashes)

    def _default_users(self) -> list[scenarios.UserSpec]:
        # An inline scenario without users gets the default scenario's demo users.
        raw = self._raw.get("default")
        if raw is None:
            raw = self._raw["default"] = self._read("default", trusted=False)
        return scenarios.load({"users": raw.get("users", [])}).users


def _hash_key(u: DemoUser) -> bytes:
    # A fixed-size key: passwords may be 1 KiB, and the cache need not hold them.
    return hashlib.sha256(f"{u.username}\0{u.password}".encode()).digest()
