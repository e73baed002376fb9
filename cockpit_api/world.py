"""One world's services, built from settings: the app's default world and every sandbox.

A world is a backend, an auth service (users, sessions, throttling, its JWT keys) and the
:class:`~cockpit_api.state.Services` that carry them in each request's scope.
:func:`build_services` is the one place that turns :class:`~cockpit_api.config.Settings`
into them (``create_app`` and ``SandboxRegistry.create`` both call it), so a setting
reaches every world alike. :func:`build_backend` builds the configured backend: the
backends import nothing from the server, so reading settings for them happens here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cockpit_api.auth.service import AuthService, AuthSettings, HashPool, SharedThrottle, User
from cockpit_api.backends.base import Backend
from cockpit_api.backends.sim import SimulatedBackend, VirtualClock
from cockpit_api.backends.sim import scenario as scenarios
from cockpit_api.config import ConfigError, Settings
from cockpit_api.ops.prometheus import Metrics
from cockpit_api.state import Services
from cockpit_api.store import Store

if TYPE_CHECKING:
    from cockpit_api.backends.libvirt import LibvirtBackend


def auth_settings(settings: Settings, secret: str | None) -> AuthSettings:
    """The auth service's settings; ``secret`` None: keys generated once in the store."""
    s = settings
    return AuthSettings(
        secret, issuer=s.jwt_issuer, audience=s.jwt_audience, token_ttl=s.token_ttl,
        refresh_ttl=s.refresh_ttl, max_failures_per_user=s.max_failures_per_user,
        max_failures_per_address=s.max_failures_per_address, failure_window=s.failure_window,
        audit_retention=s.audit_retention_days * 86400, refresh_grace=s.refresh_grace)


def build_services(settings: Settings, backend: Backend, users: list[User], *,
                   clock: Callable[[], float], metrics: Metrics, secret: str | None,
                   store: Store | None = None, sandbox_id: str | None = None,
                   hasher: HashPool | None = None,
                   throttle: SharedThrottle | None = None) -> Services:
    """A world: ``backend`` and an auth service for ``users`` (``store`` None: in memory;
    ``hasher`` and ``throttle``: the server's, shared by every world)."""
    auth = AuthService(users, auth_settings(settings, secret), clock=clock, store=store,
                       hasher=hasher, throttle=throttle)
    return Services(backend, auth, settings, metrics, store=store, sandbox_id=sandbox_id)


def sim_backend(settings: Settings, sc: scenarios.Scenario | None = None,
                clock_start: float | None = None, speed: float | None = None) -> SimulatedBackend:
    """The simulator on ``sc`` (default: the configured scenario), its clock from settings."""
    if clock_start is None:
        clock_start = settings.clock_start or float(int(time.time()))
    clock = VirtualClock(clock_start, speed=settings.speed if speed is None else speed)
    return SimulatedBackend(sc if sc is not None else scenarios.load(settings.scenario), clock)


def build_backend(settings: Settings, store: Store | None = None, **overrides: Any) -> Backend:
    """The configured backend; ``overrides``: the libvirt backend's tuning (tests)."""
    if settings.backend == "sim":
        return sim_backend(settings)
    return libvirt_backend(settings, store, **overrides)


def libvirt_backend(settings: Settings, store: Store | None = None,
                    **overrides: Any) -> LibvirtBackend:
    """The libvirt backend over the configured hosts (``ConfigError`` if it cannot be)."""
    try:
        # Imported here, not above: libvirt-python is an optional extra (not to dodge a
        # circle); the simulator serves without it.
        from cockpit_api.backends.libvirt import LibvirtBackend
        from cockpit_api.backends.libvirt.hostids import HostIdError
    except ImportError as exc:
        raise ConfigError(
            "the libvirt backend needs libvirt-python: pip install -e '.[libvirt]' "
            f"(it builds against Debian's libvirt-dev) ({exc})") from None
    if not settings.hosts:
        raise ConfigError("the libvirt backend needs at least one [[hosts]] entry "
                          "(name, uri, optional migration_uri)")
    kwargs: dict[str, Any] = {
        "state_file": settings.state_file,
        "resync_seconds": settings.resync_seconds,
        "sample_seconds": settings.sample_seconds,
        "retention_seconds": settings.retention_seconds,
        "migration_bandwidth_mib": settings.migration_bandwidth_mib,
        "store": store,
    }
    kwargs.update(overrides)
    try:
        return LibvirtBackend(settings.hosts, **kwargs)
    except HostIdError as exc:
        raise ConfigError(str(exc)) from None
