"""The simulated backend: a cluster in memory on a virtual clock (see backend.py)."""

from cockpit_api.backends.sim.backend import Fault, LatencyRule, SimulatedBackend, VirtualClock

__all__ = ["Fault", "LatencyRule", "SimulatedBackend", "VirtualClock"]
