"""The budget table before and after the time bank, on a fake clock.

    python bench/bench_budget.py

Every problem uses its whole share (the worst case for the last problems) and start-up takes
exactly the preset's reserve. The baseline is the rule the kit had before the time bank,
reimplemented here: `clamp(left - (n - 1) * floor, floor, cap)`, at most `spread` times the even
split of what is left, with the presets' old settings (floor 20 s, spread 3; cap 1200 s on
AIMO-1, 900 s on AIMO-2/3). The new rule is `budget.Budget` with the presets as they are, under
their competition's per-call limit.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.budget import Budget, BudgetConfig
from kaggle_submission.competition import get_adapter
from kaggle_submission.presets import PRESETS

OLD_CAP = {"aimo1-t4x2": 1200.0, "aimo2-l4x4": 900.0, "aimo3-h100": 900.0, "demo-cpu": 60.0}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def old_rule(config: BudgetConfig, cap_s: float, floor_s: float = 20.0, spread: float = 3.0):
    """The shares the front-loading rule gave when each problem used all of its share."""
    left = config.total_s - config.safety_s - config.startup_reserve_s
    shares = []
    for n in range(config.num_problems, 0, -1):
        usable = max(0.0, left - config.margin_s * n)
        even = usable / n
        share = usable - (n - 1) * min(floor_s, even)
        share = max(0.0, min(share, cap_s, spread * even))
        shares.append(share)
        left -= share
    return shares


def new_rule(config: BudgetConfig) -> list[float]:
    """The shares `budget.Budget` gives when each problem uses all of its share."""
    clock = FakeClock()
    budget = Budget(config, clock=clock, run_started=0.0)
    clock.now = config.startup_reserve_s
    budget.started()
    shares = []
    for _ in range(config.num_problems):
        allocation = budget.allocate()
        shares.append(allocation.seconds)
        clock.now += allocation.seconds
        budget.finish()
    return shares


def row(name: str, rule: str, shares: list[float], usable: float) -> str:
    return (
        f"| {name} | {rule} | {shares[0]:.0f} | {statistics.median(shares):.0f} | "
        f"{shares[-1]:.0f} | {min(shares):.0f} | {sum(shares):.0f} of {usable:.0f} |"
    )


def main() -> None:
    print("| preset | rule | first s | median s | last s | least s | total used s |")
    print("|---|---|---|---|---|---|---|")
    for name, preset in PRESETS.items():
        config = preset.budget.with_per_call_limit(get_adapter(preset.competition).PER_CALL_LIMIT_S)
        usable = config.total_s - config.safety_s - config.startup_reserve_s
        print(row(name, "before: front-loading", old_rule(config, OLD_CAP[name]), usable))
        base = "even" if config.base_s is None else f"{config.base_s:g}"
        label = f"after: base {base} + borrow {config.borrow_s:g}, cap {config.cap_s:g}"
        print(row(name, label, new_rule(config), usable))


if __name__ == "__main__":
    main()
