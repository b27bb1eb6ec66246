"""The budget tuner: synthetic traces with known answers, CI coverage, and a real dry run."""

from __future__ import annotations

import argparse
import csv
import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from kaggle_submission.answers import AnswerPolicy, vote
from kaggle_submission.budget import BudgetConfig
from kaggle_submission.offline.capacity import NUMINAMATH_7B, ModelShape, estimate
from kaggle_submission.offline.tune import (
    TuneOptions,
    add_tune_parser,
    capacity_checks,
    parse_duration,
    tune,
)
from kaggle_submission.offline.tuning.recorded import build_recorded
from kaggle_submission.offline.tuning.simulate import (
    Candidate,
    SimConfig,
    Simulator,
    apply_deadline,
    early_stop_spec,
    parse_early_stop,
    stop_tables,
)
from kaggle_submission.offline.tuning.throughput import ThroughputTable, fit_table, roofline_table
from kaggle_submission.presets import PRESETS, get_preset
from kaggle_submission.stopping import ConsensusStop, StopView
from kaggle_submission.traces import (
    ExecutionSegment,
    GenerationSegment,
    RolloutTrace,
    SolveTrace,
    TraceWriter,
    VoteTrace,
)

POLICY = PRESETS["demo-cpu"].policy
TRUTH = 7
WRONG = 5

# ----------------------------------------------------------------------------- builders


def make_rollout(
    index: int,
    calls: list[tuple[int, float, float | None]],
    status: str,
    answer: int | None = None,
    box_early: bool = False,
    start: float = 0.0,
) -> RolloutTrace:
    """calls: (completion tokens, generation seconds, execution seconds after or None)."""
    segments: list = []
    t = start
    for c, (tokens, seconds, exec_s) in enumerate(calls):
        text = "x" * tokens
        if c == len(calls) - 1 and status in ("answered", "pruned"):
            box = f"\\boxed{{{answer}}}"
            text = box + "x" * tokens if box_early else "x" * tokens + box
        segments.append(
            GenerationSegment(
                call=c,
                attempt=0,
                text=text,
                finish_reason="stop",
                stop=None,
                prompt_tokens=100,
                completion_tokens=tokens,
                started=t,
                seconds=seconds,
            )
        )
        t += seconds
        if exec_s is not None:
            segments.append(
                ExecutionSegment(
                    call=c,
                    attempt=0,
                    code="print(1)",
                    output="1",
                    appended="",
                    ok=True,
                    timed_out=False,
                    reset=False,
                    started=t,
                    seconds=exec_s,
                    queued_seconds=0.0,
                )
            )
            t += exec_s
    return RolloutTrace(
        index=index,
        status=status,
        answer=answer,
        seconds=t,
        segments=segments,  # type: ignore[arg-type]
    )


def make_trace(
    problem_id: str, rollouts: list[RolloutTrace], max_calls: int = 1, max_tokens: int = 256
) -> SolveTrace:
    return SolveTrace(
        problem_id=problem_id,
        problem=f"problem {problem_id}",
        prompt=f"### Problem: problem {problem_id}\n### Solution: ",
        answer=0,
        stop_reason="finished",
        started_at=0.0,
        seconds=max((r.seconds for r in rollouts), default=0.0),
        budget_s=None,
        config={
            "num_rollouts": len(rollouts),
            "max_calls": max_calls,
            "max_tokens_per_call": max_tokens,
            "early_stop": None,
        },
        backend={"name": "synthetic"},
        vote=VoteTrace({}, 0, len(rollouts), 0.0, False),
        rollouts=rollouts,
    )


def one_call_problem(
    pid: str, answers: list[int | None], seconds: list[float], tokens: int = 100
) -> SolveTrace:
    """One call per rollout: answered (with the given answer) or no answer."""
    rollouts = [
        make_rollout(i, [(tokens, s, None)], "answered" if a is not None else "no_answer", a)
        for i, (a, s) in enumerate(zip(answers, seconds, strict=True))
    ]
    return make_trace(pid, rollouts)


def sim_config(**changes) -> SimConfig:
    base = {"time_limit_s": 1e6, "problems": 10, "replicates": 200, "startup_s": 0.0}
    return SimConfig(**{**base, **changes})


DEMO_BUDGET = PRESETS["demo-cpu"].budget  # safety 10 s, floor 5 s, margin 0.5 s


