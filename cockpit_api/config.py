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
    shutdown_timeout = 3.0         # after SIGTERM, cancel what still runs past it (seconds)

    [auth]
    jwt_secret = "at least 32 bytes of secret ......"   # optional: else generated, in the store
    token_ttl = 3600
    refresh_ttl = 604800
    max_failures_per_user = 5      # login attempts per (user, address) per window
    max_failures_per_address = 50  # login attempts per address per window
    failure_window = 300           # seconds
    password_hash_workers = 2      # threads for scrypt (logins, sandboxes' users), off the loop
    password_hash_cache = 1024     # sandboxes' demo users' hashes kept for reuse (LRU)
    refresh_grace = 10             # s: a retry of a just-rotated refresh token gets a pair, once

    [store]
    url = "postgresql://cockpit:PASSWORD@db.example/cockpit"   # default: sqlite in state_dir
    state_dir = "/var/lib/cockpit-api"   # default: $XDG_STATE_HOME/cockpit-api
    audit_retention_days = 90
    audit_max_rows = 1000000       # newest audit rows kept (0: no cap; age still prunes)
    sandbox_audit_max_rows = 2000  # the same for each sandbox's in-memory log
    audit_reject_window = 60       # s: unauthenticated rejects are one counted row per window

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
    clock_start = 2027-01-15T08:00:00Z   # pin the virtual clock's start (also Unix s, or
                                   # an ISO 8601 string); default: now
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

Every setting has an environment variable, ``COCKPIT_<KEY>`` (``COCKPIT_STORE_URL``
for ``[store] url``), and the ``serve`` flags of :data:`SETTINGS` name theirs. Each value,
from any of the three, is read by its row of :data:`SETTINGS`: the same text means the
same in a flag, a variable and the file (where a TOML number, boolean, array or
datetime may stand for it), and a wrong one is one line naming the key, where it came
from and what is expected (``ConfigError``; the CLI exits 2). The README's operator
section has them all in one table (tests/test_settings.py keeps it true).

