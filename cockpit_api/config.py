"""Settings: defaults, then a TOML file, then environment variables, then CLI flags.

Example ``cockpit.toml``::

    backend = "libvirt"            # or "sim"

    [server]
    host = "127.0.0.1"
    port = 8080
    cors_origins = ["http://localhost:5173"]   # default ["*"]
    cors_allow_headers = ["X-Trace-Id"]         # added to Authorization, Content-Type, X-Request-Id
    cors_credentials = false       # true needs explicit cors_origins (browsers refuse "*")
    tls_cert = "/etc/cockpit-api/tls.crt"   # PEM; with tls_key, serve HTTPS
    tls_key = "/etc/cockpit-api/tls.key"
    log_format = "json"            # or "text" (default)
    access_log = true              # one line per request (default off)
    metrics_token = "a long random string"   # /metrics then needs it as a bearer token
    trusted_proxies = ["10.0.0.5"]  # X-Forwarded-For/-Proto honoured only from these (default none)

    [auth]
    jwt_secret = "at least 32 bytes of secret ......"   # optional: else generated, in the store
    token_ttl = 3600
    refresh_ttl = 604800
    max_failures_per_user = 5      # login attempts per (user, address) per window
    max_failures_per_address = 50  # login attempts per address per window
    failure_window = 300           # seconds
    password_hash_workers = 2      # threads for scrypt (logins, sandboxes' users), off the loop
    password_hash_cache = 1024     # sandboxes' demo users' hashes kept for reuse (LRU)

    [store]
    url = "postgresql://cockpit:PASSWORD@db.example/cockpit"   # default: sqlite in state_dir
    state_dir = "/var/lib/cockpit-api"   # default: $XDG_STATE_HOME/cockpit-api
    audit_retention_days = 90

    [limits]                       # hostile input (README "Limits")
    max_body_bytes = 1048576       # larger bodies: 413, never read past this
    max_json_depth = 32            # deeper JSON: 400 invalid_json
    body_timeout = 30.0            # seconds to receive a whole body, else 408
    max_header_bytes = 32768       # request line + headers; more: 431 (a URL: 414)
    max_headers = 100              # more header fields: 431
    header_timeout = 10.0          # seconds from a request's first byte to its last header
    keepalive_timeout = 5.0        # an idle connection (new, or between requests) is closed
    max_streams_per_user = 32      # event streams + long polls per user of a world; more: 429
    max_streams = 1000             # ... in all worlds together
    stream_fd_headroom = 128       # file descriptors kept free for other clients (RLIMIT_NOFILE)

    [sim]
    scenario = "default"           # a name in scenarios/ or a file path
    speed = 1.0                    # virtual seconds per real second
    clock_start = 1800000000       # pin the virtual clock's start (Unix s); default: now
    sandbox_max = 100              # how many sandboxes may exist at once (POST /_sim/sandboxes)
    sandbox_ttl = 1800             # default idle lifetime of a sandbox, seconds
    sandbox_vm_budget = 250000     # VMs in all sandboxes together (the large scenario: 100000)

    [libvirt]
    state_file = "/var/lib/cockpit-api/hosts.json"   # stable host ids
    resync_seconds = 30
    sample_seconds = 10
    retention_seconds = 86400

    migration_bandwidth_mib = 0    # cap per migration, MiB/s; 0 = unlimited

    [[hosts]]
    name = "vapor-node-01"
    uri = "qemu+ssh://root@vapor-node-01/system"
    migration_uri = "qemu+tcp://10.0.0.1/system"   # optional: as the peer daemon sees it

    [[users]]
    username = "ops"
    password_hash = "scrypt$16384$8$1$..."   # from `cockpit-api hash-password`
    role = "admin"

Environment: ``COCKPIT_BACKEND``, ``COCKPIT_HOST``, ``COCKPIT_PORT``,
``COCKPIT_SCENARIO``, ``COCKPIT_SPEED``, ``COCKPIT_CLOCK_START``, ``COCKPIT_JWT_SECRET``,
``COCKPIT_TOKEN_TTL``, ``COCKPIT_REFRESH_TTL``, ``COCKPIT_STATE_FILE``,
``COCKPIT_STATE_DIR``, ``COCKPIT_STORE_URL``,
``COCKPIT_TLS_CERT``, ``COCKPIT_TLS_KEY``, ``COCKPIT_LOG_FORMAT``,
``COCKPIT_ACCESS_LOG`` (``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``),
``COCKPIT_METRICS_TOKEN``, ``COCKPIT_SANDBOX_MAX``, ``COCKPIT_SANDBOX_TTL``,
(comma-separated lists) ``COCKPIT_CORS_ORIGINS``, ``COCKPIT_CORS_ALLOW_HEADERS``;
``COCKPIT_CORS_CREDENTIALS`` (a boolean, as above), and one per
``[limits]`` setting: ``COCKPIT_MAX_BODY_BYTES``, ``COCKPIT_MAX_JSON_DEPTH``,
``COCKPIT_BODY_TIMEOUT``, ``COCKPIT_MAX_HEADER_BYTES``, ``COCKPIT_MAX_HEADERS``,
``COCKPIT_HEADER_TIMEOUT``, ``COCKPIT_KEEPALIVE_TIMEOUT``, ``COCKPIT_MAX_STREAMS_PER_USER``,
``COCKPIT_MAX_STREAMS``, ``COCKPIT_STREAM_FD_HEADROOM``; ``COCKPIT_TRUSTED_PROXIES``
(comma-separated). The README's operator
section has them all in one table.

``Settings()`` built in code (tests, embedding) has no state directory and an
in-memory store; ``Settings.load`` (the CLI) fills in the state directory and
the SQLite file in it, see :meth:`Settings.resolve_state`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_INT_LIMITS = ("max_body_bytes", "max_json_depth", "max_header_bytes", "max_headers")
_FLOAT_LIMITS = ("body_timeout", "header_timeout", "keepalive_timeout")


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclass
class HostConfig:
    name: str
    uri: str
    # The URI the *source* libvirtd uses to reach this host in a peer-to-peer
    # migration, when it differs from how we reach it (default: ``uri``).
    migration_uri: str | None = None


@dataclass
class UserConfig:
    username: str
    password_hash: str
    role: str = "viewer"


@dataclass
class Settings:
    backend: str = "sim"
    host: str = "127.0.0.1"
    port: int = 8080
    # Serve operations through cockpit_api/http/pipeline.py (off: Connexion's own stack).
    compiled_pipeline: bool = True
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    # Request headers a browser may send besides the built-in ones (CORS_BASE_HEADERS).
    cors_allow_headers: list[str] = field(default_factory=list)
    cors_credentials: bool = False
    validate_responses: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    log_format: str = "text"  # or "json": one object per line (cockpit_api/ops/logs.py)
    access_log: bool = False
    metrics_token: str | None = None  # None: /metrics is open (like most exporters)
    # Addresses (or networks) whose X-Forwarded-For/-Proto are believed; none by default
    # (uvicorn's own default believes 127.0.0.1, i.e. any local process).
    trusted_proxies: list[str] = field(default_factory=list)
    jwt_secret: str | None = None
    jwt_issuer: str = "cockpit-api"
    jwt_audience: str = "cockpit-api"
    token_ttl: int = 3600
    refresh_ttl: int = 7 * 86400
    max_failures_per_user: int = 5
    max_failures_per_address: int = 50
    failure_window: int = 300
    password_hash_workers: int = 2  # threads for scrypt; bounds the cores logins take
    password_hash_cache: int = 1024  # sandbox users' hashes kept (LRU), by (user, password)
    audit_retention_days: int = 90
    state_dir: str | None = None
    store_url: str | None = None
    scenario: str = "default"
    speed: float = 1.0
    clock_start: float | None = None
    sandbox_max: int = 100
    sandbox_ttl: int = 1800
    sandbox_vm_budget: int = 250_000  # VMs in all sandboxes' scenarios together
    state_file: str = "cockpit-hosts.json"
    resync_seconds: float = 30.0
    sample_seconds: float = 10.0
    retention_seconds: int = 86400
    migration_bandwidth_mib: int = 0  # 0: unlimited
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_streams_per_user: int = 32
    max_streams: int = 1000
    stream_fd_headroom: int = 128
    hosts: list[HostConfig] = field(default_factory=list)
    users: list[UserConfig] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path | None = None, env: dict[str, str] | None = None,
             **overrides: Any) -> Settings:
        s = cls()
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: {exc}") from None
            s._apply_toml(data)
        s._apply_env(os.environ if env is None else env)
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        s._check()
        s.resolve_state(os.environ if env is None else env)
        return s

    def resolve_state(self, env: Any) -> None:
        """The state directory (created 0700) and the store URL, when not given."""
        if self.store_url is not None and self.state_dir is None:
            return  # a database elsewhere: nothing to keep on this disk
        if self.state_dir is None:
            base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            self.state_dir = str(Path(base) / "cockpit-api")
        path = Path(self.state_dir)
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"state directory {path}: {exc.strerror}") from None
        if self.store_url is None:
            from cockpit_api.store import default_url

            self.store_url = default_url(path)

    def _apply_toml(self, data: dict[str, Any]) -> None:
        flat: dict[str, Any] = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        for section in ("server", "auth", "sim", "libvirt", "limits"):
            flat.update(data.get(section, {}))
        store = dict(data.get("store", {}))
        if "url" in store:
            store["store_url"] = store.pop("url")
        flat.update(store)
        known = set(self.__dataclass_fields__) - {"hosts", "users"}
        for key, value in flat.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
            setattr(self, key, value)
        try:
            self.hosts = [HostConfig(**h) for h in data.get("hosts", [])]
            self.users = [UserConfig(**u) for u in data.get("users", [])]
        except TypeError as exc:
            raise ConfigError(f"[[hosts]] takes name and uri; [[users]] takes username, "
                              f"password_hash and role: {exc}") from None

    def _apply_env(self, env: Any) -> None:
        conversions: tuple[tuple[str, Callable[[str], Any]], ...] = (
            ("backend", str), ("host", str), ("port", int), ("scenario", str),
            ("speed", float), ("clock_start", float), ("jwt_secret", str), ("token_ttl", int),
            ("refresh_ttl", int), ("state_file", str), ("tls_cert", str),
            ("tls_key", str), ("log_format", str), ("access_log", _boolean),
            ("metrics_token", str), ("sandbox_max", int), ("sandbox_ttl", int),
            ("cors_origins", _csv), ("cors_allow_headers", _csv), ("cors_credentials", _boolean),
            ("state_dir", str), ("store_url", str), ("max_failures_per_user", int),
            ("max_failures_per_address", int), ("trusted_proxies", _csv),
            ("max_streams_per_user", int), ("max_streams", int), ("stream_fd_headroom", int),
            *((name, int) for name in _INT_LIMITS),
            *((name, float) for name in _FLOAT_LIMITS))
        for key, conv in conversions:
            value = env.get(f"COCKPIT_{key.upper()}")
            if value is not None:
                try:
                    setattr(self, key, conv(value))
                except ValueError:
                    kind = "boolean" if conv is _boolean else getattr(conv, "__name__", "value")
                    raise ConfigError(f"COCKPIT_{key.upper()}={value!r} is not a {kind}") from None

    def _check(self) -> None:
        if self.backend not in ("sim", "libvirt"):
            raise ConfigError(f"backend is 'sim' or 'libvirt', not {self.backend!r}")
        for u in self.users:
            if u.role not in ("admin", "viewer"):
                raise ConfigError(f"user {u.username}: role is admin or viewer")
        if self.token_ttl <= 0 or self.refresh_ttl <= 0:
            raise ConfigError("token lifetimes must be positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both tls_cert and tls_key (PEM files), or neither")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format is 'text' or 'json', not {self.log_format!r}")
        for name in (*_INT_LIMITS, *_FLOAT_LIMITS):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not 0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive number, not {value!r}")
        if not 1 <= self.max_json_depth <= 1000:
            # orjson, which checks bodies, stops at 1024 levels on its own.
            raise ConfigError("max_json_depth must be between 1 and 1000")
        for name in ("max_streams_per_user", "max_streams", "stream_fd_headroom"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, not {value!r}")
        if not isinstance(self.trusted_proxies, list) or not all(
                isinstance(p, str) and _is_address(p) for p in self.trusted_proxies):
            raise ConfigError("trusted_proxies is a list of IP addresses or networks "
                              "(e.g. [\"10.0.0.5\", \"10.1.0.0/16\"])")
        if not 1 <= self.password_hash_workers <= 64 or self.password_hash_cache < 0:
            raise ConfigError("password_hash_workers must be between 1 and 64, "
                              "password_hash_cache >= 0")
        if self.sandbox_max < 0 or self.sandbox_ttl <= 0:
            raise ConfigError("sandbox_max must be >= 0 and sandbox_ttl positive")
        if self.cors_credentials and "*" in self.cors_origins:
            # Browsers refuse credentials with a wildcard origin: name the origins.
            raise ConfigError("cors_credentials needs explicit cors_origins, not \"*\"")


def _is_address(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


_csv.__name__ = "comma-separated list"
