"""Settings: defaults, then a TOML file, then environment variables, then CLI flags.

Example ``cockpit.toml``::

    backend = "libvirt"            # or "sim"

    [server]
    host = "127.0.0.1"
    port = 8080
    cors_origins = ["http://localhost:5173"]

    [auth]
    jwt_secret = "at least 32 bytes of secret ......"
    token_ttl = 3600
    refresh_ttl = 604800

    [sim]
    scenario = "default"           # a name in scenarios/ or a file path
    speed = 1.0                    # virtual seconds per real second

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
``COCKPIT_SCENARIO``, ``COCKPIT_SPEED``, ``COCKPIT_JWT_SECRET``,
``COCKPIT_TOKEN_TTL``, ``COCKPIT_REFRESH_TTL``, ``COCKPIT_STATE_FILE``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    # Serve operations through cockpit_api/pipeline.py (off: Connexion's own per-request stack).
    compiled_pipeline: bool = True
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    validate_responses: bool = False
    jwt_secret: str | None = None
    jwt_issuer: str = "cockpit-api"
    jwt_audience: str = "cockpit-api"
    token_ttl: int = 3600
    refresh_ttl: int = 7 * 86400
    max_failures_per_user: int = 5
    max_failures_per_address: int = 50
    scenario: str = "default"
    speed: float = 1.0
    clock_start: float | None = None
    state_file: str = "cockpit-hosts.json"
    resync_seconds: float = 30.0
    sample_seconds: float = 10.0
    retention_seconds: int = 86400
    migration_bandwidth_mib: int = 0  # 0: unlimited
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
        return s

    def _apply_toml(self, data: dict[str, Any]) -> None:
        flat: dict[str, Any] = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        for section in ("server", "auth", "sim", "libvirt"):
            flat.update(data.get(section, {}))
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
        for key, conv in (("backend", str), ("host", str), ("port", int), ("scenario", str),
                          ("speed", float), ("jwt_secret", str), ("token_ttl", int),
                          ("refresh_ttl", int), ("state_file", str)):
            value = env.get(f"COCKPIT_{key.upper()}")
            if value is not None:
                try:
                    setattr(self, key, conv(value))
                except ValueError:
                    raise ConfigError(
                        f"COCKPIT_{key.upper()}={value!r} is not a {conv.__name__}") from None

    def _check(self) -> None:
        if self.backend not in ("sim", "libvirt"):
            raise ConfigError(f"backend is 'sim' or 'libvirt', not {self.backend!r}")
        for u in self.users:
            if u.role not in ("admin", "viewer"):
                raise ConfigError(f"user {u.username}: role is admin or viewer")
        if self.token_ttl <= 0 or self.refresh_ttl <= 0:
            raise ConfigError("token lifetimes must be positive")
