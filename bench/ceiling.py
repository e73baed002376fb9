"""The ceiling of our stack: bare Starlette + uvicorn + the same pyjwt HS256 check.

It answers GET /api/v1/vms with fixed bytes (the mock's own answer to
``GET /api/v1/vms?limit=100``, captured by bench/run.py) after verifying the
bearer token exactly as ``cockpit_api.auth.service.AuthService.verify`` does on a
cache miss: HS256 pinned, audience, issuer, required claims, ``typ`` and
``role``, expiry. No routing table beyond one route, no validation, no
middleware: whatever our server does above this costs is Connexion, the
contract checks and our handler.

    python bench/ceiling.py --port 8099 --body /tmp/vms.json
    # the secret comes from the environment: COCKPIT_BENCH_JWT_SECRET

``--cache`` adds our server's verified-token cache (a dict lookup instead of an
HMAC and a JSON parse per request); off by default, so the ceiling pays the
full check on every request.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ALGORITHM = "HS256"
ISSUER = AUDIENCE = "cockpit-api"
ROLES = ("admin", "viewer")
UNAUTHORIZED = Response(
    b'{"type":"about:blank","title":"Unauthorized","status":401,'
    b'"detail":"the token is not valid","code":"invalid_token"}',
    401, {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    media_type="application/problem+json")


def build_app(body: bytes, secret: str, cache: bool = False) -> Starlette:
    verified: dict[str, dict[str, Any]] = {}

    def check(header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        token = header[7:]
        claims = verified.get(token) if cache else None
        if claims is None:
            try:
                claims = jwt.decode(
                    token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                    options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"],
                             "verify_exp": False, "verify_iat": False})
            except jwt.InvalidTokenError:
                return False
            if claims.get("typ") != "access" or claims.get("role") not in ROLES:
                return False
            if cache:
                verified[token] = claims
        return bool(claims["exp"] > time.time())

    async def list_vms(request: Request) -> Response:
        if not check(request.headers.get("authorization")):
            return UNAUTHORIZED
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/api/v1/vms", list_vms, methods=["GET"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", required=True, help="file with the bytes to answer")
    parser.add_argument("--cache", action="store_true", help="cache verified tokens, like ours")
    args = parser.parse_args()
    secret = os.environ["COCKPIT_BENCH_JWT_SECRET"]
    app = build_app(Path(args.body).read_bytes(), secret, args.cache)
    # The same uvicorn settings as `cockpit-api serve` (auto loop and http: uvloop, httptools).
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)


if __name__ == "__main__":
    main()
