"""The compiled request pipeline: each operation's Connexion work built once, at start-up.

Connexion 3.3 rebuilds per request what never changes (the handler's decorator chain,
the URI parser, the parameter and body validators) and parses the parameters up to
three times (security, validation, handler arguments). :class:`CompiledPipeline` is a
Connexion middleware (``middlewares=``, right below the exception middleware, so CORS
and every error handler stay above it) that builds, for every operation of every API
added to the app, one :class:`Pipeline` out of Connexion's own parts
(``cockpit_api.http.connexion_parts``): the resolved handler, the security check, the
parameter validator and URI parser, a body validator per media type (through the
API's ``validator_map``), the handler's argument list, and with ``validate_responses``
Connexion's response validator around it. Requests are routed by a table with
Connexion's precedence: exact paths in a dict, templated ones as compiled patterns.

Per request: one ``ConnexionRequest`` shared by security, validation and argument
preparation (each parameter is parsed once), Connexion's context set once, the handler
awaited, its response sent as it is (a ``StreamingResponse`` streams).

What it does not own goes to Connexion's stack below, unchanged: paths or methods no
operation declares (404/405, trailing-slash redirects), HEAD, the Swagger UI and the
served specs, lifespan, websockets. Errors are raised, so the exception middleware
above makes every problem+json answer as before. ``stats`` counts both kinds.
"""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from cockpit_api.http import connexion_parts as cx

log = logging.getLogger("cockpit_api.http.pipeline")

_REQUEST = "cockpit.pipeline.request"  # scope key: the shared request, for the handler step


@dataclass
class Stats:
    """Requests served by compiled pipelines vs passed down to Connexion's stack."""

    compiled: int = 0
    passed: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """One operation, ready: security, validation, arguments, handler, response."""

    # When set (the test suites do), every request's arguments from the precomputed plan
    # are compared with Connexion's own get_arguments; a difference is an AssertionError.
    crosscheck: t.ClassVar[bool] = False

    def __init__(self, operation: cx.AbstractOperation, base_path: str, *,
                 strict_validation: bool, validator_map: dict[str, t.Any] | None,
                 security_map: dict[str, t.Any] | None, validate_responses: bool,
                 pythonic_params: bool, jsonifier: t.Any) -> None:
        self.operation = operation
        self.operation_id = operation.operation_id
        self.base_path = base_path
        self.security = cx.Security(operation, security_map)
        self.checks = cx.BodyCheck(operation, strict_validation=strict_validation,
                                   validator_map=validator_map)
        fn = operation.function
        self.arguments, self.has_kwargs = cx.handler_arguments(fn)
        self.sanitize = cx.sanitizer(pythonic_params)
        self.plan = cx.ArgumentPlan.build(operation, self.arguments, self.has_kwargs,
                                          self.sanitize)
        self.call = cx.invoke(fn, jsonifier)
        self.routing = {"api_base_path": base_path, "operation_id": self.operation_id}
        self.respond: ASGIApp = self._respond
        if validate_responses:
            self.respond = cx.response_validator(self._respond, operation, validator_map)

    async def __call__(self, scope: Scope, receive: Receive, send: Send,
                       path_params: dict[str, t.Any]) -> None:
        # The scope the handler sees, as Connexion's routing leaves it: a copy, sharing the
        # extensions dict when there is one (middlewares above read the routing from it).
        scope = dict(scope)
        scope["path_params"] = path_params
        scope.setdefault("extensions", {}).setdefault(cx.ROUTING_CONTEXT, {}).update(
            self.routing)
        checks = self.checks
        request = cx.ConnexionRequest(scope, receive, uri_parser=checks.uri_parser)
        if self.security.required:
            # Connexion's security sees Starlette's raw query parameters (its request has no
            # URI parser): an API key in the query must not arrive parsed as a list.
            await self.security.verify(
                cx.ConnexionRequest(scope, receive) if checks.security_query_params else request)
        checks.validate_parameters(request)
        if checks.has_body:
            new_receive, new_scope = await checks.validate_body(scope, receive)
            if new_receive is not receive or new_scope is not scope:
                request = cx.rebuild_request(request, new_scope, new_receive)
                scope, receive = new_scope, new_receive
        scope[_REQUEST] = request
        cx.set_context(scope, receive, self.operation)
        await self.respond(scope, receive, send)

    async def _crosscheck(self, request: cx.ConnexionRequest, kwargs: dict[str, t.Any]) -> None:
        # The body is already read and cached by Starlette: this does no I/O.
        expected = await cx.arguments(self.operation, request, arguments=self.arguments,
                                      has_kwargs=self.has_kwargs, sanitize=self.sanitize)
        if expected != kwargs:
            raise AssertionError(f"{self.operation_id}: compiled arguments {kwargs!r} != "
                                 f"Connexion's {expected!r}")

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: cx.ConnexionRequest = scope[_REQUEST]
        if self.plan is not None:
            kwargs = await self.plan(request)
            if self.crosscheck:
                await self._crosscheck(request, kwargs)
        else:
            kwargs = await cx.arguments(self.operation, request, arguments=self.arguments,
                                        has_kwargs=self.has_kwargs, sanitize=self.sanitize)
        response = await self.call(**kwargs)
        await response(scope, receive, send)