# ----------------------------------------------------------------------------- the exact rules


def reference_problem(t, a, w, truth, rule, deadline):
    """The engine's per-problem logic, scalar: finish order, ConsensusStop, answers.vote."""
    n = len(t)
    policy = AnswerPolicy(min_value=0, max_value=10**6)
    order = sorted(range(n), key=lambda i: (t[i], i))
    finished: list[int] = []
    stopped_at = None
    for i in order:
        if t[i] > deadline:
            break
        finished.append(i)
        running = n - len(finished)
        valid = [j for j in finished if a[j] >= 0]
        view = StopView(
            tuple(int(a[j]) + 1 for j in valid), tuple(float(w[j]) for j in valid),
            len(finished), running, n,
        )  # fmt: skip
        if rule is not None and running and rule(view):
            stopped_at = t[i]
            break
    valid = [j for j in finished if a[j] >= 0]
    result = vote([int(a[j]) + 1 for j in valid], policy, weights=[float(w[j]) for j in valid])
    if stopped_at is not None:
        seconds = stopped_at
    elif len(finished) == n:
        seconds = max(t)
    else:
        seconds = deadline
    return seconds, result.answer == truth + 1, bool(valid)


@pytest.mark.parametrize(
    "spec",
    [
        "none",
        "lead",
        "agree2",
        "agree3-nolead",
        "2of3",
        "3of4",
        "agree2@0",
        "agree2@0.6",
        "2of4@0.75",
    ],
)
def test_vectorised_stop_and_vote_match_the_engine_rules(spec):
    rng = np.random.default_rng(1)
    rows, n = 400, 7
    t = rng.random((rows, n)) * 10
    a = rng.integers(-1, 3, size=(rows, n))
    w = np.where(rng.random((rows, n)) < 0.3, 0.5, 1.0)
    truth = rng.integers(0, 3, size=rows)
    fallback = np.zeros(rows, bool)  # fallback answer 0 is never the truth (+1 shift)
    deadline = rng.choice([3.0, 6.0, 11.0], size=rows)
    rule = parse_early_stop(spec)
    ts, stop_idx, correct, answered = stop_tables(t, a, w, truth, fallback, rule)
    seconds, right, _, any_valid = apply_deadline(ts, stop_idx, correct, answered, deadline)
    for i in range(rows):
        ref = reference_problem(t[i], a[i], w[i], truth[i], rule, deadline[i])
        assert (seconds[i], bool(right[i]), bool(any_valid[i])) == pytest.approx(ref), i


def test_vote_when_the_truth_is_not_among_the_drawn_answers():
    """The truth's id may exceed every answer id drawn (it exists in other rollouts)."""
    t = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    a = np.array([[0, 1, 1], [-1, -1, -1]])
    truth = np.array([5, 5])
    _, _, correct, answered = stop_tables(t, a, np.ones_like(t), truth, np.array([0, 1]) > 0, None)
    assert not correct[0].any() and correct[1].all()  # the fallback happens to be right
    assert answered[0].tolist() == [False, True, True, True] and not answered[1].any()


def test_early_stop_specs_round_trip():
    assert parse_early_stop("none") is None
    assert parse_early_stop("agree4") == ConsensusStop(agree=4)
    assert parse_early_stop("4of5") == ConsensusStop(agree=4, within_first=5)
    assert parse_early_stop("lead") == ConsensusStop(agree=None, unbeatable_leader=True)
    assert parse_early_stop("agree4@0").min_share == 0.0  # agreement alone
    assert parse_early_stop("4of5@0.75-nolead") == ConsensusStop(
        agree=4, min_share=0.75, within_first=5, unbeatable_leader=False
    )
    for spec in ("none", "lead", "agree4", "4of5", "agree3-nolead", "agree4@0", "3of5@0.7-nolead"):
        assert early_stop_spec(parse_early_stop(spec)) == spec
    for preset in PRESETS.values():  # every preset's rule has a spec the tuner can search
        rule = preset.engine.early_stop
        assert parse_early_stop(early_stop_spec(rule)) == rule, preset.name
    for bad in ("5of4", "agree", "lead-nolead", "x", "lead@0.5", "agree4@"):
        with pytest.raises(ValueError):
            parse_early_stop(bad)


