"""auth: login, refresh, logout."""

from __future__ import annotations

from connexion import context, request
from starlette.responses import Response

from cockpit_api.auth import TokenPair
from handlers._common import Json, iso, no_content, ok, services


def _pair(pair: TokenPair) -> Response:
    return ok({"token": pair.token, "refresh_token": pair.refresh_token,
               "expires_in": pair.expires_in},
              headers={"Cache-Control": "no-store"})


async def login(body: Json) -> Response:
    client = request.client.host if request.client else "unknown"
    pair = await services().auth.login_off_loop(body["username"], body["password"], client)
    return _pair(pair)


async def refresh(body: Json) -> Response:
    return _pair(services().auth.refresh(body["refresh_token"]))


async def logout(body: Json) -> Response:
    services().auth.logout(body["refresh_token"])
    return no_content()


async def get_me() -> Response:
    info = context.context.get("token_info") or {}
    return ok({"username": info["sub"], "role": info["role"], "expires_at": iso(info["exp"])},
              headers={"Cache-Control": "no-store"})
