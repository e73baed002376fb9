"""The simulator's virtual time (Unix seconds), moved by speed and by hand."""

from __future__ import annotations

import time
from collections.abc import Callable

from cockpit_api.backends.base import InvalidArgument


class VirtualClock:
    """Unix-seconds clock: ``start + elapsed_real * speed + manual advances``.

    ``speed=0`` freezes it (tests move it with :meth:`advance`); ``speed=1`` runs
    in real time; ``speed=10`` makes a 20-second migration take 2 seconds.
    """

    def __init__(self, start: float, speed: float = 0.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._base = float(start)
        self._mark = monotonic()
        self._speed = float(speed)

    def now(self) -> float:
        if self._speed == 0.0:
            return self._base
        return self._base + (self._monotonic() - self._mark) * self._speed

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise InvalidArgument("the clock only moves forward", code="clock_backwards")
        self._rebase()
        self._base += seconds

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        if value < 0:
            raise InvalidArgument("speed must be >= 0", code="bad_speed")
        self._rebase()
        self._speed = float(value)

    def _rebase(self) -> None:
        self._base = self.now()
        self._mark = self._monotonic()
