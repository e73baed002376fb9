"""Authentication: password hashes, JWT access tokens, rotating refresh tokens, throttling.

Access tokens are HS256 JWTs (the algorithm is pinned: a token saying
``alg: none`` or anything else is refused), signed by a key named in the
header's ``kid``: the configured secret, or keys generated once and kept in the
store (old keys verify until their tokens expire). Every access token carries
its session's ``sid``; logging out (or reuse of a refresh token) revokes the
session, and access tokens of a revoked session are refused at once on this
replica and within ``revocation_poll`` seconds on the others.

Refresh tokens are ``<family>.<secret>``: the store keeps only the SHA-256 of a
family's current token, and each refresh rotates it. A token of a live family
that is not its current one was already spent: someone holds a copy, and the
whole session is revoked (OAuth 2.0 security BCP). Spent tokens are not kept,
except the digest of the one the last refresh replaced, for ``refresh_grace``
seconds: a retry of a refresh whose answer was lost gets a new pair, once.

Throttling (OWASP): every attempt is counted in the store *before* the password
is checked, atomically, per (user, address) and per address. A user's failures
from one address never block that user elsewhere; the per-address limit bounds
password spraying. Configured users (``[[users]]``) exist in every world (the
sandboxes too): their attempts are counted in the default world's store whatever
world is asked (:class:`SharedThrottle`), and a sandbox's reset leaves them alone.

scrypt runs in a few threads of a :class:`HashPool` shared by every world, never on
the event loop: a burst of logins waits for those threads, other clients do not.

Sessions, keys and counters live in the store, so they survive a restart and
are shared by replicas; the token check itself reads only memory. Time comes
from an injected clock so that expiry and throttling are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt

from cockpit_api.store import KEYS_CHANGED, MEMORY_URL, Session, Store, StoreUnavailable, open_store

ALGORITHM = "HS256"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
ROLES = ("admin", "viewer")
log = logging.getLogger("cockpit_api.auth.service")
T = TypeVar("T")


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


class HashPool:
    """A few threads for scrypt (and the logins around it), shared by every world.

    ``hashlib.scrypt`` releases the GIL, so the event loop keeps serving while these
    threads hash; their number bounds how many cores a burst of logins can take
    (``password_hash_workers``). Threads start at the first use and stop at
    :meth:`close` (the app's shutdown); a later use starts them again.
    """

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError("a hash pool needs at least one worker")
        self.workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.workers, thread_name_prefix="cockpit-scrypt")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class SharedThrottle:
    """Where the attempts on these usernames are counted, whatever world is asked."""

    store: Store
    usernames: frozenset[str]


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
    username: str = ""  # whose session (for the audit log; not sent)
    role: str = ""


@dataclass
class AuthSettings:
    secret: str | None  # a configured HS256 key; None: keys generated once, kept in the store
    issuer: str = "cockpit-api"
    audience: str = "cockpit-api"
    token_ttl: int = 3600
    refresh_ttl: int = 7 * 86400
    # Attempts allowed per window before 429: per (user, address), and per address.
    max_failures_per_user: int = 5
    max_failures_per_address: int = 50
    failure_window: int = 300
    # How stale another replica's view of logouts may be, in seconds.
    revocation_poll: float = 1.0
    # Clock difference tolerated between replicas on ``exp``.
    leeway: int = 30
    # How long audit entries are kept (the upkeep below prunes them too).
    audit_retention: int = 90 * 86400
    # Seconds after a rotation in which a retry of the replaced refresh token (its answer
    # was lost) gets a new pair once, instead of revoking the session as reuse; 0: never.
    refresh_grace: float = 10.0


def _config_kid(secret: str) -> str:
    return "cfg-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Counters of configured users' attempts: ``cu:`` (user, address) and ``ca:`` (address).
# A simulator's reset (POST /_sim/reset) keeps them: they guard real passwords.
CONFIGURED_PREFIX = "c"


def _key(kind: str, value: str) -> str:
    # Throttle keys come from user input: long ones are hashed to a fixed size.
    return f"{kind}:{value}" if len(value) <= 200 else f"{kind}#:{_digest(value)}"


class AuthService:
    """Users, tokens and throttling for one app instance, over the store."""

    def __init__(self, users: list[User], settings: AuthSettings,
                 clock: Callable[[], float] = time.time, store: Store | None = None, *,
                 hasher: HashPool | None = None,
                 throttle: SharedThrottle | None = None) -> None:
        if settings.secret is not None and len(settings.secret.encode()) < 32:
            # RFC 7518 3.2: an HS256 key must be at least 256 bits.
            raise ValueError("the JWT secret must be at least 32 bytes")
        self.users = {u.username: u for u in users}
        self.settings = settings
        self.clock = clock
        self.store = store if store is not None else open_store(MEMORY_URL)
        self.hasher = hasher
        self._throttle = throttle
        self._keys: dict[str, str] = {}
        self._current_kid = ""
        self._keys_loaded_at = -math.inf
        self._load_keys()
        # sid -> revoked_at: access tokens of these sessions are refused.
        self._revoked: dict[str, float] = {}
        self._revoked_since = self.clock() - settings.token_ttl - settings.leeway
        self._store_down = False
        self._keys_changed: str | None = None
        # Verified access tokens, so a client reusing its token costs one dict
        # lookup instead of an HMAC and a JSON parse per request.
        self._verified: OrderedDict[str, dict[str, Any]] = OrderedDict()
        with contextlib.suppress(StoreUnavailable):
            if settings.secret is None:
                self._keys_changed = self.store.kv_get(KEYS_CHANGED)
            self.poll_revocations()
        self._task: asyncio.Task[None] | None = None

    # --------------------------------------------------------------- keys

    def _load_keys(self) -> None:
        secret = self.settings.secret
        if secret is not None:
            self._current_kid = _config_kid(secret)
            self._keys = {self._current_kid: secret}
            return
        current = self.store.current_signing_key(self.clock())
        self._keys = {k.kid: k.secret for k in self.store.signing_keys()}
        self._keys[current.kid] = current.secret
        self._current_kid = current.kid
        self._keys_loaded_at = time.monotonic()

    def rotate_key(self) -> str:
        """A new signing key for new tokens; tokens signed before verify until they expire."""
        if self.settings.secret is not None:
            raise ValueError("the signing key is configured (jwt_secret): rotate it there")
        s = self.settings
        # Other processes switch to the new key at their next upkeep (prune, every
        # minute): until then they still sign with this one, hence the extra minute.
        self.store.rotate_signing_key(self.clock(),
                                      self.clock() + s.token_ttl + s.leeway + 120)
        self._load_keys()
        return self._current_kid

    def current_kid(self) -> str:
        """The kid that signs new tokens, as the store says now."""
        if self.settings.secret is None:
            self._load_keys()
        return self._current_kid

    def revoke_key(self, kid: str) -> bool:
        """Retire a (leaked) key at once: tokens it signed are refused everywhere, within
        a revocation poll (a second). False: no such key in the store."""
        if self.settings.secret is not None:
            raise ValueError("the signing key is configured (jwt_secret): change it there")
        return self.store.revoke_signing_key(kid, self.clock())

    def _poll_keys(self) -> None:
        """Drop the keys revoked elsewhere (``rotate-key --revoke``), and the tokens they
        signed from the verified-token cache."""
        if self.settings.secret is not None:
            return
        changed = self.store.kv_get(KEYS_CHANGED)
        if changed != self._keys_changed:
            self._keys_changed = changed
            self._load_keys()
            self._verified.clear()

    def _key_for(self, kid: str | None) -> str | None:
        if kid is None:
            return self._keys.get(self._current_kid)
        key = self._keys.get(kid)
        if key is None and self.settings.secret is None and \
                time.monotonic() - self._keys_loaded_at > 5:
            # Maybe another replica rotated; look again, at most every 5 s.
            with contextlib.suppress(StoreUnavailable):
                self._load_keys()
            key = self._keys.get(kid)
        return key

    # -------------------------------------------------------------- login

    def login(self, username: str, password: str, client: str) -> TokenPair:
        """Blocking (the store, then scrypt): call it from a worker thread."""
        s = self.settings
        now = self.clock()
        counters, kinds = self.store, ("u", "a")
        if self._throttle is not None and username in self._throttle.usernames:
            # One count for a configured user in all worlds, which no reset clears.
            counters, kinds = self._throttle.store, ("cu", "ca")
        pair_key, addr_key = _key(kinds[0], f"{username}|{client}"), _key(kinds[1], client)
        # Counted before the password is looked at, atomically: a burst of
        # concurrent attempts cannot check more passwords than the limit.
        per_pair, per_addr = counters.count_attempts([pair_key, addr_key], now,
                                                     s.failure_window)
        waits = [math.ceil(c.window_start + s.failure_window - now)
                 for c, limit in ((per_pair, s.max_failures_per_user),
                                  (per_addr, s.max_failures_per_address))
                 if c.count > limit]
        if waits:
            wait = max(1, *waits)
            raise Throttled(f"too many failed logins, retry in {wait} seconds", wait)
        user = self.users.get(username)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not ok:
            raise AuthError("wrong username or password", "bad_credentials")
        # Not a failure after all: this pair starts over, the address gets its attempt back.
        counters.forgive(clear=[pair_key], decrement=[addr_key])
        family, sid = secrets.token_urlsafe(18), uuid.uuid4().hex
        refresh = f"{family}.{secrets.token_urlsafe(32)}"
        self.store.create_session(Session(family, sid, user.username, now, now + s.refresh_ttl),
                                  _digest(refresh))
        return TokenPair(self._access_token(user, sid, now), refresh, s.token_ttl,
                         user.username, user.role)

    async def login_off_loop(self, username: str, password: str, client: str) -> TokenPair:
        """:meth:`login` in a worker thread (of the hash pool, when there is one): scrypt
        takes ~40 ms on purpose, the store a bit."""
        if self.hasher is not None:
            return await self.hasher.run(self.login, username, password, client)
        return await asyncio.to_thread(self.login, username, password, client)

    def reset_throttling(self) -> None:
        """This world's counters of its scenario's users; configured users' stay."""
        self.store.reset_throttling(keep_prefix=CONFIGURED_PREFIX)

    # ------------------------------------------------------------ refresh

    def refresh(self, refresh_token: str) -> TokenPair:
        s = self.settings
        now = self.clock()
        family, dot, _ = refresh_token.partition(".")
        if not dot or not family:
            raise AuthError("the refresh token is not valid", "invalid_refresh_token")
        new = f"{family}.{secrets.token_urlsafe(32)}"
        rot = self.store.rotate_refresh(family, _digest(refresh_token), _digest(new), now,
                                        now + s.refresh_ttl, grace=s.refresh_grace)
        if rot.outcome == "reused":
            # A spent token came back: someone holds a copy. The session is revoked.
            if rot.session is not None:
                self._revoked[rot.session.sid] = now
            raise AuthError("the refresh token was already used; its session is revoked",
                            "refresh_token_reused")
        if rot.outcome not in ("rotated", "retried") or rot.session is None:
            raise AuthError("the refresh token is not valid", "invalid_refresh_token")
        if rot.outcome == "retried":
            log.info("refresh retried within the grace: session %s continues", rot.session.sid)
        user = self.users.get(rot.session.username)
        if user is None:
            self._revoke(family, now, "user_removed")
            raise AuthError("the user no longer exists", "invalid_refresh_token")
        return TokenPair(self._access_token(user, rot.session.sid, now), new, s.token_ttl,
                         user.username, user.role)

    def logout(self, refresh_token: str) -> str | None:
        """End the token's session: its refresh token and its access tokens. Whose it was."""
        family, dot, _ = refresh_token.partition(".")
        if dot and family:
            return self._revoke(family, self.clock(), "logout")
        return None

    def _revoke(self, family: str, now: float, reason: str) -> str | None:
        session = self.store.revoke_session(family, now, reason)
        if session is None:
            return None
        self._revoked[session.sid] = now
        return session.username

    def _access_token(self, user: User, sid: str, now: float) -> str:
        s = self.settings
        iat = int(now)
        claims = {
            "sub": user.username, "role": user.role, "iat": iat, "exp": iat + s.token_ttl,
            "jti": uuid.uuid4().hex, "sid": sid, "iss": s.issuer, "aud": s.audience,
            "typ": "access",
        }
        kid = self._current_kid
        return jwt.encode(claims, self._keys[kid], algorithm=ALGORITHM, headers={"kid": kid})

    # -------------------------------------------------------- revocations

    def poll_revocations(self) -> None:
        """Learn the sessions other replicas revoked (blocking: a worker thread)."""
        # Overlap the last poll: revocations committed late, clocks a little apart.
        since = self._revoked_since - 2 * self.settings.leeway
        for sid, at in self.store.revocations_since(since):
            self._revoked[sid] = at
            self._revoked_since = max(self._revoked_since, at)
        self._poll_keys()

    def prune(self) -> None:
        """Bounded tables: sessions, counters and the revoked set forget what is over."""
        s = self.settings
        now = self.clock()
        keep = s.token_ttl + s.leeway  # an access token of a revoked session may live as long
        self.store.prune_sessions(now, keep_revoked=keep)
        self.store.prune_throttling(now - s.failure_window)
        self.store.prune_audit(now - s.audit_retention)
        if s.secret is None:
            self._load_keys()  # a key rotated elsewhere (cockpit-api rotate-key, a replica)
        self._revoked = {sid: at for sid, at in self._revoked.items() if at > now - keep}

    async def run(self, prune_every: float = 60.0) -> None:
        """Background upkeep (started by the app's lifespan): poll revocations, prune."""
        last_prune = -math.inf
        while True:
            try:
                await asyncio.to_thread(self.poll_revocations)
                if time.monotonic() - last_prune >= prune_every:
                    last_prune = time.monotonic()
                    await asyncio.to_thread(self.prune)
                if self._store_down:
                    log.warning("the store is back")
                self._store_down = False
            except StoreUnavailable:
                if not self._store_down:
                    log.error("the store is unreachable: tokens still verify, logins wait")
                self._store_down = True
            await asyncio.sleep(self.settings.revocation_poll)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------- access

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid access token, or :class:`AuthError`. Memory only: no store."""
        now = self.clock()
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token, now)
            if len(self._verified) >= 10_000:
                self._verified.popitem(last=False)
            self._verified[token] = claims
        if claims["exp"] <= now:
            self._verified.pop(token, None)
            raise AuthError("the token has expired")
        if claims["sid"] in self._revoked:
            raise AuthError("the session has ended (logged out or revoked)")
        if claims["sub"] not in self.users:
            raise AuthError("the user no longer exists")
        return claims

    def _decode(self, token: str, now: float) -> dict[str, Any]:
        s = self.settings
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._key_for(kid if isinstance(kid, str) else None)
            if key is None:
                raise AuthError("the token is not valid: unknown signing key")
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=s.audience, issuer=s.issuer,
                # Expiry is checked below against our clock, not pyjwt's.
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud", "sid"],
                         "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}") from None
        if claims.get("typ") != "access" or claims.get("role") not in ROLES:
            raise AuthError("the token is not an access token")
        exp, iat = claims["exp"], claims["iat"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (exp, iat)):
            raise AuthError("the token is not valid: exp and iat must be numbers")
        if exp > now + s.token_ttl + s.leeway or exp - iat > s.token_ttl:
            # We never issue those: a token that lives longer than the lifetime is forged
            # with a leaked key, or from another deployment.
            raise AuthError("the token is not valid: it outlives the token lifetime")
        if not isinstance(claims["sid"], str) or not isinstance(claims["sub"], str):
            raise AuthError("the token is not valid: sid and sub must be strings")
        return claims

    def session_active(self, claims: dict[str, Any]) -> bool:
        """False once the login session the token belongs to was logged out (or revoked).

        For long-lived streams, which verified their token once at the start.
        """
        sid = claims.get("sid")
        return sid is None or sid not in self._revoked

    def actor(self, token: str) -> dict[str, Any] | None:
        """The claims of a token if it verifies, else None (for the audit log)."""
        try:
            return self.verify(token)
        except AuthError:
            return None