def test_parse_duration():
    assert parse_duration("9h") == 32400
    assert parse_duration("5h30m") == 19800
    assert parse_duration("90m") == 5400
    assert parse_duration("3600") == 3600
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("nine hours")


# ----------------------------------------------------------------------------- replaying chains


def chain_problem() -> SolveTrace:
    """r0: three calls (50, 200, 30 tokens), code after the first two, answers 7 at call 2;
    r1: the same but the box comes first in its last call; r2: exhausts its 3 calls."""
    calls = [(50, 1.0, 0.5), (200, 4.0, 0.5), (30, 1.0, None)]
    return make_trace(
        "chain",
        [
            make_rollout(0, calls, "answered", TRUTH),
            make_rollout(1, calls, "answered", TRUTH, box_early=True),
            make_rollout(2, [(50, 1.0, 0.5)] * 3, "exhausted"),
        ],
        max_calls=3,
    )


def test_truncating_chains_by_calls_and_tokens():
    rec = build_recorded([[chain_problem()]], {"chain": TRUTH}, POLICY)
    sim = Simulator(rec, DEMO_BUDGET, sim_config(problems=1, replicates=2))
    t, a, _, cont, cut = sim.piece_tables(3, 3, 256)
    # M=3, no cut: r0 answers at 1 + .5 + 4 + .5 + 1 = 7; r2 exhausts after its three calls
    assert t[2, 0, 0] == pytest.approx(7.0) and a[2, 0, 0] == rec.truth_id[0] >= 0
    assert t[2, 0, 2] == pytest.approx(4.5) and a[2, 0, 2] == -1
    # M=2: r0 runs out of calls when its third would start (after the second's code)
    assert t[1, 0, 0] == pytest.approx(6.0) and a[1, 0, 0] == -1 and cont[1, 0, 0] == 0
    # 100 tokens per call: r0's second call is cut at 100 of 200 tokens (1.5 + 2 s) and
    # restarts with the one call left
    t, a, _, cont, cut = sim.piece_tables(3, 3, 100)
    assert t[2, 0, 0] == pytest.approx(3.5) and a[2, 0, 0] == -1
    assert cont[2, 0, 0] == 1 and cut[2, 0, 0]
    # 20 tokens: the last call (30 tokens) is cut too, unless its box came before the cap
    t, a, _, cont, _ = sim.piece_tables(3, 3, 20)
    assert cont[2, 0, 0] == 2 and t[2, 0, 0] == pytest.approx(1.0 * 20 / 50)


def test_a_cut_restarts_as_a_fresh_rollout():
    """Rollouts of kind A write 200 tokens without an answer, then answer in call 2; kind B
    answers in call 1 with 50 tokens. At 100 tokens and M=2, A is cut and restarts with one
    call as a fresh rollout, which answers only if it is a B: P(answer) = 1/2 + 1/4."""
    a_kind = [make_rollout(i, [(200, 2.0, None), (50, 1.0, None)], "answered", TRUTH)
              for i in range(32)]  # fmt: skip
    b_kind = [make_rollout(32 + i, [(50, 1.0, None)], "answered", TRUTH) for i in range(32)]
    trace = make_trace("mix", a_kind + b_kind, max_calls=2)
    rec = build_recorded([[trace]], {"mix": TRUTH}, POLICY)
    sim = Simulator(rec, DEMO_BUDGET, sim_config(problems=20, replicates=200))
    t, a, _, cut = sim.rollouts(2, 2, 100)
    assert (a >= 0).mean() == pytest.approx(0.75, abs=0.02)
    assert cut.mean() == pytest.approx(0.5, abs=0.02)
    restarted = cut & (a >= 0)
    assert np.allclose(t[restarted], 1.0 + 1.0)  # A cut after 1 s, then a B's 1 s
    assert np.allclose(t[~cut], 1.0)


# ----------------------------------------------------------------------------- known optimum


def bernoulli_problems(p: float, count: int, rollouts: int, tokens: int = 100) -> list:
    """Problems whose rollouts are right with probability p (exactly round(p R) of R), else
    give no answer: the vote is right iff a sample holds a right one, 1 - (1 - p)^N."""
    right = round(p * rollouts)
    return [
        one_call_problem(
            f"q{i}", [TRUTH] * right + [None] * (rollouts - right), [1.0] * rollouts, tokens
        )
        for i in range(count)
    ]


