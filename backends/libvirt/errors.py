"""libvirt errors as domain errors: the one place that reads libvirt error codes.

Like Nova's ``host.py`` (whose ``_get_domain`` is the one spot that turns
``VIR_ERR_NO_DOMAIN`` into ``InstanceNotFound``), every ``libvirtError`` the
libvirt backend meets goes through :func:`translate` and leaves as a
:class:`~cockpit_api.backends.base.BackendError`; handlers never see a ``libvirtError``.

=====================================================  ============================
libvirt                                                domain error (HTTP)
=====================================================  ============================
VIR_ERR_NO_DOMAIN                                      NotFound ``vm_not_found`` (404)
VIR_ERR_OPERATION_INVALID                              Conflict (409): ``vm_not_running``,
                                                       ``vm_running`` or ``operation_invalid``
VIR_ERR_OPERATION_ABORTED (a cancelled job)            Conflict ``operation_aborted`` (409)
VIR_ERR_DOM_EXIST                                      Conflict ``vm_exists`` (409)
VIR_ERR_NO_SUPPORT, VIR_ERR_OPERATION_UNSUPPORTED,     NotSupported ``not_supported`` (501)
VIR_ERR_ARGUMENT_UNSUPPORTED
VIR_ERR_OPERATION_TIMEOUT, VIR_ERR_AGENT_UNRESPONSIVE  Unavailable ``host_busy`` (503)
connection errors (system, RPC, auth; VIR_FROM_RPC)    Unavailable ``host_disconnected`` (503)
anything else                                          Unavailable ``libvirt_error`` (503)
=====================================================  ============================
"""

from __future__ import annotations

import libvirt

from cockpit_api.backends.base import BackendError, Conflict, NotFound, NotSupported, Unavailable

_UNSUPPORTED = frozenset({
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
})
_BUSY = frozenset({libvirt.VIR_ERR_OPERATION_TIMEOUT, libvirt.VIR_ERR_AGENT_UNRESPONSIVE})
_CONNECTION = frozenset({
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_CANCELLED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
})
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})

# Codes the backend itself keys on (never libvirt numbers outside this module).
ABORTED = "operation_aborted"
HOST_DISCONNECTED = "host_disconnected"


def translate(exc: BaseException) -> BackendError:
    """The domain error for a libvirt failure (a BackendError passes through unchanged)."""
    if isinstance(exc, BackendError):
        return exc
    if not isinstance(exc, libvirt.libvirtError):
        return Unavailable(f"libvirt call failed: {exc!r}", code="libvirt_error")
    code = exc.get_error_code()
    domain = exc.get_error_domain()
    message = exc.get_error_message() or str(exc) or "libvirt error"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return NotFound(message, code="vm_not_found")
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        lowered = message.lower()
        if "not running" in lowered:
            return Conflict(message, code="vm_not_running")
        if "already running" in lowered or "is already active" in lowered:
            return Conflict(message, code="vm_running")
        return Conflict(message, code="operation_invalid")
    if code == libvirt.VIR_ERR_OPERATION_ABORTED:
        return Conflict(message, code=ABORTED)
    if code == libvirt.VIR_ERR_DOM_EXIST:
        return Conflict(message, code="vm_exists")
    if code in _UNSUPPORTED:
        return NotSupported(message, code="not_supported")
    if code in _BUSY:
        return Unavailable(message, code="host_busy")
    if code in _CONNECTION or domain in _CONNECTION_DOMAINS:
        return Unavailable(message, code=HOST_DISCONNECTED)
    return Unavailable(message, code="libvirt_error")
