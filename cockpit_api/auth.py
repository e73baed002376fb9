"""Authentication: password hashes, JWT access tokens, rotating refresh tokens, throttling.

Access tokens are HS256 JWTs (the algorithm is pinned: a token saying
``alg: none`` or anything else is refused). Refresh tokens are opaque random
strings stored only as SHA-256 hashes; each refresh rotates them, and
presenting one that was already rotated revokes the whole family (every token
descended from the same login), per the OAuth 2.0 security BCP.

Time comes from an injected clock so that expiry and throttling are tested
without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from cockpit_api.state import services_of

ALGORITHM = "HS256"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
ROLES = ("admin", "viewer")


class AuthError(Exception):
    """401: bad credentials or token. ``status`` lets Connexion pick it as the most specific."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str, code: str = "invalid_token") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


class Forbidden(AuthError):
    status = 403
    title = "Forbidden"


class Throttled(AuthError):
    status = 429
    title = "Too Many Requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, "throttled")
        self.retry_after = retry_after


# ------------------------------------------------------------------ passwords


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` with base64 parts; what config files store."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    params = f"{_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}"
    return f"scrypt${params}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=len(want),
                             n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# A hash to verify against when the user does not exist, so that a wrong
# username costs as long as a wrong password and timing does not tell them apart.
_DUMMY_HASH = hash_password("not a password", salt=b"0123456789abcdef")


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    role: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    token: str
    refresh_token: str
    expires_in: int


@dataclass(slots=True)
class _Refresh:
    family: str
    username: str
    expires_at: float
    used: bool = False


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)


@dataclass
class AuthSettings:
    secret: str
    issuer: str = "cockpit-api"
    audience: str = "cockpit-api"
    token_ttl: int = 3600
    refresh_ttl: int = 7 * 86400
    max_failures_per_user: int = 5
    max_failures_per_address: int = 50
    failure_window: int = 300


class AuthService:
    """Users, tokens and throttling for one app instance."""

    def __init__(self, users: list[User], settings: AuthSettings,
                 clock: Callable[[], float] = time.time) -> None:
        if len(settings.secret.encode()) < 32:
            # RFC 7518 3.2: an HS256 key must be at least 256 bits.
            raise ValueError("the JWT secret must be at least 32 bytes")
        self.users = {u.username: u for u in users}
        self.settings = settings
        self.clock = clock
        self._refresh: dict[str, _Refresh] = {}
        self._families: dict[str, set[str]] = {}
        self._user_failures: dict[str, _Failures] = {}
        self._addr_failures: dict[str, _Failures] = {}
        # Verified access tokens, so a client reusing its token costs one dict
        # lookup instead of an HMAC and a JSON parse per request.
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -------------------------------------------------------------- login

    def login(self, username: str, password: str, client: str) -> TokenPair:
        now, user = self._gate(username, client)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        return self._conclude(user, ok, username, client, now)

    async def login_off_loop(self, username: str, password: str, client: str) -> TokenPair:
        """:meth:`login` with the scrypt check in a worker thread.

        scrypt takes ~30 ms on purpose; on the event loop it would stall every
        other request for that long. Only the pure hash check leaves the loop:
        the throttling and token tables are touched on the loop alone.
        """
        now, user = self._gate(username, client)
        ok = await asyncio.to_thread(verify_password, password,
                                     user.password_hash if user else _DUMMY_HASH)
        return self._conclude(user, ok, username, client, now)

    def _gate(self, username: str, client: str) -> tuple[float, User | None]:
        now = self.clock()
        s = self.settings
        for key, table, limit in ((username, self._user_failures, s.max_failures_per_user),
                                  (client, self._addr_failures, s.max_failures_per_address)):
            wait = self._throttle_wait(table, key, limit, now)
            if wait:
                raise Throttled(f"too many failed logins, retry in {wait} seconds", wait)
        return now, self.users.get(username)

    def _conclude(self, user: User | None, ok: bool, username: str, client: str,
                  now: float) -> TokenPair:
        if user is None or not ok:
            for key, table in ((username, self._user_failures), (client, self._addr_failures)):
                table.setdefault(key, _Failures()).times.append(now)
            raise AuthError("wrong username or password", "bad_credentials")
        self._user_failures.pop(username, None)
        return self._issue(user, uuid.uuid4().hex, now)

    def _throttle_wait(self, table: dict[str, _Failures], key: str, limit: int, now: float) -> int:
        entry = table.get(key)
        if entry is None:
            return 0
        window = self.settings.failure_window
        while entry.times and entry.times[0] <= now - window:
            entry.times.popleft()
        if not entry.times:
            del table[key]
            return 0
        if len(entry.times) < limit:
            return 0
        return max(1, int(entry.times[0] + window - now + 0.999))

    # ------------------------------------------------------------ refresh

    def refresh(self, refresh_token: str) -> TokenPair:
        now = self.clock()
        digest = _digest(refresh_token)
        record = self._refresh.get(digest)
        if record is None or record.expires_at <= now:
            raise AuthError("the refresh token is not valid", "invalid_refresh_token")
        if record.used:
            # A rotated token came back: someone holds a copy. Revoke the family.
            self._revoke_family(record.family)
            raise AuthError("the refresh token was already used; its session is revoked",
                            "refresh_token_reused")
        user = self.users.get(record.username)
        if user is None:
            self._revoke_family(record.family)
            raise AuthError("the user no longer exists", "invalid_refresh_token")
        record.used = True
        return self._issue(user, record.family, now)

    def logout(self, refresh_token: str) -> None:
        record = self._refresh.get(_digest(refresh_token))
        if record is not None:
            self._revoke_family(record.family)

    def _revoke_family(self, family: str) -> None:
        for digest in self._families.pop(family, set()):
            self._refresh.pop(digest, None)

    def _issue(self, user: User, family: str, now: float) -> TokenPair:
        s = self.settings
        iat = int(now)
        claims = {
            "sub": user.username, "role": user.role, "iat": iat, "exp": iat + s.token_ttl,
            "jti": uuid.uuid4().hex, "iss": s.issuer, "aud": s.audience, "typ": "access",
            "sid": family,  # the login session: long-lived streams end when it is logged out
        }
        token = jwt.encode(claims, s.secret, algorithm=ALGORITHM)
        refresh = secrets.token_urlsafe(32)
        digest = _digest(refresh)
        self._refresh[digest] = _Refresh(family, user.username, now + s.refresh_ttl)
        self._families.setdefault(family, set()).add(digest)
        self._sweep(now)
        return TokenPair(token, refresh, s.token_ttl)

    def _sweep(self, now: float) -> None:
        # Bounded memory: drop expired refresh records once in a while.
        if len(self._refresh) % 256 == 0:
            for digest, rec in list(self._refresh.items()):
                if rec.expires_at <= now:
                    self._refresh.pop(digest, None)
                    self._families.get(rec.family, set()).discard(digest)

    # ------------------------------------------------------------- access

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid access token, or :class:`AuthError`."""
        now = self.clock()
        claims = self._verified.get(token)
        if claims is None:
            s = self.settings
            try:
                claims = jwt.decode(
                    token, s.secret, algorithms=[ALGORITHM], audience=s.audience,
                    issuer=s.issuer,
                    # Expiry is checked below against our clock, not pyjwt's.
                    options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"],
                             "verify_exp": False, "verify_iat": False},
                )
            except jwt.InvalidTokenError as exc:
                raise AuthError(f"the token is not valid: {exc}") from None
            if claims.get("typ") != "access" or claims.get("role") not in ROLES:
                raise AuthError("the token is not an access token")
            if len(self._verified) >= 10_000:
                self._verified.popitem(last=False)
            self._verified[token] = claims
        if claims["exp"] <= now:
            self._verified.pop(token, None)
            raise AuthError("the token has expired")
        if claims["sub"] not in self.users:
            raise AuthError("the user no longer exists")
        return claims

    def session_active(self, claims: dict[str, Any]) -> bool:
        """False once the login session the token belongs to was logged out (or revoked)."""
        sid = claims.get("sid")
        return sid is None or sid in self._families


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_info(token: str, request: Any) -> dict[str, Any]:
    """Connexion's ``x-bearerInfoFunc``: the token's claims become ``context['token_info']``."""
    return services_of(request.scope).auth.verify(token)
