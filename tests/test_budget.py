"""The run's time budget, simulated on a fake clock with scripted solve times."""

from __future__ import annotations

import random

import pytest

from kaggle_submission.budget import Budget, BudgetConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def simulate(config: BudgetConfig, needs: list[float], startup: float, seed: int = 0):
    """Each problem takes what it needs, or its allocation plus up to the engine's margin.

    Returns per-problem (allocated, used) and the total elapsed time."""
    rng = random.Random(seed)
    clock = FakeClock()
    budget = Budget(config, clock=clock)
    clock.advance(startup)
    budget.started()
    rows = []
    for need in needs:
        allocation = budget.allocate()
        if allocation.seconds <= 0:
            used = 0.0  # fallback answer submitted at once
        else:
            used = min(need, allocation.seconds + rng.uniform(0, config.margin_s))
        clock.advance(used)
        budget.finish()
        rows.append((allocation.seconds, used))
    return rows, clock.now - budget.run_started


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("total_s", "mean_need"),
    [
        pytest.param(9 * 3600, 60.0, id="generous"),
        pytest.param(5 * 3600, 40.0, id="tight"),
        pytest.param(3600, 30.0, id="starved"),
    ],
)
def test_thousand_problems_never_overrun(seed, total_s, mean_need):
    rng = random.Random(seed)
    needs = [rng.lognormvariate(0, 1.2) * mean_need for _ in range(1000)]
    config = BudgetConfig(
        total_s=total_s * 20,
        num_problems=1000,
        startup_reserve_s=600,
        safety_s=120,
        floor_s=5,
        cap_s=900,
        margin_s=2.0,
    )
    rows, elapsed = simulate(config, needs, startup=420)
    assert elapsed <= config.total_s - config.safety_s + 1e-6
    assert all(used <= allocated + config.margin_s for allocated, used in rows)
    assert all(allocated <= config.cap_s for allocated, _ in rows)


def test_unused_time_rolls_over():
    config = BudgetConfig(
        total_s=10_000,
        num_problems=50,
        startup_reserve_s=0,
        safety_s=0,
        floor_s=10,
        cap_s=10_000,
        spread=3.0,
        margin_s=0,
    )
    easy_first = [1.0] * 25 + [10_000.0] * 25
    rows, _ = simulate(config, easy_first, startup=0)
    first_share = rows[0][0]
    assert first_share == pytest.approx(3 * 10_000 / 50)  # spread caps the first at 3x even
    assert rows[25][0] > 10_000 / 50  # the easy half's leftovers went to the hard half
    assert sum(used for _, used in rows) <= 10_000 + 1e-6


def test_startup_reserve_until_measured():
    clock = FakeClock()
    config = BudgetConfig(
        total_s=1000, num_problems=10, startup_reserve_s=300, safety_s=0, margin_s=0
    )
    budget = Budget(config, clock=clock)
    assert budget.time_left() == pytest.approx(700)
    clock.advance(100)
    budget.started()
    assert budget.time_left() == pytest.approx(900)


def test_out_of_time_gives_zero_not_negative():
    clock = FakeClock()
    budget = Budget(
        BudgetConfig(total_s=100, num_problems=5, startup_reserve_s=0, safety_s=0), clock=clock
    )
    clock.advance(200)
    allocation = budget.allocate()
    assert allocation.seconds == 0.0
    assert allocation.deadline == clock.now


@pytest.mark.parametrize(
    "changes",
    [{"num_problems": 0}, {"total_s": 0}, {"floor_s": 10, "cap_s": 5}, {"spread": 0.5}],
)
def test_bad_configs_rejected(changes):
    with pytest.raises(ValueError):
        BudgetConfig(**changes)
