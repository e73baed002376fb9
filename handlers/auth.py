"""auth: login, refresh, logout."""

from __future__ import annotations

import asyncio

from connexion import context, request
from starlette.responses import Response

from cockpit_api.auth.service import TokenPair
from cockpit_api.handlers._common import Json, cached, iso, no_content, ok, services
from cockpit_api.state import audit_note


def _pair(pair: TokenPair) -> Response:
    return ok({"token": pair.token, "refresh_token": pair.refresh_token,
               "expires_in": pair.expires_in},
              headers={"Cache-Control": "no-store"})


async def login(body: Json) -> Response:
    client = request.client.host if request.client else "unknown"
    audit_note(request.scope, actor=body["username"])  # the audit log names who tried
    pair = await services().auth.login_off_loop(body["username"], body["password"], client)
    audit_note(request.scope, role=pair.role)
    return _pair(pair)


async def refresh(body: Json) -> Response:
    pair = await asyncio.to_thread(services().auth.refresh, body["refresh_token"])
    audit_note(request.scope, actor=pair.username, role=pair.role)
    return _pair(pair)


async def logout(body: Json) -> Response:
    username = await asyncio.to_thread(services().auth.logout, body["refresh_token"])
    if username is not None:
        audit_note(request.scope, actor=username)
    return no_content()


async def get_me() -> Response:
    info = context.context.get("token_info") or {}
    return cached({"username": info["sub"], "role": info["role"],
                   "expires_at": iso(info["exp"])}, headers={"Cache-Control": "no-store"})