``Settings()`` built in code (tests, embedding) has no state directory and an
in-memory store; ``Settings.load`` (the CLI) fills in the state directory and
the SQLite file in it, see :meth:`Settings.resolve_state`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- kinds of values

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Kind:
    """How one setting's value is read, from a string (flag, variable, TOML string) or a
    TOML value; ``parse`` raises ValueError, and ``expected`` says what would do."""

    expected: str

    def parse(self, value: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Kind):
    expected: str = "a string"
    choices: tuple[str, ...] = ()
    optional: bool = False  # an empty string (or nothing) means none

    def parse(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(value)
        if self.optional and not value:
            return None
        if self.choices and value not in self.choices:
            raise ValueError(value)
        return value


@dataclass(frozen=True)
class Number(Kind):
    lo: float = 0
    hi: float = math.inf
    integer: bool = False
    lo_open: bool = False  # lo itself is not allowed (a positive number)
    optional: bool = False

    def parse(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(value)  # TOML true is not 1
        if isinstance(value, str):
            if self.optional and not value.strip():
                return None
            value = float(value.strip()) if not self.integer else _int(value.strip())
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(value)
        if self.integer and value != int(value):
            raise ValueError(value)
        if value < self.lo or (self.lo_open and value == self.lo) or value > self.hi:
            raise ValueError(value)
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Boolean(Kind):
    expected: str = "a boolean (true/false, yes/no, on/off, 1/0)"

    def parse(self, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        word = value.strip().lower() if isinstance(value, str) else None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(value)


@dataclass(frozen=True)
class TextList(Kind):
    expected: str = "a list of strings (comma-separated in a flag or variable)"

    def parse(self, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(value)


@dataclass(frozen=True)
class Instant(Kind):
    """A moment: Unix seconds, an ISO 8601 time (UTC unless it says), a TOML datetime."""

    expected: str = ("Unix seconds or an ISO 8601 time such as 2027-01-15T08:00:00Z, "
                     "between 1970 and 9999")

    def parse(self, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            try:
                value = float(text)
            except ValueError:
                value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        return Number(self.expected, 0, 253402300799).parse(value)


def _int(text: str) -> int:
    """An integer, also written 1e3 or 8080.0 (a float that is whole)."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise
        return int(number)


def _positive(expected: str, integer: bool = False) -> Number:
    return Number(expected, 0, math.inf, integer=integer, lo_open=True)


_SECONDS = _positive("a positive number of seconds")
_COUNT = _positive("a positive integer", integer=True)


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: where it sits in the file, how it is read, and its
    ``serve`` flag if it has one. Its variable is COCKPIT_<KEY> (of the file's key)."""

    section: str | None  # None: top level of the file
    kind: Kind
    flag: str | None = None
    file_key: str | None = None  # in the file, when not the attribute's name
    secret: bool = False  # a wrong value is not quoted back

    def key(self, name: str) -> str:
        return self.file_key or name

    @staticmethod
    def env(name: str) -> str:
        return f"COCKPIT_{name.upper()}"


SETTINGS: dict[str, Setting] = {
    "backend": Setting(None, Text("sim or libvirt", ("sim", "libvirt")), "--backend"),
    "host": Setting("server", Text("an address to listen on"), "--host"),
    "port": Setting("server", Number("a port number from 1 to 65535", 1, 65535, integer=True),
                    "--port"),
    "compiled_pipeline": Setting("server", Boolean()),
    "cors_origins": Setting("server", TextList()),
    "cors_allow_headers": Setting("server", TextList()),
    "cors_credentials": Setting("server", Boolean()),
    "validate_responses": Setting("server", Boolean(), "--validate-responses"),
    "tls_cert": Setting("server", Text("a PEM file's path", optional=True), "--tls-cert"),
    "tls_key": Setting("server", Text("a PEM file's path", optional=True), "--tls-key"),
    "log_format": Setting("server", Text("text or json", ("text", "json")), "--log-format"),
    "access_log": Setting("server", Boolean(), "--access-log"),
    "metrics_token": Setting("server", Text("a string", optional=True), secret=True),
    "trusted_proxies": Setting("server", TextList(
        "a list of IP addresses or networks (comma-separated in a variable)")),
    "shutdown_timeout": Setting("server", Number("a number of seconds from 0 to 3600", 0, 3600),
                                "--shutdown-timeout"),
    "jwt_secret": Setting("auth", Text("a string of 32 bytes or more", optional=True),
                          secret=True),
    "jwt_issuer": Setting("auth", Text()),
    "jwt_audience": Setting("auth", Text()),
    "token_ttl": Setting("auth", _positive("a positive number of seconds", integer=True)),
    "refresh_ttl": Setting("auth", _positive("a positive number of seconds", integer=True)),
    "max_failures_per_user": Setting("auth", _COUNT),
    "max_failures_per_address": Setting("auth", _COUNT),
    "failure_window": Setting("auth", _positive("a positive number of seconds", integer=True)),
    "refresh_grace": Setting("auth", Number("a number of seconds from 0 to 300", 0, 300)),
    "password_hash_workers": Setting("auth", Number("an integer from 1 to 64", 1, 64,
                                                    integer=True)),
    "password_hash_cache": Setting("auth", Number("an integer from 0", 0, integer=True)),
    "audit_retention_days": Setting("store", _COUNT),
    "audit_max_rows": Setting("store", Number("an integer from 0 (no cap)", 0, integer=True)),
    "sandbox_audit_max_rows": Setting("store", Number("an integer from 0 (no cap)", 0,
                                                      integer=True)),
    "audit_reject_window": Setting("store", _positive("a positive number of seconds",
                                                      integer=True)),
    "state_dir": Setting("store", Text("a directory", optional=True), "--state-dir"),
    "store_url": Setting("store", Text("sqlite:///PATH or postgresql://USER:PASS@HOST/DB",
                                       optional=True), "--store", file_key="url", secret=True),
    "scenario": Setting("sim", Text("a scenario name or a YAML file"), "--scenario"),
    "speed": Setting("sim", Number("a number of virtual seconds per real second from 0 "
                                   "(frozen) to 10000", 0, 10000), "--speed"),
    "clock_start": Setting("sim", Instant(), "--clock-start"),
    "sandbox_max": Setting("sim", Number("an integer from 0", 0, integer=True)),
    "sandbox_ttl": Setting("sim", _positive("a positive number of seconds", integer=True)),
    "sandbox_vm_budget": Setting("sim", Number("an integer from 0", 0, integer=True)),
    "state_file": Setting("libvirt", Text("a file's path")),
    "resync_seconds": Setting("libvirt", _SECONDS),
    "sample_seconds": Setting("libvirt", _SECONDS),
    "retention_seconds": Setting("libvirt", _positive("a positive number of seconds",
                                                      integer=True)),
    "migration_bandwidth_mib": Setting("libvirt", Number("MiB/s, an integer from 0 (no cap)",
                                                         0, integer=True)),
    "max_body_bytes": Setting("limits", _positive("a positive number of bytes", integer=True)),
    "max_json_depth": Setting("limits", Number("an integer from 1 to 1000", 1, 1000,
                                               integer=True)),
    "body_timeout": Setting("limits", _SECONDS),
    "max_header_bytes": Setting("limits", _positive("a positive number of bytes",
                                                    integer=True)),
    "max_headers": Setting("limits", _COUNT),
    "header_timeout": Setting("limits", _SECONDS),
    "keepalive_timeout": Setting("limits", _SECONDS),
    "max_streams_per_user": Setting("limits", Number("an integer from 0", 0, integer=True)),
    "max_streams": Setting("limits", Number("an integer from 0", 0, integer=True)),
    "stream_fd_headroom": Setting("limits", Number("an integer from 0", 0, integer=True)),
}
SECTIONS = ("server", "auth", "sim", "libvirt", "limits", "store")


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
    # After SIGTERM/Ctrl-C: event streams end at once; requests still running after this
    # many seconds are cancelled, so the process exits in bounded time (README).
    shutdown_timeout: float = 3.0
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
    audit_max_rows: int = 1_000_000  # 0: no cap on rows
    sandbox_audit_max_rows: int = 2000
    audit_reject_window: int = 60  # seconds
    refresh_grace: float = 10.0  # seconds; 0: a replaced refresh token is always reuse
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
    def rows(cls) -> dict[str, Setting]:
        """Every setting's row in :data:`SETTINGS` (a field without one is a KeyError:
        tests/test_settings.py names it)."""
        return {f.name: SETTINGS[f.name] for f in dataclasses.fields(cls)
                if f.name not in ("hosts", "users")}

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None,
             flags: Mapping[str, str | None] | None = None, *, create_state: bool = True,
             **overrides: Any) -> Settings:
        """Defaults, then the file, then the environment, then ``flags`` (the text of the
        ``serve`` flags given, by setting name), then ``overrides`` (typed values)."""
        s = cls()
        env = os.environ if env is None else env
        rows = cls.rows()
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {path}: {exc}") from None
            s._apply_toml(data, rows, str(path))
        for name, row in rows.items():
            value = env.get(row.env(name))
            if value is not None:
                s._set(name, row, value, row.env(name))
        for name, value in (flags or {}).items():
            if value is not None:
                s._set(name, rows[name], value, rows[name].flag or name)
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        s._check()
        s.resolve_state(env, create=create_state)
        return s

    def _set(self, name: str, row: Setting, value: Any, source: str) -> None:
        try:
            setattr(self, name, row.kind.parse(value))
        except (ValueError, TypeError, OverflowError):
            raise ConfigError(f"{row.key(name)} from {source}: expected {row.kind.expected}, "
                              f"got {_shown(value, row.secret)}") from None

    def resolve_state(self, env: Any, *, create: bool = True) -> None:
        """The state directory (created 0700; an existing one must be private) and the
        store URL, when not given. ``create=False``: a missing directory is left missing
        (``rotate-key`` then says there is no store, rather than making an empty one)."""
        if self.store_url is not None and self.state_dir is None:
            return  # a database elsewhere: nothing to keep on this disk
        if self.state_dir is None:
            base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
            self.state_dir = str(Path(base) / "cockpit-api")
        path = Path(self.state_dir)
        if create or path.exists():
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"state directory {path}: {exc.strerror}") from None
            from cockpit_api.store.statedir import check_private

            check_private(path)  # StoreError: one line, exit 2
        if self.store_url is None:
            from cockpit_api.store import default_url

            self.store_url = default_url(path)

    def _apply_toml(self, data: dict[str, Any], rows: dict[str, Setting], path: str) -> None:
        by_key = {row.key(name): name for name, row in rows.items()}
        found: list[tuple[str, Any, str]] = []
        for key, value in data.items():
            if key in ("hosts", "users"):
                continue
            if key in SECTIONS and isinstance(value, dict):
                found += [(k, v, f"{path} [{key}]") for k, v in value.items()]
            elif isinstance(value, dict):
                raise ConfigError(f"{path}: unknown section [{key}] (sections: "
                                  f"{', '.join(SECTIONS)})")
            else:
                found.append((key, value, path))
        for key, value, source in found:
            name = by_key.get(key)
            if name is None:
                raise ConfigError(f"{source}: unknown setting {key!r}")
            self._set(name, rows[name], value, source)
        try:
            self.hosts = [HostConfig(**h) for h in data.get("hosts", [])]
            self.users = [UserConfig(**u) for u in data.get("users", [])]
        except TypeError as exc:
            raise ConfigError(f"[[hosts]] takes name and uri; [[users]] takes username, "
                              f"password_hash and role: {exc}") from None

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
        # (max_json_depth stops at 1000 in SETTINGS: orjson, which checks bodies, stops at
        # 1024 levels on its own.)
        if not all(_is_address(p) for p in self.trusted_proxies):
            raise ConfigError("trusted_proxies is a list of IP addresses or networks "
                              "(e.g. [\"10.0.0.5\", \"10.1.0.0/16\"])")
        if self.sandbox_max < 0 or self.sandbox_ttl <= 0:
            raise ConfigError("sandbox_max must be >= 0 and sandbox_ttl positive")
        if min(self.audit_max_rows, self.sandbox_audit_max_rows) < 0 or \
                self.audit_reject_window <= 0 or not 0 <= self.refresh_grace <= 300:
            raise ConfigError("audit_max_rows and sandbox_audit_max_rows must be >= 0, "
                              "audit_reject_window positive, refresh_grace 0..300 s")
        if self.cors_credentials and "*" in self.cors_origins:
            # Browsers refuse credentials with a wildcard origin: name the origins.
            raise ConfigError("cors_credentials needs explicit cors_origins, not \"*\"")


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _shown(value: Any, secret: bool) -> str:
    """The wrong value, for the message: short, and never a secret."""
    if secret:
        return "a value that is not shown (it may be a secret)"
    text = repr(value)
    return text if len(text) <= 42 else text[:40] + "…"
