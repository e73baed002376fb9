"""The simulated backend: a cluster in memory on a virtual clock.

``backend.py`` is the cluster (the executable document of how one behaves), ``clock.py``
its virtual time, ``state.py`` what a world holds between calls, ``scenario.py`` the
scenario files, ``metrics.py`` the performance logs computed from each VM's history.
"""

from cockpit_api.backends.base import Fault, LatencyRule
from cockpit_api.backends.sim.backend import SimulatedBackend
from cockpit_api.backends.sim.clock import VirtualClock

__all__ = ["Fault", "LatencyRule", "SimulatedBackend", "VirtualClock"]
