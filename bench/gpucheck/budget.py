"""Time budgets: each part gets its share of the run's seconds (plus what earlier parts left
unused), and an alarm (SIGALRM) ends a part that overruns by raising PartTimeout wherever it is.

PartTimeout derives from BaseException, like KeyboardInterrupt, so library code that catches
Exception does not swallow it; where it is lost anyway (raised inside a __del__, which Python
reports and ignores), the alarm repeats every REPEAT_S seconds until the runner disarms it. A
blocking call (a CUDA synchronise, a compile) is interrupted when it returns to Python. Results
files are written with the alarm held back (`alarm_held`), so a time-out never lands in the middle
of a write.
"""
from __future__ import annotations

import contextlib
import signal
import time
from typing import Any, Iterator

HAS_ALARM = hasattr(signal, "setitimer") and hasattr(signal, "pthread_sigmask")
REPEAT_S = 1.0  # the alarm's period after it first fires, until disarmed


class PartTimeout(BaseException):
    """The running part's time budget ran out. `row` may carry what the interrupted case had
    measured so far (a partial result), for the report."""

    def __init__(self, message: str = "time budget spent", row: Any = None):
        super().__init__(message)
        self.row = row


def split_budget(total_s: float, shares: dict[int, float]) -> dict[int, float]:
    """Seconds per part: `total_s` split in proportion to `shares` (part number -> weight)."""
    weight = sum(shares.values())
    if total_s <= 0 or weight <= 0:
        raise ValueError(f"time budget must be positive: total {total_s} s, shares {shares}")
    return {part: total_s * share / weight for part, share in shares.items()}


class Deadline:
    """A part's deadline: `with Deadline(seconds) as deadline:` arms the alarm, which raises
    PartTimeout in the main thread when the seconds are up; `remaining()` tells the seconds left."""

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError(f"Deadline needs a positive number of seconds, got {seconds}")
        self.seconds = seconds
        self.ends = time.monotonic() + seconds
        self._previous: Any = None

    def remaining(self) -> float:
        return self.ends - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def _raise(self, signum, frame) -> None:
        raise PartTimeout(f"the part's {self.seconds:.0f} s budget ran out")

    def disarm(self) -> None:
        """No more alarms (the runner calls this as soon as it has caught a PartTimeout)."""
        if HAS_ALARM:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def __enter__(self) -> "Deadline":
        self.ends = time.monotonic() + self.seconds
        if HAS_ALARM:
            self._previous = signal.signal(signal.SIGALRM, self._raise)
            signal.setitimer(signal.ITIMER_REAL, self.seconds, REPEAT_S)
        return self

    def __exit__(self, *exc_info) -> None:
        if HAS_ALARM:
            self.disarm()
            signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)


@contextlib.contextmanager
def alarm_held() -> Iterator[None]:
    """Hold SIGALRM back inside the block; an alarm that fell due meanwhile fires right after the
    outermost held block (the previous mask is restored, so blocks nest)."""
    if not HAS_ALARM:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
