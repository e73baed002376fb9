"""Every piece of Connexion 3.3 the compiled pipeline uses that is not its documented API.

``cockpit_api/http/pipeline.py`` builds, once per operation, what Connexion's middleware
stack rebuilds on every request. It takes the pieces from here, and only from here,
so that a Connexion upgrade has one file to check. pyproject.toml pins
``connexion==3.3.*``; ``tests/test_connexion_parts.py`` fails loudly when any of the
following stops holding:

- **Context.** ``connexion.context`` reads four ContextVars (``_context``,
  ``_operation``, ``_receive``, ``_scope``) that ``ContextMiddleware`` sets per
  request; ``connexion.request`` and ``connexion.context.context`` are proxies on them.
  The security check writes ``token_info``/``user`` into
  ``scope["extensions"]["connexion_context"]``.
- **Routing.** ``RoutingOperation`` leaves ``scope["path_params"]`` (converted by
  Starlette's convertors from ``starlettify_path``) and
  ``scope["extensions"][ROUTING_CONTEXT] = {"api_base_path", "operation_id"}``;
  Starlette matches on ``get_route_path(scope)``; Connexion mounts each API's routes
  under its base path, APIs sorted by ``sort_apis_by_basepath``, routes in spec order.
- **Security.** ``SecurityOperation(next_app, security_handler_factory=,
  security=, security_schemes=)`` builds ``.verification_fn`` (awaited with a
  ``ConnexionRequest``) once, in its constructor.
- **Request validation.** ``RequestValidationOperation`` has
  ``extract_content_type(headers)``, ``validate_mime_type(mime)`` and
  ``security_query_params``; the parameter validator is
  ``cls(parameters, uri_parser=, strict_validation=, security_query_params=)`` with
  ``validate_request(request)``; body validators are
  ``cls(schema=, required=, nullable=, encoding=, strict_validation=, uri_parser=)``
  with ``await wrap_receive(receive, scope=)`` returning ``(receive, scope)``.
- **Response validation.** ``ResponseValidationOperation(next_app, operation=,
  validator_map=)`` is an ASGI app wrapping ``send``.
- **Handler call.** ``decorators.parameter.get_arguments`` (keyword-only arguments as
  in 3.3), ``sanitized``/``pythonic``, ``CONTEXT_NAME``; ``AsyncResponseDecorator``
  turns a handler's return value into a Starlette response; sync handlers run in
  Starlette's thread pool as ``ASGIDecorator`` does.
- **Loading.** ``RoutedAPI(specification, next_app=, **add_api options)`` loads an
  API's operations through ``make_operation``; ``ConnexionRequest`` caches parsed
  parameters in ``_path_params``/``_query_params``; ``SwaggerUIMiddleware.router`` holds
  the UI's and the specs' routes.
- **The stack.** ``ConnexionMiddleware.middlewares`` (classes or partials) and
  ``middleware_stack`` (outermost first, the wrapped app last, an ``AsyncASGIApp``
  for ``AsyncApp``), built by ``_build_middleware_stack()`` on the first call (which
  sets ``scope["app"]``), or earlier by ``build_stack``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import typing as t
from collections.abc import Awaitable, Callable

from connexion import context as _ctx
from connexion.apps.asynchronous import AsyncASGIApp
from connexion.decorators.parameter import (
    CONTEXT_NAME,
    _get_query_defaults,
    _get_val_from_param,
    get_arguments,
    pythonic,
    sanitized,
)
from connexion.decorators.response import AsyncResponseDecorator
from connexion.frameworks.starlette import Starlette as StarletteFramework
from connexion.frameworks.starlette import starlettify_path
from connexion.http_facts import FORM_CONTENT_TYPES
from connexion.jsonifier import Jsonifier
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.abstract import ROUTING_CONTEXT, RoutedAPI, SpecMiddleware
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import (
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.middleware.response_validation import (
    ResponseValidationMiddleware,
    ResponseValidationOperation,
)
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware, SecurityOperation
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.operations import AbstractOperation, OpenAPIOperation, Swagger2Operation
from connexion.security import SecurityHandlerFactory
from connexion.utils import inspect_function_arguments, is_json_mimetype, is_null, is_nullable
from connexion.validators import VALIDATOR_MAP
from starlette._utils import get_route_path
from starlette.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope

__all__ = [
    "CONTEXT_NAME", "ROUTING_CONTEXT", "AbstractOperation", "ArgumentPlan",
    "AsyncASGIApp", "BodyCheck", "ConnexionRequest", "OperationLoader", "ReplacedLayers",
    "Security", "SpecMiddleware", "arguments", "build_stack", "compile_route",
    "get_route_path", "handler_arguments", "invoke", "is_async_app", "rebuild_request",
    "response_validator", "sanitizer", "set_context", "stack_below", "swagger_paths",
]

# The layers the compiled pipeline stands in for, in Connexion's order. Any other
# middleware between the pipeline and the app would be skipped on compiled requests.
ReplacedLayers: tuple[type, ...] = (
    SwaggerUIMiddleware, RoutingMiddleware, SecurityMiddleware, RequestValidationMiddleware,
    ResponseValidationMiddleware, LifespanMiddleware, ContextMiddleware,
)


def set_context(scope: Scope, receive: Receive, operation: AbstractOperation) -> None:
    """What ContextMiddleware does for one request."""
    _ctx._context.set(scope.get("extensions", {}).get("connexion_context", {}))
    _ctx._operation.set(operation)
    _ctx._receive.set(receive)
    _ctx._scope.set(scope)


class Security:
    """Connexion's security check for one operation, built once."""

    def __init__(self, operation: AbstractOperation, security_map: dict[str, t.Any] | None):
        factory = SecurityHandlerFactory(security_map)
        factory.security_handlers = {name: _remembering(cls)
                                     for name, cls in factory.security_handlers.items()}
        built = SecurityOperation(
            None,  # never called as an app: only its check is used
            security_handler_factory=factory,
            security=operation.security, security_schemes=operation.security_schemes)
        self.required = bool(built.security)
        self.verify: Callable[[ConnexionRequest], Awaitable[t.Any]] = built.verification_fn