@pytest.mark.parametrize(("limit", "best_n"), [(70.0, 4), (300.0, 8)])
def test_the_tuner_picks_the_largest_n_that_fits(tmp_path, limit, best_n):
    """Saturated throughput (100 tokens/s in all): a 100-token call takes N seconds, so 10
    problems need 10 N seconds. With 60 usable seconds only N=4 fits; with 290 both do and
    the larger N is more accurate."""
    traces = bernoulli_problems(0.25, count=10, rollouts=64)
    rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
    table = tmp_path / "tps.json"
    ThroughputTable(concurrency=(1.0,), tokens_per_s=(100.0,)).to_json(table)
    report = tune(
        TuneOptions(
            preset="demo-cpu",
            time_limit_s=limit,
            problems=10,
            n=[4, 8],
            m=[1],
            max_tokens=[256],
            cap_s=[60],
            early_stop=["none"],
            replicates=100,
            time_model="throughput",
            throughput=str(table),
            startup_s=0,
            overhead_s=0,
            out_dir=tmp_path / "out",
            plot=False,
        ),
        recorded=rec,
    )
    by_n = {row.candidate.n: row.result for row in report.rows}
    p = 16 / 64
    for n, result in by_n.items():
        assert result.accuracy_unhurried == pytest.approx(1 - (1 - p) ** n, abs=0.03)
        assert result.demand_s == pytest.approx(10 * n)
    assert report.recommended.candidate.n == best_n
    assert report.meets_constraints
    if limit == 70.0:
        assert by_n[8].p_overrun == 1.0 and by_n[4].p_overrun == 0.0
        assert by_n[8].squeezed_share > 0 and by_n[8].time_s <= limit
    written = get_preset(str(report.preset_path))
    assert written.engine.num_rollouts == best_n
    assert written.budget.total_s == limit


def test_early_stop_that_loses_nothing_wins_on_time(tmp_path):
    """Every rollout is right and rollout r takes r + 1 seconds: stopping at two agreeing
    answers keeps accuracy 1 and needs ~the second fastest of 8 instead of the slowest."""
    traces = [
        one_call_problem(f"e{i}", [TRUTH] * 16, [float(r + 1) for r in range(16)]) for i in range(5)
    ]
    rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
    for limit, p_none in ((110.0, 1.0), (1000.0, 0.0)):
        report = tune(
            TuneOptions(
                preset="demo-cpu",
                time_limit_s=limit,
                problems=10,
                n=[8],
                m=[1],
                max_tokens=[256],
                cap_s=[60],
                early_stop=["none", "agree2"],
                replicates=100,
                startup_s=0,
                overhead_s=0,
                out_dir=tmp_path / f"out{limit:g}",
                plot=False,
            ),
            recorded=rec,
        )
        by_rule = {row.candidate.early_stop: row.result for row in report.rows}
        assert by_rule["agree2"].accuracy_unhurried == by_rule["none"].accuracy_unhurried == 1.0
        # the budget squeezes "none"; agree2 only when a draw's second finisher is later than
        # the first problems' ~9.5 s share (no front-loading since the time bank)
        assert by_rule["agree2"].accuracy >= 0.99
        assert by_rule["agree2"].accuracy == 1.0 or limit == 110.0
        assert (by_rule["none"].accuracy < 1.0) == (limit == 110.0)
        assert by_rule["agree2"].demand_s < 0.5 * by_rule["none"].demand_s
        assert by_rule["agree2"].early_stop_share >= 0.99
        assert by_rule["agree2"].early_stop_share == 1.0 or limit == 110.0
        assert by_rule["none"].p_overrun == p_none
        assert report.recommended.candidate.early_stop == "agree2"


