"""Cluster backends: one interface (:mod:`backends.base`), two implementations.

``backends.sim`` is the simulated cluster; ``backends.libvirt`` drives real
libvirt hosts and is only importable with the ``libvirt`` extra installed.
"""

from backends.base import (
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