class _Table:
    """One API's routes: Connexion's (spec) order, exact paths looked up in a dict."""

    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Pipeline]] = {}
        self.patterns: list[tuple[t.Pattern[str], dict[str, t.Any], dict[str, Pipeline]]] = []


class CompiledPipeline(cx.SpecMiddleware):
    """The middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, allow_below: tuple[type, ...] = ()) -> None:
        self.app = app
        # Middlewares the app places below this one that answer only paths no operation
        # has (e.g. RawSpecs, the served specs): skipping them on operations is right.
        self.allow_below = allow_below
        self.apis: list[cx.OperationLoader] = []
        self.stats = Stats()
        # [(base path, [tables of the APIs on that base path, in order])], Connexion's order
        self._mounts: list[tuple[str, list[_Table]]] | None = None
        self.disabled_reason: str | None = None

    def add_api(self, specification: t.Any, **kwargs: t.Any) -> None:
        self.apis.append(cx.OperationLoader(specification, next_app=self.app, **kwargs))

    # ---------------------------------------------------------------- building

    def compile(self, connexion_middleware: t.Any) -> None:
        self._mounts = []
        below = cx.stack_below(connexion_middleware, type(self))
        if below is None:
            self.disabled_reason = "not inside a ConnexionMiddleware stack"
            log.warning("compiled pipeline off: %s", self.disabled_reason)
            return
        layers, inner = below
        if not cx.is_async_app(inner):
            self.disabled_reason = f"the app is {type(inner).__name__}, not Connexion's AsyncApp"
            log.warning("compiled pipeline off: %s", self.disabled_reason)
            return
        unknown = [m for m in layers if m not in cx.ReplacedLayers and m not in self.allow_below]
        if unknown:
            # They would be skipped on every compiled request: refuse to start instead.
            names = ", ".join(getattr(m, "__name__", repr(m)) for m in unknown)
            raise RuntimeError(
                f"middleware below the compiled pipeline would be bypassed: {names}. Add it "
                "above (MiddlewarePosition.BEFORE_EXCEPTION, or before CompiledPipeline).")
        swagger_paths = cx.swagger_paths(self.app)
        for api in self.apis:
            base = api.base_path or ""
            if "{" in base:
                continue  # templated base paths: left to Connexion's router
            table = _Table()
            for op in api.ordered:
                regex, convertors, templated = cx.compile_route(base, op)
                if any(regex.match(p) for p in swagger_paths):
                    continue  # the Swagger UI layer answers these first
                pipeline = Pipeline(op, base, **api.options)
                method = op.method.upper()
                if templated:
                    last = table.patterns[-1] if table.patterns else None
                    if last is not None and last[0].pattern == regex.pattern:
                        last[2].setdefault(method, pipeline)
                    else:
                        table.patterns.append((regex, convertors, {method: pipeline}))
                    continue
                path = base + op.path
                # An exact path is only a dict hit if no earlier pattern takes it first.
                if any(p.match(path) for p, _, _ in table.patterns):
                    table.patterns.append((regex, {}, {method: pipeline}))
                else:
                    table.exact.setdefault(path, {}).setdefault(method, pipeline)
            for mount_base, tables in self._mounts:
                if mount_base == base:
                    tables.append(table)
                    break
            else:
                self._mounts.append((base, [table]))

    def find(self, path: str, method: str) -> tuple[Pipeline, dict[str, t.Any]] | None:
        assert self._mounts is not None
        for base, tables in self._mounts:
            if not path.startswith(base + "/"):
                continue
            for table in tables:
                methods = table.exact.get(path)
                if methods is not None:
                    pipeline = methods.get(method)
                    if pipeline is not None:
                        return pipeline, {}
                for regex, convertors, by_method in table.patterns:
                    m = regex.match(path)
                    if m is not None:
                        pipeline = by_method.get(method)
                        if pipeline is not None:
                            params = m.groupdict()
                            for k, v in params.items():
                                params[k] = convertors[k].convert(v)
                            return pipeline, params
            return None  # Connexion's router would stop at this mount too
        return None

    # ---------------------------------------------------------------- serving

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._mounts is None:
            self.compile(scope.get("app"))
        if scope["type"] == "http" and self._mounts:
            found = self.find(cx.get_route_path(scope), scope["method"])
            if found is not None:
                pipeline, params = found
                stats = self.stats
                stats.compiled += 1
                stats.by_operation[pipeline.operation_id] = \
                    stats.by_operation.get(pipeline.operation_id, 0) + 1
                await pipeline(scope, receive, send, params)
                return
            self.stats.passed += 1
        await self.app(scope, receive, send)


def middlewares(allow_below: tuple[type, ...] = ()) -> list[t.Any]:
    """Connexion's default stack with the compiled pipeline right below the exceptions.

    ``allow_below``: middlewares the app will add below it (``BEFORE_SWAGGER`` and lower)
    that serve only non-operation paths; any other one there is refused at start-up.
    """
    import functools

    from connexion.middleware.exceptions import ExceptionMiddleware
    from connexion.middleware.main import ConnexionMiddleware

    stack = list(ConnexionMiddleware.default_middlewares)
    me: t.Any = (functools.partial(CompiledPipeline, allow_below=allow_below) if allow_below
                 else CompiledPipeline)
    stack.insert(stack.index(ExceptionMiddleware) + 1, me)
    return stack


def prepare(app: t.Any) -> CompiledPipeline | None:
    """Build the app's middleware stack and compile its pipelines now rather than on the
    first request or lifespan event: the CLI does this before ``gc.freeze()``, so what the
    compilation allocates is frozen with the rest of the start-up."""
    middleware = _connexion_middleware(app)
    if middleware is None:
        return None
    cx.build_stack(middleware)
    compiled = of(app)
    if compiled is not None and compiled._mounts is None:
        compiled.compile(middleware)
    return compiled


def of(app: t.Any) -> CompiledPipeline | None:
    """The app's compiled pipeline once its stack is built (after ``prepare``, the first
    request or the lifespan start-up); for tests and diagnostics. ``app`` is the AsyncApp
    or anything wrapping it through ``inner``/``app`` attributes (CockpitApp, middlewares)."""
    middleware = _connexion_middleware(app)
    stack = getattr(middleware, "middleware_stack", None) or []
    return next((m for m in stack if isinstance(m, CompiledPipeline)), None)


def _connexion_middleware(app: t.Any) -> t.Any:
    for _ in range(8):  # wrappers around the AsyncApp, outermost first
        middleware = getattr(app, "middleware", None)
        if middleware is not None:
            return middleware
        app = getattr(app, "inner", None) or getattr(app, "app", None)
        if app is None:
            return None
    return None