def test_the_time_bank_lends_what_easy_problems_saved_to_hard_ones(tmp_path):
    """Five easy problems (every rollout right after 1 s) and five hard ones (right after
    50 s) in 10 slots with ~30 s each on an even split: the even split only reaches 50 s for
    a hard problem late in the run, while a 25 s base with a 30 s borrow cap lends any hard
    problem after an easy one what that one saved. The tuner finds the bank and writes it."""
    traces = [one_call_problem(f"e{i}", [TRUTH] * 8, [1.0] * 8) for i in range(5)]
    traces += [one_call_problem(f"h{i}", [TRUTH] * 8, [50.0] * 8) for i in range(5)]
    rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
    report = tune(
        TuneOptions(
            preset="demo-cpu",
            time_limit_s=320.0,
            problems=10,
            n=[4],
            m=[1],
            max_tokens=[256],
            cap_s=[60],
            early_stop=["none"],
            base_s=[None, 25.0],
            borrow_s=[0.0, 30.0],
            replicates=100,
            startup_s=0,
            overhead_s=0,
            out_dir=tmp_path / "out",
            plot=False,
        ),
        recorded=rec,
    )
    by_bank = {(r.candidate.base_s, r.candidate.borrow_s): r.result for r in report.rows}
    assert sorted(by_bank, key=str) == [(25.0, 0.0), (25.0, 30.0), (None, 0.0)]
    assert by_bank[(25.0, 0.0)].accuracy == pytest.approx(0.5, abs=0.1)  # no hard one solved
    assert by_bank[(25.0, 30.0)].accuracy > by_bank[(None, 0.0)].accuracy + 0.1
    assert all(r.p_over_limit == 0.0 for r in by_bank.values())
    best = report.recommended.candidate
    assert (best.base_s, best.borrow_s) == (25.0, 30.0)
    written = get_preset(str(report.preset_path))
    assert (written.budget.base_s, written.budget.borrow_s) == (25.0, 30.0)


def test_default_grid_sets_the_preset_bank_against_the_even_split():
    from kaggle_submission.offline.tune import candidate_grid

    traces = bernoulli_problems(0.5, count=4, rollouts=8)
    rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
    preset = PRESETS["aimo2-l4x4"]
    options = TuneOptions(preset=preset.name, n=[4], m=[1], max_tokens=[100], early_stop=["none"])
    cands = candidate_grid(options, preset, rec, [])
    assert [(c.base_s, c.borrow_s) for c in cands] == [(None, 0.0), (350.0, 210.0)]
    wide = TuneOptions(**{**options.__dict__, "base_s": [300.0, None], "borrow_s": [0.0, 210.0]})
    assert [(c.base_s, c.borrow_s) for c in candidate_grid(wide, preset, rec, [])] == [
        (None, 0.0),
        (300.0, 0.0),
        (300.0, 210.0),
    ]


def test_the_simulated_budget_keeps_the_per_call_limit(tmp_path):
    """aimo2's adapter allows 30 min per call: a 3000 s cap is clamped to 1800 - 2 - 120 s in
    the simulation too (rollouts needing 2000 s never finish there) and a note says so."""
    traces = [one_call_problem(f"s{i}", [TRUTH] * 8, [2000.0] * 8) for i in range(4)]
    rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
    options = dict(
        preset="aimo2-l4x4",
        time_limit_s=40_000.0,
        problems=4,
        n=[4],
        m=[1],
        max_tokens=[256],
        early_stop=["none"],
        base_s=[None],
        replicates=20,
        startup_s=0,
        overhead_s=0,
        plot=False,
    )
    report = tune(TuneOptions(**options, cap_s=[3000], out_dir=tmp_path / "a"), recorded=rec)
    (row,) = report.rows
    assert row.result.accuracy == 0.0 and row.result.accuracy_unhurried == 0.0
    assert any("per-call limit" in note for note in report.warnings)
    # the same on AIMO-1, which has no per-call limit: the 3000 s cap lets them finish
    options["preset"] = "aimo1-t4x2"
    report = tune(TuneOptions(**options, cap_s=[3000], out_dir=tmp_path / "b"), recorded=rec)
    (row,) = report.rows
    assert row.result.accuracy == 1.0
    assert not any("per-call limit" in note for note in report.warnings)


# ----------------------------------------------------------------------------- CI coverage


def majority_truth(q: float, n: int) -> float:
    """P(vote right) when a rollout is right w.p. q, else says 5 or nothing with equal odds;
    a tie goes to the first finisher (right half the time, finish times being iid)."""
    total = 0.0
    for x, y in product(range(n + 1), repeat=2):
        z = n - x - y
        if z < 0:
            continue
        prob = (
            math.factorial(n)
            / (math.factorial(x) * math.factorial(y) * math.factorial(z))
            * q**x
            * ((1 - q) / 2) ** (y + z)
        )
        total += prob * (1.0 if x > y else 0.5 if x == y > 0 else 0.0)
    return total


