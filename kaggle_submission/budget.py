"""The time budget of a whole run: a base share per problem plus a time bank, within every limit.

Problems arrive one at a time in an unknown order, and a hard one early must not starve the
rest (front-loading gave AIMO-1's first 15 problems 1200 s and the last 9 about 22 s when every
problem used its share). So, as AIMO-2's winner (350 s base, borrow up to 210 s) and AIMO-3's
kernels (300 s base, 900 s max) did:
- each problem's base share is `b = min(base_s, even split of what is left)`;
- the bank holds what earlier problems left unused of their even split (negative when they
  overran it); a problem may borrow `min(bank, borrow_s)` on top of its base;
- the share is capped by `cap_s`, by the competition's per-call limit minus its margins, and by
  what is left once every later problem keeps its base. Time a problem does not use raises the
  even split of what is left, so it flows to the later ones through both the base and the bank.
When nothing is left a problem gets no time at all (the kernel then submits the fallback answer
at once): every share comes out of the time left, so the run never exceeds its limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class BudgetConfig:
    """Attributes:
    total_s: the competition's limit for the whole run (9 h on AIMO-1, 5 h on AIMO-2/3).
    num_problems: how many problems the run will see (50 on Kaggle).
    startup_reserve_s: expected start-up (wheels, model load) before the first problem; the
        measured load time replaces it once known (`Budget.started`).
    safety_s: kept back at the end of the run for writing the submission and slack.
    base_s: each problem's base share; None: the even split of what is left (no bank to
        borrow from, since every later problem keeps its base).
    borrow_s: the most a problem may borrow from the bank on top of its base.
    cap_s: no problem gets more than this (AIMO-1's winner needed 27-97 s on an H100).
    margin_s: how late the engine may return after a deadline (measured; see bench/), kept
        out of every allocation so that the deadline plus the margin fits.
    per_call_limit_s: the competition's limit on one `predict` call (AIMO-2: 30 min; None:
        none). The kernel, build_kernel.py and tune fill it from the competition adapter's
        PER_CALL_LIMIT_S (`with_per_call_limit`).
    per_call_margin_s: what a call spends besides the solve and the engine's late return
        (`margin_s`, also the hang watchdog's grace): the adapter's overhead and the trace
        write (well under a second) and an engine rebuild after a failure, which runs inside
        the failing call (minutes for vLLM). A share never exceeds
        `per_call_limit_s - margin_s - per_call_margin_s` (AIMO-2: 1800 - 2 - 120 = 1678 s).
    """

    total_s: float = 9 * 3600
    num_problems: int = 50
    startup_reserve_s: float = 900.0
    safety_s: float = 300.0
    base_s: float | None = None
    borrow_s: float = 0.0
    cap_s: float = 1200.0
    margin_s: float = 2.0
    per_call_limit_s: float | None = None
    per_call_margin_s: float = 120.0

    def __post_init__(self) -> None:
        if self.num_problems < 1 or self.total_s <= 0:
            raise ValueError("num_problems and total_s must be positive")
        if self.base_s is not None and self.base_s <= 0:
            raise ValueError("base_s must be positive (or None: the even split)")
        if self.borrow_s < 0 or self.cap_s <= 0 or self.margin_s < 0:
            raise ValueError("need borrow_s >= 0, cap_s > 0 and margin_s >= 0")
        if self.per_call_limit_s is not None and self.per_call_ceiling() <= 0:
            raise ValueError("per_call_limit_s leaves no time after margin_s + per_call_margin_s")

    def per_call_ceiling(self) -> float:
        """The longest share the per-call limit allows (inf without a limit)."""
        if self.per_call_limit_s is None:
            return float("inf")
        return self.per_call_limit_s - self.margin_s - self.per_call_margin_s

    def with_per_call_limit(self, limit_s: float | None) -> BudgetConfig:
        """This config under a competition's per-call limit too (the tighter one wins)."""
        if limit_s is None:
            return self
        own = self.per_call_limit_s
        return replace(self, per_call_limit_s=limit_s if own is None else min(own, limit_s))

    def per_call_problem(self) -> str | None:
        """Why `cap_s` cannot fit the per-call limit, or None when it fits."""
        ceiling = self.per_call_ceiling()
        if self.cap_s <= ceiling:
            return None
        return (
            f"budget.cap_s {self.cap_s:g} s does not fit the per-call limit "
            f"{self.per_call_limit_s:g} s minus margin_s {self.margin_s:g} s and "
            f"per_call_margin_s {self.per_call_margin_s:g} s (at most {ceiling:g} s)"
        )


@dataclass(frozen=True)
class Allocation:
    """One problem's share: seconds from now and the absolute monotonic deadline; `base` and
    `borrowed` say how the share was made (before the caps)."""

    seconds: float
    deadline: float
    problems_left: int
    time_left: float
    base: float = 0.0
    borrowed: float = 0.0


class Budget:
    """Hands out per-problem deadlines from the run's remaining time. Thread-safe.

    `allocate()` then `finish()` per problem; the time used is measured between them on the
    budget's clock (or given to `finish`) and settles the problem's account with the bank."""

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
        self.bank = 0.0
        self._open: tuple[float, float] | None = None  # (allocated at, even split then)
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

    def call_time_left(self, call_started: float) -> float:
        """What the per-call limit still allows a call that began at `call_started`, less the
        engine's `margin_s` (inf without a limit): what an engine rebuild inside the call may
        take."""
        cfg = self.config
        if cfg.per_call_limit_s is None:
            return float("inf")
        return max(0.0, cfg.per_call_limit_s - cfg.margin_s - (self.clock() - call_started))

    def allocate(self, spent_in_call_s: float = 0.0) -> Allocation:
        """The next problem's deadline; call `finish()` when it is answered.

        `spent_in_call_s`: what this `predict` call already spent before the solve (an engine
        rebuild at its start): it comes off the per-call ceiling, so the call as a whole still
        fits the competition's per-call limit."""
        with self._lock:
            cfg = self.config
            left = self.time_left()
            n = self.problems_left()
            usable = max(0.0, left - cfg.margin_s * n)
            even = usable / n
            base = even if cfg.base_s is None else min(cfg.base_s, even)
            borrowed = min(max(0.0, self.bank), cfg.borrow_s)
            later = usable - (n - 1) * base  # every later problem keeps its base
            ceiling = cfg.per_call_ceiling() - spent_in_call_s
            share = min(base + borrowed, later, cfg.cap_s, ceiling)
            share = max(0.0, share)
            now = self.clock()
            self._open = (now, even)
            return Allocation(share, now + share, n, left, base, borrowed)

    def finish(self, used_s: float | None = None) -> None:
        """The problem is answered: what it left of its even split goes to the bank (what it
        took beyond it comes out). `used_s` defaults to the clock since `allocate()`."""
        with self._lock:
            if self._open is not None:
                allocated_at, even = self._open
                used = self.clock() - allocated_at if used_s is None else used_s
                self.bank += even - used
                self._open = None
            self.problems_done += 1
