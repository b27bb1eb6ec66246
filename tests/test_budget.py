"""The run's time budget, simulated on a fake clock with scripted solve times."""

from __future__ import annotations

import random
import statistics

import pytest

from kaggle_submission.budget import Budget, BudgetConfig
from kaggle_submission.competition import get_adapter
from kaggle_submission.presets import PRESETS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def simulate(config: BudgetConfig, needs: list[float], startup: float, seed: int = 0):
    """Each problem takes what it needs, or its allocation plus up to the engine's margin.

    Returns per-problem (allocated, used, time left when allocated) and the total elapsed."""
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
        rows.append((allocation.seconds, used, allocation.time_left))
    return rows, clock.now - budget.run_started


def full_shares(config: BudgetConfig, startup: float) -> list[float]:
    """Every problem uses its whole share (the worst case for the last problems)."""
    rows, _ = simulate(config, [float("inf")] * config.num_problems, startup)
    return [allocated for allocated, _, _ in rows]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("base_s", [None, 25.0])
@pytest.mark.parametrize(
    ("total_s", "mean_need"),
    [
        pytest.param(9 * 3600, 60.0, id="generous"),
        pytest.param(5 * 3600, 40.0, id="tight"),
        pytest.param(3600, 30.0, id="starved"),
    ],
)
def test_thousand_problems_never_overrun(seed, base_s, total_s, mean_need):
    rng = random.Random(seed)
    needs = [rng.lognormvariate(0, 1.2) * mean_need for _ in range(1000)]
    config = BudgetConfig(
        total_s=total_s * 20,
        num_problems=1000,
        startup_reserve_s=600,
        safety_s=120,
        base_s=base_s,
        borrow_s=200,
        cap_s=900,
        margin_s=2.0,
        per_call_limit_s=400,
        per_call_margin_s=10,
    )
    rows, elapsed = simulate(config, needs, startup=420)
    assert elapsed <= config.total_s - config.safety_s + 1e-6
    for k, (allocated, _, left) in enumerate(rows):
        # the share and the engine's late return fit in what the run had left for it and
        # every later problem's margin
        assert allocated + config.margin_s * (len(rows) - k) <= left + 1e-6
        assert allocated <= 400 - 2 - 10  # the per-call limit below cap_s


def _old_rule_full_shares(config: BudgetConfig, startup: float) -> list[float]:
    """Front-loading as it was: clamp(left - (n - 1) * floor, floor, cap), <= 3x even."""
    left, shares = config.total_s - config.safety_s - startup, []
    for n in range(config.num_problems, 0, -1):
        usable = max(0.0, left - config.margin_s * n)
        even = usable / n
        share = usable - (n - 1) * min(20.0, even)
        share = max(0.0, min(share, config.cap_s, 3 * even))
        shares.append(share)
        left -= share
    return shares


@pytest.mark.parametrize("name", ["aimo1-t4x2", "aimo2-l4x4", "aimo3-h100"])
def test_full_shares_leave_the_last_problem_at_least_half_the_first(name):
    config = PRESETS[name].budget.with_per_call_limit(
        get_adapter(PRESETS[name].competition).PER_CALL_LIMIT_S
    )
    shares = full_shares(config, startup=config.startup_reserve_s)
    assert shares[-1] >= shares[0] / 2
    assert min(shares) >= min(config.base_s or 0, shares[0]) - 1e-6
    assert sum(shares) <= config.total_s - config.safety_s - config.startup_reserve_s
    # nearly all of the run is used, not held back for a hard problem that never comes
    assert sum(shares) >= 0.95 * (config.total_s - config.safety_s - config.startup_reserve_s)


def test_front_loading_was_what_the_bank_replaces():
    """The old rule on AIMO-1's old settings (cap 1200, floor 20, spread 3): the first 15
    problems got 1200 s and the last 9 about 22 s; the bench prints both side by side."""
    config = BudgetConfig(total_s=9 * 3600, num_problems=50, cap_s=1200)
    old = _old_rule_full_shares(config, startup=config.startup_reserve_s)
    assert old[0] == 1200 and old[-1] < 30


def test_bank_lends_savings_up_to_the_borrow_cap():
    clock = FakeClock()
    config = BudgetConfig(
        total_s=10_000,
        num_problems=20,
        startup_reserve_s=0,
        safety_s=0,
        base_s=400,
        borrow_s=300,
        cap_s=10_000,
        margin_s=0,
    )
    budget = Budget(config, clock=clock)
    budget.started()
    first = budget.allocate()
    assert (first.seconds, first.base, first.borrowed) == (400, 400, 0)  # nothing saved yet
    clock.advance(10)  # an easy problem: 490 s of its 500 s even split are saved
    budget.finish()
    assert budget.bank == pytest.approx(490)
    second = budget.allocate()
    assert second.seconds == pytest.approx(700) and second.borrowed == 300
    clock.advance(700)
    budget.finish()
    third = budget.allocate()
    # the bank kept 490 + (9990 / 19) - 700 of the savings: the borrow cap binds again
    assert budget.bank == pytest.approx(490 + 9990 / 19 - 700)
    assert third.seconds == pytest.approx(700)