TYPES = (0.2, 0.5, 0.8)


def random_world(rng: np.random.Generator, problems: int, rollouts: int) -> list[SolveTrace]:
    traces = []
    for i in range(problems):
        q = TYPES[rng.integers(len(TYPES))]
        u = rng.random(rollouts)
        answers = [TRUTH if v < q else WRONG if v < q + (1 - q) / 2 else None for v in u]
        traces.append(one_call_problem(f"w{i}", answers, list(rng.random(rollouts) * 10)))
    return traces


@pytest.mark.slow
def test_accuracy_interval_covers_the_truth_at_about_its_level():
    """90% intervals from 60 independent recordings (20 problems drawn from three difficulty
    types, 24 rollouts each) cover the analytic expected accuracy about 90% of the time."""
    n, seeds = 4, 60
    truth = sum(majority_truth(q, n) for q in TYPES) / len(TYPES)
    cand = Candidate(n=n, m=1, max_tokens=256, cap_s=60.0, early_stop="agree3")
    covered = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        traces = random_world(rng, problems=20, rollouts=24)
        rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
        config = sim_config(problems=20, replicates=200, seed=seed)
        (result,) = Simulator(rec, BudgetConfig(), config).run([cand])
        covered.append(result.acc_lo <= truth <= result.acc_hi)
    assert 0.75 <= np.mean(covered) <= 0.99


# ----------------------------------------------------------------------------- throughput


def test_fit_recovers_a_throughput_table():
    """c rollouts decoding together for 10 s at tps(c)/c tokens/s each."""
    tps = {4: 60.0, 8: 80.0, 16: 96.0}
    traces = []
    for c, rate in tps.items():
        for k in range(2):
            tokens = round(rate / c * 10)
            traces.append(one_call_problem(f"c{c}-{k}", [TRUTH] * c, [10.0] * c, tokens))
    rec = build_recorded([traces], {t.problem_id: TRUTH for t in traces}, POLICY)
    table = fit_table(rec)
    assert table.concurrency == (4.0, 8.0, 16.0)
    assert table.tokens_per_s == pytest.approx(list(tps.values()), rel=0.05)
    assert table.per_rollout(2) == pytest.approx(15.0, rel=0.05)  # no faster than at c=4
    assert table.tps(64) == pytest.approx(table.tps(16))  # saturated beyond the table


def test_default_t4_table_is_a_sane_assumption():
    table = roofline_table("t4x2")
    rates = np.array(table.tokens_per_s)
    assert np.all(np.diff(rates) > 0)
    assert np.all(np.diff(rates / np.array(table.concurrency)) < 0)
    assert 15 < table.tps(1) < 60 and 200 < table.tps(48) < 1500
    assert "ASSUMPTION" in table.source


# ----------------------------------------------------------------------------- capacity


def test_capacity_check_uses_the_kv_cache_estimate():
    """2xT4, 8-bit NuminaMath-7B: ~38k cache tokens; 8 rollouts of 1100 tokens fit, 48 don't."""
    calls = [(1000, 1.0, 0.1)] * 3 + [(1000, 1.0, None)]
    trace = make_trace(
        "long", [make_rollout(i, calls, "answered", TRUTH) for i in range(48)], max_calls=4
    )
    rec = build_recorded([[trace]], {"long": TRUTH}, POLICY)
    cands = [Candidate(n, 4, 1024, 600.0) for n in (8, 48)]
    checks = capacity_checks(PRESETS["aimo1-t4x2"], rec, cands, None)
    layouts = estimate(ModelShape.from_config(NUMINAMATH_7B), "t4x2", bits=8, memory_fraction=0.92)
    available = layouts[0].cache_tokens_per_engine  # tensor parallel: one engine
    small, large = (checks[c] for c in cands)
    assert small.available == large.available == available
    assert small.context == 1100  # 100 prompt tokens + 1000 generated
    assert small.ok and not large.ok and large.needed == 48 * 1100
    short = capacity_checks(PRESETS["aimo1-t4x2"], rec, [Candidate(48, 4, 256, 600.0)], None)
    assert next(iter(short.values())).context == 356  # calls cut at 256 tokens
    cpu = capacity_checks(PRESETS["demo-cpu"], rec, cands, None)
    assert all(c.ok and c.available is None for c in cpu.values())