@functools.lru_cache(maxsize=256)
def _accepts_kwarg(func: Callable[..., t.Any], keyword: str) -> bool:
    arguments, has_kwargs = inspect_function_arguments(func)
    return has_kwargs or keyword in arguments


@functools.cache
def _remembering(cls: type) -> type:
    """A security handler class whose ``_accepts_kwarg`` (``inspect.signature`` of the
    x-*InfoFunc, twice a request in 3.3) is answered once per function."""
    if not hasattr(cls, "_accepts_kwarg"):
        return cls
    return type(cls.__name__, (cls,), {"_accepts_kwarg": staticmethod(_accepts_kwarg)})


class BodyCheck:
    """Connexion's request validation for one operation: parameters, media type, body."""

    # Validators for the media types a client sent, built on first sight. Bounded: a client
    # inventing media types must not grow memory; past the bound they are built per request.
    MAX_MEDIA_TYPES = 16

    def __init__(self, operation: AbstractOperation, *, strict_validation: bool,
                 validator_map: dict[str, t.Any] | None) -> None:
        self._operation = operation
        self._strict = strict_validation
        self._request_validation = RequestValidationOperation(
            None,  # never called as an app
            operation=operation, strict_validation=strict_validation,
            validator_map=validator_map)
        self._validator_map = self._request_validation._validator_map
        self.uri_parser = operation.uri_parser_class(operation.parameters,
                                                     operation.body_definition())
        self.security_query_params: list[str] = self._request_validation.security_query_params
        self.parameters = self._validator_map["parameter"](
            operation.parameters, uri_parser=self.uri_parser,
            strict_validation=strict_validation,
            security_query_params=self.security_query_params)
        # No request body and no media types to check: skip the whole body step.
        self.has_body = bool(operation.consumes) or bool(operation.body_schema())
        self._bodies: dict[tuple[str, str], t.Any] = {}

    def validate_parameters(self, request: ConnexionRequest) -> None:
        self.parameters.validate_request(request)

    async def validate_body(self, scope: Scope, receive: Receive) -> tuple[Receive, Scope]:
        rv = self._request_validation
        mime_type, encoding = rv.extract_content_type(scope["headers"])
        rv.validate_mime_type(mime_type)
        key = (mime_type, encoding)
        validator = self._bodies.get(key, False)
        if validator is False:
            validator = self._body_validator(mime_type, encoding)
            if len(self._bodies) < self.MAX_MEDIA_TYPES:
                self._bodies[key] = validator
        if validator is None:
            return receive, scope
        new_receive, new_scope = await validator.wrap_receive(receive, scope=scope)
        return new_receive, new_scope

    def _body_validator(self, mime_type: str, encoding: str) -> t.Any:
        op = self._operation
        schema = op.body_schema(mime_type)
        if not schema:
            return None
        try:
            cls = self._validator_map["body"][mime_type]
        except KeyError:
            return None  # Connexion logs and skips validation for unknown media types
        return cls(schema=schema, required=op.request_body.get("required", False),
                   nullable=is_nullable(op.body_definition(mime_type)), encoding=encoding,
                   strict_validation=self._strict,
                   uri_parser=op.uri_parser_class(op.parameters, op.body_definition()))


def response_validator(next_app: ASGIApp, operation: AbstractOperation,
                       validator_map: dict[str, t.Any] | None) -> ASGIApp:
    """Connexion's response validation around ``next_app``, built once."""
    return ResponseValidationOperation(next_app, operation=operation,
                                       validator_map={**VALIDATOR_MAP, **(validator_map or {})})


