"""The time budget of a whole run: per-problem deadlines that never overrun the limit.

Problems arrive one at a time in an unknown order, so each gets a share of what is left:
`clamp(time_left - safety - (problems_left - 1) * reserve, floor, cap)` capped again by an
even-split multiple, where `reserve` is what every later problem is guaranteed. Time a problem
does not use stays in `time_left`, so it rolls over to the later ones. When even the reserve no
longer fits, problems get only what is left, and with nothing left they get no time at all (the
kernel then submits the fallback answer at once): the run never exceeds its limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetConfig:
    """Attributes:
    total_s: the competition's limit for the whole run (9 h on AIMO-1, 5 h on AIMO-2/3).
    num_problems: how many problems the run will see (50 on Kaggle).
    startup_reserve_s: expected start-up (wheels, model load) before the first problem; the
        measured load time replaces it once known (`Budget.started`).
    safety_s: kept back at the end of the run for writing the submission and slack.
    floor_s: what every later problem is guaranteed while time allows (when it no longer
        fits, the even split of what is left).
    cap_s: no problem gets more than this (AIMO-1's winner needed 27-97 s on an H100).
    spread: a problem may take at most `spread` times the even split of what is left, so one
        hard problem early cannot starve the rest.
    margin_s: how late the engine may return after a deadline (measured; see bench/), kept
        out of every allocation so that the deadline plus the margin fits.
    """

    total_s: float = 9 * 3600
    num_problems: int = 50
    startup_reserve_s: float = 900.0
    safety_s: float = 300.0
    floor_s: float = 20.0
    cap_s: float = 1200.0
    spread: float = 3.0
    margin_s: float = 2.0

    def __post_init__(self) -> None:
        if self.num_problems < 1 or self.total_s <= 0:
            raise ValueError("num_problems and total_s must be positive")
        if not 0 <= self.floor_s <= self.cap_s:
            raise ValueError("need 0 <= floor_s <= cap_s")
        if self.spread < 1:
            raise ValueError("spread must be >= 1")


@dataclass(frozen=True)
class Allocation:
    """One problem's share: seconds from now and the absolute monotonic deadline."""

    seconds: float
    deadline: float
    problems_left: int
    time_left: float


class Budget:
    """Hands out per-problem deadlines from the run's remaining time. Thread-safe."""

    def __init__(
        self,
        config: BudgetConfig,
        clock: Callable[[], float] = time.monotonic,
        run_started: float | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.run_started = clock() if run_started is None else run_started
        self.end = self.run_started + config.total_s - config.safety_s
        self.problems_done = 0
        self.startup_s: float | None = None
        self._lock = threading.Lock()

    def started(self) -> None:
        """Record the measured start-up; the reserve guess is no longer needed."""
        self.startup_s = self.clock() - self.run_started

    def time_left(self) -> float:
        left = self.end - self.clock()
        if self.startup_s is None:
            left -= self.config.startup_reserve_s
        return max(0.0, left)

    def problems_left(self) -> int:
        return max(1, self.config.num_problems - self.problems_done)

    def allocate(self) -> Allocation:
        """The next problem's deadline; call `finish()` when it is answered."""
        with self._lock:
            cfg = self.config
            left = self.time_left()
            n = self.problems_left()
            usable = max(0.0, left - cfg.margin_s * n)
            even = usable / n
            reserve = min(cfg.floor_s, even)
            share = usable - (n - 1) * reserve
            share = max(0.0, min(share, cfg.cap_s, cfg.spread * even))
            now = self.clock()
            return Allocation(share, now + share, n, left)

    def finish(self) -> None:
        with self._lock:
            self.problems_done += 1
