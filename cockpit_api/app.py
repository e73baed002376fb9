"""The app factory: openapi.yaml routed to handlers/, over one backend.

``create_app(settings, backend=...)`` builds a Connexion AsyncApp with strict
request validation and problem+json errors, wraps it so that every request
carries this instance's :class:`Services` in its scope and every write is
audited, and mounts the simulator's control plane when the backend is the
simulator.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import connexion
from connexion.exceptions import ProblemException
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from cockpit_api.auth.service import (
    AuthError,
    HashPool,
    SharedThrottle,
    User,
    hash_password,
)
from cockpit_api.backends.base import Backend, BackendError, PageRequest, Simulator, simulator_of
from cockpit_api.config import ConfigError, Settings
from cockpit_api.feed.changes import StreamGate, StreamLimits, feed_of
from cockpit_api.http import problems, web
from cockpit_api.http.access import AccessMiddleware
from cockpit_api.http.body_limits import BodyLimits, RequestLimits
from cockpit_api.http.pipeline import middlewares as compiled_pipeline
from cockpit_api.http.served_spec import CONTROL_SPEC, OPS_SPEC, PACKAGE, SPEC, RawSpecs
from cockpit_api.http.validators import validator_map
from cockpit_api.ops import logs
from cockpit_api.ops.audit import READS, Auditor, OperationIndex
from cockpit_api.ops.prometheus import Metrics
from cockpit_api.sandboxes.registry import SandboxRegistry
from cockpit_api.state import (
    MISSING_SANDBOX,
    SANDBOX_PREFIX,
    SCOPE_KEY,
    ReadyCheck,
    Services,
    bearer_info,
)
from cockpit_api.store import MEMORY_URL, Store, open_store
from cockpit_api.world import build_backend, build_services

log = logging.getLogger("cockpit_api")

ROOT = PACKAGE  # the specs' directory (cockpit_api/http/served_spec.py)
API_PREFIX = "/api/v1"
CONTROL_PREFIX = "/_sim"
# Request headers a browser app may always send; Settings.cors_allow_headers adds more.
CORS_BASE_HEADERS = ("Authorization", "Content-Type", "X-Request-Id", "Last-Event-ID",
                     "If-None-Match")
# persistAuthorization: the token entered under "Authorize" is kept (in the page's
# localStorage) across reloads, instead of being asked for again after each one.
_SWAGGER_UI = SwaggerUIOptions(swagger_ui_path="/ui",
                               swagger_ui_config={"persistAuthorization": True})
CORS_EXPOSE_HEADERS = ("Location", "Retry-After", "WWW-Authenticate", "X-Request-Id",
                       "X-Feed-Position", "ETag")


class CockpitApp:
    """The ASGI app: picks the world a request is for, puts its services in the scope,
    adds its simulated latency, and audits every write (cockpit_api/ops/audit.py).

    ``/sandboxes/{id}/...`` is a sandbox (cockpit_api/sandboxes/registry.py): the scope's
    ``root_path`` becomes ``/sandboxes/{id}``, below which the one shared Connexion
    app routes as at the root. Everything else is the default world.
    """

    def __init__(self, inner: Any, services: Services,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time,
                 index: Callable[[], OperationIndex] | None = None) -> None:
        """``inner``: the Connexion app (possibly wrapped); ``index``: the write operations
        of the specs it serves (default: read from ``inner``, a Connexion app)."""
        self.inner = inner
        self.services = services
        self._sleep = sleep
        self.auditor = Auditor(inner, services, index or (lambda: OperationIndex.of(inner)),
                               clock)

    def drain(self) -> None:
        """The server is stopping: every open event stream, in every world, ends now with a
        last ``reset`` (reason ``shutdown``) and a ``retry`` hint; long polls answer."""
        worlds = [self.services]
        if self.services.sandboxes is not None:
            worlds += [box.services for box in self.services.sandboxes.all()]
        for services in worlds:
            feed_of(services.backend).close_streams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.inner(scope, receive, send)
            return
        services = self.services
        path: str = scope["path"]
        registry = services.sandboxes
        if registry is not None and path.startswith(SANDBOX_PREFIX):
            sid, box = registry.route(path)
            if box is None:
                scope[MISSING_SANDBOX] = sid  # routed nowhere: a 404 that names the sandbox
            else:
                services = box.services
                root = scope.get("root_path", "") + box.path
                scope = dict(scope, root_path=root)
                path = path[len(box.path):]
        scope[SCOPE_KEY] = services
        if scope["type"] == "http":
            sim = services.sim
            latency = latency_of(sim, path, scope["method"]) if sim is not None else 0
            if latency:
                await self._sleep(latency / 1000)
            if scope["method"] not in READS:
                await self.auditor(scope, receive, send)
                return
        await self.inner(scope, receive, send)


def latency_of(sim: Simulator, path: str, method: str) -> int:
    """Milliseconds to hold a request for ``path`` (below its world's base URL): the newest
    matching rule's, else the world's latency for every API answer."""
    for rule in sim.latency_rules:
        if rule.matches(path, method):
            return rule.ms
    return sim.latency_ms if path.startswith(API_PREFIX) else 0


def _config_users(settings: Settings) -> list[User]:
    return [User(u.username, u.password_hash, u.role) for u in settings.users]


def _users(settings: Settings, backend: Backend) -> list[User]:
    users = _config_users(settings)
    sim = simulator_of(backend)
    if sim is not None:
        scenario = sim.scenario
        # Demo users exist only with the simulator, never in front of real hosts.
        known = {u.username for u in users}
        users += [User(u.username, hash_password(u.password), u.role)
                  for u in scenario.users if u.username not in known]
    if not users:
        raise ConfigError(
            "no users are configured: add [[users]] entries to the config file, with a "
            "password_hash from `cockpit-api hash-password`")
    return users


def _precompute_signatures() -> None:
    """Give every handler and the bearer check a ready ``__signature__``.

    Connexion calls ``inspect.signature`` on the handler and (twice) on the
    x-bearerInfoFunc for every request; inspect returns ``__signature__`` at once
    when a function carries one (about 10% of a request, bench/README.md).
    """
    for name in ("auth", "hosts", "vms", "migrations", "metrics", "control", "ops", "events",
                 "sandboxes", "audit"):
        module = importlib.import_module(f"cockpit_api.handlers.{name}")
        for fn in list(vars(module).values()):
            if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                fn.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    bearer_info.__signature__ = inspect.signature(bearer_info)  # type: ignore[attr-defined]


def create_app(settings: Settings | None = None, *, backend: Backend | None = None,
               store: Store | None = None,
               auth_clock: Callable[[], float] = time.time,
               sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> CockpitApp:
    """The app. Without ``store`` it opens ``settings.store_url`` (``StoreError`` if it
    cannot), or an in-memory store when none is set (apps built in code, tests)."""
    settings = settings or Settings()
    store = store if store is not None else open_store(settings.store_url or MEMORY_URL)
    backend = backend or build_backend(settings, store)
    hasher = HashPool(settings.password_hash_workers)  # scrypt, off the loop, every world
    # Configured users exist in every world; their attempts count here, in one place.
    throttle = SharedThrottle(store, frozenset(u.username for u in settings.users))
    services = build_services(settings, backend, _users(settings, backend), clock=auth_clock,
                              metrics=Metrics(backend.info.kind, _version()),
                              secret=settings.jwt_secret or None, store=store,
                              hasher=hasher, throttle=throttle)
    auth = services.auth
    services.metrics.source = backend  # /metrics reads the default world, whatever URL asks
    services.streams = StreamGate(StreamLimits.of(settings), services.metrics)

    def world_checks(world: Services) -> dict[str, ReadyCheck]:
        """The same checks in every world; a sandbox's also needs the server's store,
        where its configured users' logins are counted."""
        checks: dict[str, ReadyCheck] = {
            "backend": functools.partial(_backend_ready, world),
            "store": functools.partial(_store_ready, world)}
        if world is not services:
            checks["server_store"] = functools.partial(_store_ready, services)
        return checks

    services.ready_checks.update(world_checks(services))
    if hasattr(store, "observer"):  # SqlStore times its calls for the metrics
        setattr(store, "observer", services.metrics.observe_store)  # noqa: B010
    if hasattr(backend, "call_observer"):  # the libvirt backend times its calls through it
        setattr(backend, "call_observer", services.metrics.observe_libvirt_call)  # noqa: B010

    writer = logs.access_writer(settings.log_format) if settings.access_log else None
    feed_of(backend)  # the change feed's history starts with the app
    sim = services.sim
    if sim is not None:  # the simulator: sandboxes are more simulated worlds
        registry = SandboxRegistry(settings, auth_clock, _config_users(settings),
                                   services.metrics, streams=services.streams,
                                   hasher=hasher, throttle=throttle, ready_checks=world_checks)
        registry.remember(sim.scenario.users, auth.users)
        services.sandboxes = registry

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        await backend.start()
        auth.start()
        services.started = True
        try:
            yield
        finally:
            services.started = False
            if services.sandboxes is not None:
                await services.sandboxes.close()
            await auth.stop()
            hasher.close()
            await backend.close()
            if writer is not None:
                writer.flush()

    # The compiled pipeline (cockpit_api/http/pipeline.py) serves every operation of every spec;
    # Connexion's own layers below it serve the rest (UI, specs, 404/405, HEAD).
    app = connexion.AsyncApp(__name__, specification_dir=str(ROOT), lifespan=lifespan,
                             middlewares=compiled_pipeline(allow_below=(RawSpecs,))
                             if settings.compiled_pipeline else None)
    # Explicit base paths: Connexion orders its mounts by them before reading the specs'
    # servers, and the ops API mounted at "" would otherwise shadow the others.
    app.add_api(
        SPEC,
        base_path=API_PREFIX,
        strict_validation=True,
        validate_responses=settings.validate_responses,
        swagger_ui_options=_SWAGGER_UI,
        pythonic_params=False,
        validator_map=validator_map(),
    )
    specs = {API_PREFIX: SPEC}
    if sim is not None:
        app.add_api(CONTROL_SPEC, base_path=CONTROL_PREFIX, strict_validation=True,
                    validate_responses=settings.validate_responses,
                    validator_map=validator_map(), swagger_ui_options=_SWAGGER_UI)
        specs[CONTROL_PREFIX] = CONTROL_SPEC
    app.add_middleware(RawSpecs, position=MiddlewarePosition.BEFORE_SWAGGER, specs=specs)
    app.add_api(OPS_SPEC, base_path="", strict_validation=True,
                validate_responses=settings.validate_responses, validator_map=validator_map())
    web.add_routes(app, backend)
    _precompute_signatures()
    app.add_middleware(
        CORSMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        allow_origins=settings.cors_origins,
        allow_credentials=settings.cors_credentials,
        # Every method an operation of the two specs uses (DELETE /_sim/faults, ...).
        allow_methods=problems.declared_methods(),
        allow_headers=[*CORS_BASE_HEADERS, *settings.cors_allow_headers],
        expose_headers=list(CORS_EXPOSE_HEADERS),
    )
    # Added after CORS at the same position: inside it, so refusals carry CORS headers too.
    app.add_middleware(
        RequestLimits,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        limits=BodyLimits(settings.max_body_bytes, settings.max_json_depth,
                          settings.body_timeout),
    )
    app.add_error_handler(BackendError, problems.on_backend_error)
    app.add_error_handler(AuthError, problems.on_auth_error)
    app.add_error_handler(ProblemException, problems.on_connexion_problem)
    app.add_error_handler(HTTPException, problems.on_http_exception)
    app.add_error_handler(UnicodeDecodeError, problems.on_bad_encoding)
    app.add_error_handler(Exception, problems.on_unexpected)
    cockpit = CockpitApp(AccessMiddleware(app, services, access_log=writer), services, sleep,
                         auth_clock, index=lambda: OperationIndex.of(app))
    services.ready_checks["store"] = functools.partial(_store_ready, services, cockpit.auditor)
    return cockpit


async def _store_ready(services: Services, auditor: Auditor | None = None) -> str | None:
    """The store answers a query and commits a write (logins, refreshes and the audit
    log need both; a full disk reads but does not write)."""
    store = services.auth.store
    try:
        await asyncio.to_thread(store.ping)
    except Exception:  # StoreUnavailable, or whatever a dead connection raises
        return "the state store cannot be reached"
    try:
        await asyncio.to_thread(store.probe_write, services.auth.clock())
    except Exception:
        if auditor is not None:
            auditor.failed(store)
        return "the state store cannot write (a full disk?): writes answer 503"
    if auditor is not None:
        auditor.recovered(store)
    return None


async def _backend_ready(services: Services) -> str | None:
    """Started; with libvirt, at least one host connected (the simulator is always ready)."""
    if not services.started:
        return "the backend has not started"
    if services.backend.info.kind != "libvirt":
        return None
    connected = total = 0
    cursor: str | None = None
    while True:
        page = await services.backend.list_hosts(PageRequest(limit=1000, cursor=cursor))
        total += len(page.items)
        connected += sum(h.status == "connected" for h in page.items)
        cursor = page.next_cursor
        if connected or cursor is None:
            break
    return None if connected else f"no host is connected (0 of {total})"


def _version() -> str:
    try:
        return importlib.metadata.version("cockpit-api")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
