"""Sending on schedule: message k of a stream is due at ``start + t_k``.

Sleeping until an absolute due time (rather than sleeping a fixed interval after each send)
keeps the long-run rate exact at 1-5000 messages/s: sleep overshoot and send time are absorbed
by the next wait instead of accumulating.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nirwatch.errors import ConfigError

if TYPE_CHECKING:
    from nirwatch.simulation.simulator import ProbeSpec


class Pacer:
    """Waits until scheduled offsets (seconds since the start) fall due.

    Parameters
    ----------
    max_lag_s : float
        When a due time is more than this far in the past, the schedule is shifted so it is
        due now: after a stall the stream resumes at its rate instead of bursting the backlog.
    stop : threading.Event, optional
        Set by a signal handler; a wait returns early (False) once it is set.
    """

    def __init__(
        self,
        max_lag_s: float = 1.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag_s = max_lag_s
        self.stop = stop or threading.Event()
        self.clock = clock
        self.start = clock()
        self.shifted_s = 0.0

    def wait_until(self, offset_s: float) -> bool:
        """Block until ``offset_s`` after the start; False when stopped first."""
        due = self.start + self.shifted_s + offset_s
        delay = due - self.clock()
        if delay < -self.max_lag_s:
            self.shifted_s += -delay
            return not self.stop.is_set()
        if delay > 0:
            return not self.stop.wait(delay)
        return not self.stop.is_set()

    def elapsed(self) -> float:
        """Seconds of schedule time since the start (wall time minus shifts after stalls)."""
        return self.clock() - self.start - self.shifted_s


class RatePacer(Pacer):
    """One stream at ``rate_hz`` messages per second: ``wait()`` returns when the next is due."""

    def __init__(self, rate_hz: float, **kw: object) -> None:
        if not rate_hz > 0:
            raise ConfigError(f"rate must be > 0 spectra/s, got {rate_hz}")
        super().__init__(**kw)  # type: ignore[arg-type]
        self.rate_hz = rate_hz
        self.count = 0

    def wait(self) -> bool:
        ok = self.wait_until(self.count / self.rate_hz)
        self.count += 1
        return ok


@dataclass
class ProbeSchedule:
    """Due times of interleaved probes: sample k of a probe at ``rate`` is due at ``k / rate`` s.

    ``pop()`` returns the next (due_s, instrument_id) in time order; ties go to the earlier probe.
    """

    probes: Sequence[ProbeSpec]
    _next: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._next = {p.instrument_id: 0 for p in self.probes}

    def pop(self) -> tuple[float, str]:
        best = min(self.probes, key=lambda p: self._next[p.instrument_id] / p.rate_hz)
        k = self._next[best.instrument_id]
        self._next[best.instrument_id] = k + 1
        return k / best.rate_hz, best.instrument_id
