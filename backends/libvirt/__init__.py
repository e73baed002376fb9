"""The libvirt backend: a cluster of real libvirt hosts, one connection each.

It answers with the semantics of :mod:`cockpit_api.backends.sim.backend` (the executable document
of how a Cockpit cluster behaves) wherever libvirt lets it; the places where a
real hypervisor differs are listed in the final section below.

The package, one concern a module:

``link``
    One connection and the one thread that owns it (every call, the close and
    the callbacks' deregistration run there; libvirt's event thread only
    dispatches). Keepalive finds a frozen daemon within about 6 s.
``calls``
    The functions of a connection that run on its thread (reads, actions,
    statistics, job calls); they return plain data, never libvirt objects.
``hosts``
    The configured hosts: links opened in the background, loss and reconnect,
    events and resyncs applied to per-host snapshots, and where each VM is
    listed (an incoming migration copy never is).
``jobs``
    Migration jobs: the ones started here, and the ones found running in libvirt
    (adopted, reconciled with libvirt until they end).
``sampler``
    Metrics samples per host into ``metrics`` (bounded ring buffers, rates).
``backend``
    :class:`LibvirtBackend`, the facade the app talks to.
``errors``, ``hostids``
    The one translation of libvirt errors; stable host ids.

Actions
    Every action re-reads the domain's state in the same owner-thread call that
    acts, and refuses or no-ops exactly as the simulator does (see
    :func:`cockpit_api.backends.libvirt.calls.do_action`).
Errors
    :func:`cockpit_api.backends.libvirt.errors.translate` is the one function that reads
    libvirt error codes; no ``libvirtError`` leaves this package.

Known differences from the simulator (measured on libvirt 9.0 + QEMU 7.2, and the test driver)
    * A graceful ``stop`` of a *paused* VM is refused, 409 ``vm_paused``: QEMU
      answers VIR_ERR_OPERATION_INVALID "domain is not running". The simulator
      accepts it and shuts the guest down after the next resume.
    * ``resume`` of a running VM and ``suspend`` of a paused one succeed as
      no-ops, as in the simulator, because the backend checks first: QEMU
      7.2/libvirt 9.0 itself refuses resume-of-running (55), and the test
      driver refuses both (VIR_ERR_INTERNAL_ERROR).
    * ``start`` of a ``crashed`` VM destroys the crashed domain first: libvirt
      keeps a crashed domain active (on_crash=preserve; with on_crash=destroy a
      crash reads ``shutoff``), the simulator has it inactive.
    * A graceful ``stop`` on the test driver powers off at once; QEMU guests
      take their time or (SeaBIOS, no OS) never act on it.
    * Actions and migration requests cost a libvirt round trip (start ~0.25 s,
      destroy ~0.2 s in the lab); the simulator answers at once.
    * Migration progress is libvirt's: ``data_processed_bytes`` is what was sent
      (zero pages skipped, dirty pages sent again), so processed + remaining is
      not total; ``percent`` is ``(total - remaining) / total`` (at most 99.9
      until completed). An idle guest shows only zeros until it completes (its
      ~0.6 MB go in the last milliseconds); then the JOB_COMPLETED numbers.
    * A cancel answers once libvirt confirms (``migrateToURI3`` fails with
      VIR_ERR_OPERATION_ABORTED, ~0.1 s): it can answer 409
      ``migration_finished`` if the copy completed first. The error is
      libvirt's ("operation aborted: job 'migration out' canceled by client").
    * A destination that dies mid-way: libvirt fails the job by itself
      ("internal error: client socket is closed"); the backend prefixes "lost
      connection to the destination host during migration" when its own
      connection to that host dropped too (it does, within ~30 ms, in the lab).
    * Metrics are samples every ``sample_seconds`` (gaps before the first
      sample, while a host is unreachable, and for a VM while it migrates);
      the simulator computes any instant. Host CPU and memory are the node's
      (in the lab both nodes are one machine).
"""

from cockpit_api.backends.libvirt.backend import LibvirtBackend
from cockpit_api.backends.libvirt.calls import status_of
from cockpit_api.backends.libvirt.link import ensure_event_loop

__all__ = ["LibvirtBackend", "ensure_event_loop", "status_of"]