# ----------------------------------------------------------------------------- CLI and files


def test_cli_reads_traces_and_summary_truth(tmp_path, capsys):
    run = tmp_path / "run"
    writer = TraceWriter(run / "traces.jsonl")
    traces = bernoulli_problems(0.5, count=4, rollouts=8)
    for trace in traces:
        writer.write(trace)
    per_problem = [{"problem_id": t.problem_id, "truth": TRUTH} for t in traces]
    (run / "summary.json").write_text(json.dumps({"per_problem": per_problem}))
    parser = argparse.ArgumentParser()
    add_tune_parser(parser.add_subparsers())
    out = tmp_path / "tune"
    args = parser.parse_args(
        ["tune", str(run), "--preset", "demo-cpu", "--time-limit", "10m", "--problems", "8",
         "--n", "2,4", "--m", "1", "--cap", "30", "--early-stop", "none,agree2@0",
         "--base", "even,20", "--borrow", "0,10", "--replicates", "50", "--out", str(out)]
    )  # fmt: skip
    assert args.base == [None, 20.0] and args.borrow == [0.0, 10.0]
    assert args.func(args) == 0
    assert "recommended: N4" in capsys.readouterr().out
    for name in ("candidates.csv", "candidates.md", "pareto.png", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recorded"]["problems"] == 4 and summary["meets_constraints"]
    preset = get_preset(str(out / "recommended_preset.json"))
    assert preset.engine.num_rollouts == 4 and preset.budget.cap_s == 30
    assert preset.name == "demo-cpu-tuned"
    rows = list(csv.DictReader(open(out / "candidates.csv")))  # noqa: SIM115
    banks = {(r["base_s"], r["borrow_s"]) for r in rows}
    assert banks == {("", "0.0"), ("20.0", "0.0"), ("20.0", "10.0")}  # even: nothing to borrow
    assert {r["early_stop"] for r in rows} == {"none", "agree2@0"}
    best = next(r for r in rows if r["recommended"] == "True")
    assert str(preset.budget.base_s) == (best["base_s"] or "None")
    assert preset.budget.borrow_s == float(best["borrow_s"])


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_on_a_real_dry_run(tiny_model_dir, tmp_path):
    """Dry run with the tiny model -> tune its traces -> a dry run with the written preset."""
    from kaggle_submission.offline.dryrun import DryRunOptions, dry_run

    record = tmp_path / "record"
    dry_run(
        DryRunOptions(
            data="aimo1-train",
            limit=2,
            model=str(tiny_model_dir),
            backend="transformers",
            out_dir=record,
            overrides={
                "engine.num_rollouts": 4,
                "engine.max_calls": 2,
                "engine.max_tokens_per_call": 8,
                "engine.early_stop": None,
            },
        ),
        stream=open(tmp_path / "log1", "w"),  # noqa: SIM115
    )
    report = tune(
        TuneOptions(
            traces=[str(record)],
            preset="demo-cpu",
            time_limit_s=600,
            problems=10,
            n=[2, 4],
            m=[1, 2],
            max_tokens=[4, 8],
            early_stop=["none", "agree2"],
            replicates=50,
            out_dir=tmp_path / "tune",
        ),
        stream=open(tmp_path / "log2", "w"),  # noqa: SIM115
    )
    assert len(report.rows) == 16
    assert (tmp_path / "tune" / "pareto.png").stat().st_size > 1000
    path = report.preset_path
    preset = get_preset(str(path))
    best = report.recommended.candidate
    assert (preset.engine.num_rollouts, preset.engine.max_calls) == (best.n, best.m)
    assert preset.engine.max_tokens_per_call == best.max_tokens
    summary = dry_run(
        DryRunOptions(
            data="aimo1-train",
            preset=str(path),
            limit=1,
            model=str(tiny_model_dir),
            backend="transformers",
            out_dir=tmp_path / "replay",
        ),
        stream=open(tmp_path / "log3", "w"),  # noqa: SIM115
    )
    assert summary["problems"] == 1 and summary["preset"] == "demo-cpu-tuned"
    trace = json.loads(Path(tmp_path / "replay" / "traces.jsonl").read_text().splitlines()[0])
    assert trace["config"]["num_rollouts"] == best.n
