"""Fails loudly when a Connexion upgrade changes what cockpit_api/http/connexion_parts.py relies on.

Each test names one item of that module's docstring. If one fails after an upgrade,
read the new Connexion code for that item, adapt connexion_parts.py (only), and keep
tests/test_pipeline.py (both paths answer the same) passing.
"""

from __future__ import annotations

import asyncio
import inspect
from contextvars import ContextVar
from importlib import metadata
from typing import Any

import connexion
import connexion.context
from connexion.decorators import parameter
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.abstract import ROUTING_CONTEXT
from connexion.middleware.context import ContextOperation
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import RequestValidationOperation
from connexion.middleware.response_validation import ResponseValidationOperation
from connexion.middleware.routing import RoutingOperation
from connexion.middleware.routing import _scope as routing_scope
from connexion.middleware.security import SecurityOperation
from connexion.security import AbstractSecurityHandler, SecurityHandlerFactory
from connexion.validators import AbstractRequestBodyValidator, ParameterValidator

from cockpit_api.http import connexion_parts as cx
from cockpit_api.http import pipeline


def _keywords(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters) - {"self", "args", "kwargs"}


def test_connexion_is_the_pinned_minor() -> None:
    assert metadata.version("connexion").startswith("3.3."), (
        "connexion_parts.py was written against Connexion 3.3: check every item of its "
        "docstring against the new version before moving the pin")


def test_the_stack_and_where_the_pipeline_sits() -> None:
    names = [m.__name__ for m in ConnexionMiddleware.default_middlewares]
    assert names == ["ServerErrorMiddleware", "ExceptionMiddleware", "SwaggerUIMiddleware",
                     "RoutingMiddleware", "SecurityMiddleware", "RequestValidationMiddleware",
                     "ResponseValidationMiddleware", "LifespanMiddleware", "ContextMiddleware"]
    ours = pipeline.middlewares()
    assert ours[ours.index(ExceptionMiddleware) + 1] is pipeline.CompiledPipeline
    assert tuple(ours[ours.index(pipeline.CompiledPipeline) + 1:]) == cx.ReplacedLayers
    mw = ConnexionMiddleware(object())  # type: ignore[arg-type]
    assert hasattr(mw, "middlewares") and mw.middleware_stack is None
    assert callable(mw._build_middleware_stack)


def test_the_context_is_four_context_vars_set_like_context_middleware() -> None:
    found = {n for n, v in vars(connexion.context).items() if isinstance(v, ContextVar)}
    assert found == {"_context", "_operation", "_receive", "_scope"}
    seen: dict[str, Any] = {}

    async def capture(scope: Any, receive: Any, send: Any) -> None:
        seen.update({n: getattr(connexion.context, n).get() for n in found})

    operation = object()
    scope = {"type": "http", "extensions": {"connexion_context": {"user": "u"}}}

    async def receive() -> Any:
        return {}

    async def theirs() -> dict[str, Any]:
        await ContextOperation(capture, operation=operation)(scope, receive, None)  # type: ignore[arg-type]
        return dict(seen)

    async def ours() -> dict[str, Any]:
        cx.set_context(scope, receive, operation)  # type: ignore[arg-type]
        return {n: getattr(connexion.context, n).get() for n in found}

    assert asyncio.run(theirs()) == asyncio.run(ours())


def test_routing_leaves_path_params_and_the_routing_extension() -> None:
    assert ROUTING_CONTEXT == "connexion_routing"
    original: dict[str, Any] = {"type": "http", "root_path": ""}
    out: dict[str, Any] = {}

    async def capture(scope: Any, receive: Any, send: Any) -> None:
        out.update(scope)

    async def run() -> None:
        routing_scope.set(original)
        op = RoutingOperation("op.id", capture)
        await op({"path_params": {"id": "x"}, "root_path": "/api"}, None, None)  # type: ignore[arg-type]

    asyncio.run(run())
    assert out["path_params"] == {"id": "x"}
    assert out["extensions"][ROUTING_CONTEXT] == {"api_base_path": "/api", "operation_id": "op.id"}