def test_an_overrun_is_taken_from_the_bank():
    clock = FakeClock()
    config = BudgetConfig(
        total_s=1000,
        num_problems=10,
        startup_reserve_s=0,
        safety_s=0,
        base_s=80,
        borrow_s=500,
        cap_s=1000,
        margin_s=0,
    )
    budget = Budget(config, clock=clock)
    budget.started()
    assert budget.allocate().seconds == 80
    clock.advance(130)  # the engine returned 50 s late
    budget.finish()
    assert budget.bank == pytest.approx(100 - 130)
    second = budget.allocate()
    assert second.borrowed == 0 and second.seconds == 80  # a debt lends nothing
    clock.advance(0)
    budget.finish(used_s=5.0)  # the used time can also be given, as the kernel may measure it
    assert budget.bank == pytest.approx(-30 + 870 / 9 - 5)


def test_later_problems_keep_their_base():
    clock = FakeClock()
    config = BudgetConfig(
        total_s=300,
        num_problems=3,
        startup_reserve_s=0,
        safety_s=0,
        base_s=100,
        borrow_s=1000,
        cap_s=1000,
        margin_s=0,
    )
    budget = Budget(config, clock=clock)
    budget.started()
    shares = []
    for used in (0.0, None, None):
        allocation = budget.allocate()
        shares.append(allocation.seconds)
        clock.advance(allocation.seconds if used is None else used)
        budget.finish()
    # p2 borrows all p1 saved; p3's base (100) is all that is left, whatever the bank says
    assert shares == pytest.approx([100, 200, 100])
    assert clock.now - budget.run_started == pytest.approx(300)


def test_no_base_is_the_even_split_of_what_is_left():
    config = BudgetConfig(
        total_s=5000, num_problems=10, startup_reserve_s=0, safety_s=0, cap_s=5000, margin_s=0
    )
    assert full_shares(config, startup=0) == pytest.approx([500] * 10)
    rows, _ = simulate(config, [100.0] * 5 + [float("inf")] * 5, startup=0)
    assert [a for a, _, _ in rows][5:] == pytest.approx([900] * 5)  # savings spread evenly


# five problems with 8000 s each, under AIMO-2's 30-minute limit per call
PER_CALL_LIMITED = BudgetConfig(
    total_s=40_000,
    num_problems=5,
    startup_reserve_s=0,
    safety_s=0,
    cap_s=5000,
    margin_s=2,
    per_call_limit_s=1800,
    per_call_margin_s=120,
)


def test_per_call_limit_caps_every_allocation():
    config = PER_CALL_LIMITED
    assert config.per_call_ceiling() == 1800 - 2 - 120
    assert set(full_shares(config, startup=0)) == {1678}
    assert "does not fit the per-call limit" in (config.per_call_problem() or "")
    assert BudgetConfig(cap_s=900, per_call_limit_s=1800).per_call_problem() is None
    assert BudgetConfig(per_call_limit_s=None).per_call_problem() is None


def test_time_spent_in_the_call_comes_off_the_per_call_ceiling():
    """An engine rebuild at the start of a call leaves the solve only the rest of the limit."""
    now = [0.0]
    budget = Budget(PER_CALL_LIMITED, clock=lambda: now[0])
    call_started = now[0]
    assert budget.call_time_left(call_started) == 1800 - 2
    now[0] += 300.0  # a rebuild
    assert budget.call_time_left(call_started) == 1800 - 2 - 300
    assert budget.allocate(spent_in_call_s=300.0).seconds == 1678 - 300
    assert Budget(BudgetConfig()).call_time_left(0.0) == float("inf")


def test_the_competition_limit_is_applied_as_the_tighter_one():
    aimo2 = get_adapter("aimo2").PER_CALL_LIMIT_S
    assert aimo2 == 1800
    assert BudgetConfig().with_per_call_limit(aimo2).per_call_limit_s == 1800
    assert BudgetConfig(per_call_limit_s=600).with_per_call_limit(aimo2).per_call_limit_s == 600
    assert BudgetConfig().with_per_call_limit(None).per_call_limit_s is None
    for preset in PRESETS.values():
        limit = get_adapter(preset.competition).PER_CALL_LIMIT_S
        assert preset.budget.with_per_call_limit(limit).per_call_problem() is None, preset.name


def test_build_kernel_refuses_a_cap_beyond_the_per_call_limit():
    bk = pytest.importorskip("build_kernel")
    with pytest.raises(bk.BuildError, match="does not fit the per-call limit"):
        bk.resolve_preset_input("aimo2-l4x4", {"budget.cap_s": 1700})
    _, _, preset = bk.resolve_preset_input("aimo2-l4x4", {"budget.cap_s": 1678})
    assert preset.budget.cap_s == 1678
    bk.resolve_preset_input("aimo1-t4x2", {"budget.cap_s": 20_000})  # AIMO-1 has no limit


def test_the_kernel_budget_carries_the_competition_limit():
    from kaggle_submission.kernel import Kernel

    kernel = Kernel(PRESETS["aimo2-l4x4"])
    try:
        assert kernel.budget.config.per_call_limit_s == 1800
    finally:
        kernel.close()


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


def test_preset_tables_differ_from_front_loading():
    """First, median and last full shares (bench/bench_budget.py prints the whole table)."""
    config = PRESETS["aimo1-t4x2"].budget
    new = full_shares(config, startup=config.startup_reserve_s)
    assert statistics.median(new) >= new[0] >= 500  # no front-loading: the first is not the max


@pytest.mark.parametrize(
    "changes",
    [
        {"num_problems": 0},
        {"total_s": 0},
        {"base_s": 0},
        {"borrow_s": -1},
        {"cap_s": 0},
        {"per_call_limit_s": 100, "per_call_margin_s": 99, "margin_s": 1},
    ],
)
def test_bad_configs_rejected(changes):
    with pytest.raises(ValueError):
        BudgetConfig(**changes)