def handler_arguments(fn: Callable[..., t.Any]) -> tuple[list[str], bool]:
    from connexion.decorators.parameter import unwrap_decorators

    return inspect_function_arguments(unwrap_decorators(fn))


def sanitizer(pythonic_params: bool) -> Callable[[str], str]:
    return pythonic if pythonic_params else sanitized


async def arguments(operation: AbstractOperation, request: ConnexionRequest, *,
                    arguments: list[str], has_kwargs: bool,
                    sanitize: Callable[[str], str]) -> dict[str, t.Any]:
    """Connexion's ``AsyncParameterDecorator`` + ``prep_kwargs``, with the operation itself
    instead of its context proxy, on the request security and validation already parsed."""
    body = None
    body_name = sanitize(operation.body_name(request.content_type))
    if body_name in arguments or has_kwargs or (
            request.mimetype in FORM_CONTENT_TYPES and isinstance(operation, Swagger2Operation)):
        body = await request.get_body()
    # Only form bodies carry files; Starlette parses nothing for other media types.
    files = await request.files() if request.mimetype in FORM_CONTENT_TYPES else {}
    kwargs = get_arguments(operation, path_params=request.path_params,
                           query_params=request.query_params, body=body, files=files,
                           arguments=arguments, has_kwargs=has_kwargs, sanitize=sanitize,
                           content_type=request.mimetype)
    kwargs = {sanitize(k): v for k, v in kwargs.items()}
    ctx = request.context
    for key, value in ctx.items():
        if has_kwargs or key in arguments:
            kwargs[key] = value
    if CONTEXT_NAME in arguments:
        kwargs[CONTEXT_NAME] = ctx
    return kwargs


class ArgumentPlan:
    """``arguments`` above, precomputed for the common case, or None where it does not apply.

    It applies to OpenAPI 3 operations whose body (if any) is JSON and whose query
    parameters have no object or array defaults: then Connexion's ``get_arguments``
    reduces to "path values cast, defaults overlaid by query values cast, the body or its
    default, the context", and that is what ``__call__`` does, with Connexion's own cast
    (``_get_val_from_param``). ``Pipeline.crosscheck`` (on in the tests) compares every
    answer with ``arguments``.
    """

    @classmethod
    def build(cls, operation: AbstractOperation, arguments: list[str], has_kwargs: bool,
              sanitize: Callable[[str], str]) -> ArgumentPlan | None:
        if not isinstance(operation, OpenAPIOperation) or operation.method.upper() == "TRACE":
            return None
        if any(not is_json_mimetype(c) for c in operation.consumes):
            return None
        query = {p["name"]: p for p in operation.parameters if p["in"] == "query"}
        defaults = _get_query_defaults(query)
        if any(isinstance(v, (dict, list)) for v in defaults.values()):
            return None
        return cls(operation, arguments, has_kwargs, sanitize, query, defaults)

    def __init__(self, operation: AbstractOperation, arguments: list[str], has_kwargs: bool,
                 sanitize: Callable[[str], str], query: dict[str, dict[str, t.Any]],
                 defaults: dict[str, t.Any]) -> None:
        self.has_kwargs = has_kwargs
        self.wanted = frozenset(arguments)
        self.context_arg = CONTEXT_NAME in arguments
        # Connexion sanitizes each name twice (get_arguments, then prep_kwargs).
        self.name = functools.lru_cache(maxsize=512)(lambda k: sanitize(sanitize(k)))
        self.path = {p["name"]: p for p in operation.parameters if p["in"] == "path"}
        self.query = query
        self.defaults = defaults
        self.operation = operation
        self.body_name: str | None = None
        if operation.is_request_body_defined and (arguments or has_kwargs):
            raw = operation.body_name("application/json")  # OpenAPI 3: x-body-name or "body"
            if sanitize(raw) in self.wanted or has_kwargs:
                self.body_name = self.name(raw)
        self._schemas: dict[str, dict[str, t.Any]] = {}

    def _body_schema(self, mimetype: str) -> dict[str, t.Any]:
        schema = self._schemas.get(mimetype)
        if schema is None:
            schema = self.operation.body_schema(mimetype)
            if len(self._schemas) < 16:  # bounded: media types come from clients
                self._schemas[mimetype] = schema
        return schema

    async def __call__(self, request: ConnexionRequest) -> dict[str, t.Any]:
        kwargs: dict[str, t.Any] = {}
        name, wanted, has_kwargs = self.name, self.wanted, self.has_kwargs
        path = self.path
        for key, value in request.path_params.items():
            definition = path.get(key)
            kwargs[name(key)] = (value if definition is None
                                 else _get_val_from_param(value, definition))
        query_values = request.query_params
        merged = {**self.defaults, **query_values} if self.defaults else query_values
        query = self.query
        for key, value in merged.items():
            sk = name(key)
            if has_kwargs or sk in wanted:
                definition = query.get(key)
                if definition is not None:
                    kwargs[sk] = _get_val_from_param(value, definition)
        if self.body_name is not None:
            body = await request.get_body()
            schema = self._body_schema(request.mimetype)
            if is_nullable(schema) and is_null(body):
                body = None
            elif body is None:
                body = copy.deepcopy(schema.get("default", {}))
            kwargs[self.body_name] = body
        ctx = request.context
        for key, value in ctx.items():
            if has_kwargs or key in wanted:
                kwargs[key] = value
        if self.context_arg:
            kwargs[CONTEXT_NAME] = ctx
        return kwargs