def test_security_check_is_built_in_the_constructor() -> None:
    assert _keywords(SecurityOperation.__init__) >= {
        "next_app", "security_handler_factory", "security", "security_schemes"}
    op = SecurityOperation(None, security_handler_factory=SecurityHandlerFactory(),  # type: ignore[arg-type]
                           security=[], security_schemes={})
    assert inspect.iscoroutinefunction(op.verification_fn)
    assert hasattr(SecurityHandlerFactory(), "security_handlers")
    # The per-request inspect.signature connexion_parts caches.
    assert "_accepts_kwarg" in inspect.getsource(AbstractSecurityHandler._generic_check)


def test_request_validation_pieces() -> None:
    for name in ("extract_content_type", "validate_mime_type", "security_query_params",
                 "_validator_map"):
        assert name in vars(RequestValidationOperation) or name in inspect.getsource(
            RequestValidationOperation.__init__), name
    assert _keywords(ParameterValidator.__init__) == {
        "parameters", "uri_parser", "strict_validation", "security_query_params"}
    assert _keywords(ParameterValidator.validate_request) == {"request"}
    assert _keywords(AbstractRequestBodyValidator.__init__) >= {
        "schema", "required", "nullable", "encoding", "strict_validation"}
    assert _keywords(AbstractRequestBodyValidator.wrap_receive) == {"receive", "scope"}
    assert _keywords(ResponseValidationOperation.__init__) == {
        "next_app", "operation", "validator_map"}


def test_handler_call_pieces() -> None:
    assert _keywords(parameter.get_arguments) == {
        "operation", "path_params", "query_params", "body", "files", "arguments",
        "has_kwargs", "sanitize", "content_type"}
    assert parameter.CONTEXT_NAME == "context_"
    assert callable(parameter._get_val_from_param) and callable(parameter._get_query_defaults)
    # prep_kwargs is what connexion_parts.arguments mirrors: same steps, same order.
    src = inspect.getsource(parameter.prep_kwargs)
    for step in ("get_arguments(", "sanitize(k)", "context.items()", "CONTEXT_NAME"):
        assert step in src, step
    request = ConnexionRequest({"type": "http", "headers": []}, uri_parser=None)
    assert request._path_params is None and request._query_params is None


def test_async_app_invokes_through_the_decorators_we_replace() -> None:
    from connexion.apps.asynchronous import AsyncOperation

    src = inspect.getsource(AsyncOperation)
    assert "StarletteDecorator" in src and "response(scope, receive, send)" in src
    assert isinstance(connexion.AsyncApp("x")._middleware_app, cx.AsyncASGIApp)


def test_loading_and_the_swagger_ui_routes() -> None:
    from tests import pipeline_app

    app = pipeline_app.build()
    compiled = pipeline.prepare(app)
    assert compiled is not None and compiled.disabled_reason is None
    (loader,) = compiled.apis
    assert [op.operation_id for op in loader.ordered][:2] == [
        "tests.pipeline_app.get_item", "tests.pipeline_app.special"]
    assert loader.options["strict_validation"] is True
    paths = cx.swagger_paths(compiled.app)
    assert "/t/openapi.json" in paths and "/t/ui/" in paths, paths


def test_connexion_still_duplicates_path_level_parameters() -> None:
    """OpenAPIOperation extends the spec's own parameter list with the path item's, once
    per loading (validators.CachedParameterValidator checks each parameter once because
    of it). When this fails, Connexion fixed it: the de-duplication can go."""
    from connexion.spec import Specification

    spec = Specification.load({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/x/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "get": {"operationId": "tests.pipeline_app.special", "parameters": [],
                    "responses": {"200": {"description": "ok"}}}}}})
    from connexion.resolver import Resolver

    ops = [spec.operation_cls.from_spec(spec, path="/x/{id}", method="get",
                                        resolver=Resolver()) for _ in range(3)]
    assert len(ops[-1].parameters) == 3
