"""Cluster backends: one interface (:mod:`cockpit_api.backends.base`), two implementations.

``cockpit_api.backends.sim`` is the simulated cluster; ``cockpit_api.backends.libvirt``
drives real libvirt hosts and is only importable with the ``libvirt`` extra installed.
"""

from cockpit_api.backends.base import (
    Backend,
    BackendError,
    Conflict,
    InvalidArgument,
    NotFound,
    NotSupported,
    Unavailable,
)

__all__ = [
    "Backend",
    "BackendError",
    "Conflict",
    "InvalidArgument",
    "NotFound",
    "NotSupported",
    "Unavailable",
]