def invoke(fn: Callable[..., t.Any],
           jsonifier: Jsonifier | None) -> Callable[..., Awaitable[t.Any]]:
    """The handler as Connexion calls it: async (sync ones in the thread pool), its return
    value made a Starlette response by Connexion's response decorator."""
    if asyncio.iscoroutinefunction(fn):
        call = fn
    else:
        @functools.wraps(fn)
        async def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
            return await run_in_threadpool(fn, *args, **kwargs)
    decorator = AsyncResponseDecorator(framework=StarletteFramework,
                                       jsonifier=jsonifier or Jsonifier())
    wrapped: Callable[..., Awaitable[t.Any]] = decorator(call)
    return wrapped


def compile_route(base_path: str, operation: AbstractOperation
                  ) -> tuple[t.Pattern[str], dict[str, t.Any], bool]:
    """(regex, convertors, templated) of the path Connexion's router registers."""
    path = starlettify_path(operation.path, operation.get_path_parameter_types())
    regex, _, convertors = compile_path(base_path + path)
    return regex, convertors, bool(convertors)


def stack_below(mw: t.Any, me: type) -> tuple[list[t.Any], t.Any] | None:
    """The middleware classes Connexion placed below ``me``, and the wrapped app.

    ``mw`` is what Connexion puts in ``scope["app"]``; None unless it is a
    ConnexionMiddleware that built its stack with ``me`` in it.
    """
    if not isinstance(mw, ConnexionMiddleware) or not mw.middleware_stack:
        return None
    classes = [getattr(m, "func", m) for m in mw.middlewares]
    if me not in classes:
        return None
    stack = list(mw.middleware_stack)
    return classes[classes.index(me) + 1:], stack[-1]


class OperationLoader(RoutedAPI[AbstractOperation]):
    """One API's operations, loaded as Connexion's own middlewares load them (resolver,
    ResolverError handling), in spec order; the add_api options the pipeline needs kept."""

    OPTIONS = ("strict_validation", "validator_map", "security_map", "validate_responses",
               "pythonic_params", "jsonifier")

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        self.options = {k: kwargs.pop(k, None) for k in self.OPTIONS}
        self.ordered: list[AbstractOperation] = []
        for unused in ("auth_all_paths", "resolver_error_handler", "swagger_ui_options",
                       "arguments", "name", "resolver_error"):
            kwargs.pop(unused, None)
        super().__init__(*args, **kwargs)
        self.add_paths()

    def make_operation(self, operation: AbstractOperation) -> AbstractOperation:
        self.ordered.append(operation)
        return operation


def rebuild_request(old: ConnexionRequest, scope: Scope, receive: Receive) -> ConnexionRequest:
    """A request over the validated body (new scope/receive); parsed parameters kept."""
    new = ConnexionRequest(scope, receive, uri_parser=old.uri_parser)
    new._path_params = old._path_params
    new._query_params = old._query_params
    return new


def swagger_paths(app: t.Any) -> list[str]:
    """Concrete paths the Swagger UI layer ``app`` serves (it routes before Connexion's
    router, so operations on these paths are left to it); a sample below each mount."""
    paths: list[str] = []
    for _ in range(8):  # middlewares the app put between the pipeline and the UI layer
        if isinstance(app, SwaggerUIMiddleware) or app is None:
            break
        app = getattr(app, "app", None)
    if not isinstance(app, SwaggerUIMiddleware):
        return paths
    for mount in app.router.routes:
        for route in getattr(getattr(mount, "app", None), "routes", None) or []:
            p = getattr(route, "path", None)
            if p is not None:
                paths += [mount.path + p, mount.path + p + "/x"]
    return paths


def build_stack(mw: ConnexionMiddleware) -> None:
    """Build the middleware stack now, as ConnexionMiddleware does on its first call."""
    if mw.middleware_stack is None:
        mw.app, mw.middleware_stack = mw._build_middleware_stack()


def is_async_app(app: t.Any) -> bool:
    return isinstance(app, AsyncASGIApp)

