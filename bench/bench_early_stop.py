"""Early stop: accuracy against time, no stop and the old rule side by side, on synthetic rollouts.

    python bench/bench_early_stop.py [--problems 4000] [--n 48 64] [--seed 0] [--quick]

Why synthetic: no recorded traces of a real model ship with the repository (runs/ is ignored and
the demo model's traces are all right). Each problem draws the share q of its rollouts that
answer right from a Beta whose mean is calibrated so that maj@N is about 60% (the AIMO-1
winner's maj@48 on AMC-like problems); 15% of rollouts give no valid answer; wrong answers go to
1-8 distractors with Dirichlet(0.6) shares, and in 30% of problems one "trap" distractor takes
80% of the wrong mass. Finishing times are log-normal (sigma 0.6) around a per-problem scale.
Three scenarios: finishing time independent of the answer, wrong rollouts 1.3x slower (long
solutions go wrong more often), and wrong ones 1.3x faster (the adversarial case for any early
stop).

Each rule is applied exactly as the engine does (asked after each finish while others still run,
on the valid answers in finishing order), through `tuning.simulate.stop_tables`, which a scalar
check against `ConsensusStop` itself confirms on a sample first. Printed per rule: accuracy
(maj over what finished before the stop), its paired change against no stop (with 2 standard
errors), the mean fraction of the problem's wall time used (stop time over the time the last
rollout finishes) and of rollout-seconds (GPU work), and the share of problems stopped early.
The chosen default is the one that saves the most time (mean over scenarios and N) while losing
at most 0.5 pp in every scenario at every N (48: AIMO-1 preset, 64: AIMO-2/3 presets).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.offline.tuning.simulate import stop_tables
from kaggle_submission.stopping import ConsensusStop, StopView

P_INVALID = 0.15
CONCENTRATION = 1.2  # Beta(a, b) with a + b = 1.2: U-shaped, many problems easy or hopeless
TARGET_MAJ = 0.60
MAX_LOSS_PP = 0.5
SCENARIOS = {"independent": 1.0, "wrong-slower": 1.3, "wrong-faster": 1 / 1.3}


@dataclass(frozen=True)
class Rollouts:
    """Per problem (rows) and rollout: finish time, answer id (0 = right, -1 = invalid)."""

    t: np.ndarray
    a: np.ndarray


def draw(rng: np.random.Generator, problems: int, n: int, mean_q: float, wrong_speed: float):
    a_param = mean_q * CONCENTRATION
    q = rng.beta(a_param, CONCENTRATION - a_param, size=problems)
    answers = np.full((problems, n), -1, int)
    for i in range(problems):
        d = int(rng.integers(1, 9))
        shares = rng.dirichlet(np.full(d, 0.6))
        if rng.random() < 0.3:  # a trap: one distractor takes most wrong answers
            shares = np.concatenate([[0.8], 0.2 * shares[1:] / max(shares[1:].sum(), 1e-12)])
            shares = shares[:d] if d > 1 else np.array([1.0])
        probs = np.concatenate([[P_INVALID], (1 - P_INVALID) * q[i] * np.ones(1)])
        wrong = (1 - P_INVALID) * (1 - q[i]) * shares
        probs = np.concatenate([probs, wrong])
        pick = rng.choice(len(probs), size=n, p=probs / probs.sum())
        answers[i] = pick - 1  # -1 invalid, 0 right, 1..d distractors
    scale = np.exp(rng.normal(0.0, 0.5, size=(problems, 1)))
    t = scale * np.exp(rng.normal(0.0, 0.6, size=(problems, n)))
    t = np.where(answers > 0, t * wrong_speed, t)
    return Rollouts(t, answers)


def evaluate(r: Rollouts, rule: ConsensusStop | None) -> dict[str, np.ndarray]:
    rows, n = r.a.shape
    w = np.ones_like(r.t)
    truth = np.zeros(rows, int)
    ts, stop_idx, correct, _answered = stop_tables(r.t, r.a, w, truth, np.zeros(rows, bool), rule)
    idx = np.arange(rows)
    stop_t = ts[idx, stop_idx]
    work = np.minimum(r.t, stop_t[:, None]).sum(axis=1) / r.t.sum(axis=1)
    return {
        "right": correct[idx, stop_idx + 1],
        "time": stop_t / ts[:, -1],
        "work": work,
        "early": stop_idx < n - 1,
        "stop_idx": stop_idx,
    }


def scalar_stop_idx(t: np.ndarray, a: np.ndarray, rule: ConsensusStop) -> int:
    """The engine's loop: after each finish, ask the rule about the valid answers so far."""
    order = np.argsort(t, kind="stable")
    n = len(order)
    answers: list[int] = []
    for k, j in enumerate(order[:-1]):
        if a[j] >= 0:
            answers.append(int(a[j]))
        view = StopView(tuple(answers), (1.0,) * len(answers), k + 1, n - k - 1, n)
        if rule(view):
            return k
    return n - 1


def calibrate(rng_seed: int, n: int) -> float:
    """Beta mean of q for which maj@n is TARGET_MAJ (bisection on 2000 problems)."""
    lo, hi = 0.2, 0.8
    for _ in range(12):
        mid = (lo + hi) / 2
        r = draw(np.random.default_rng(rng_seed), 2000, n, mid, 1.0)
        acc = evaluate(r, None)["right"].mean()
        lo, hi = (mid, hi) if acc < TARGET_MAJ else (lo, mid)
    return (lo + hi) / 2


def rules() -> dict[str, ConsensusStop | None]:
    grid: dict[str, ConsensusStop | None] = {
        "none": None,
        "old: agree4 (share 0) + lead": ConsensusStop(agree=4, min_share=0.0),
        "lead only": ConsensusStop(agree=None),
        "4 of first 5 (share 0) + lead": ConsensusStop(agree=4, min_share=0.0, within_first=5),
    }
    for agree in (3, 4, 5, 6, 8, 10):
        for share in (0.5, 0.6, 0.7, 0.8):
            grid[f"agree{agree} share{share:g} + lead"] = ConsensusStop(
                agree=agree, min_share=share
            )
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=4000)
    parser.add_argument("--n", type=int, nargs="+", default=[48, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="500 problems")
    args = parser.parse_args()
    problems = 500 if args.quick else args.problems
    tables = [table_for(n, problems, args.seed) for n in args.n]
    worst = {label: max(t[label][1] for t in tables) for label in tables[0]}
    mean_time = {label: float(np.mean([t[label][2] for t in tables])) for label in tables[0]}
    ok = [label for label in tables[0] if tables[0][label][0] is not None]
    ok = [label for label in ok if worst[label] <= MAX_LOSS_PP]
    best = min(ok, key=lambda label: mean_time[label])
    old = next(label for label in tables[0] if label.startswith("old"))
    ns = ", ".join(str(n) for n in args.n)
    print(
        f"\nchosen (most time saved, loses <= {MAX_LOSS_PP} pp in every scenario, N in {ns}): "
        f"{best} | worst loss {worst[best]:.2f} pp, mean time used {mean_time[best]:.2f}\n"
        f"old rule: worst loss {worst[old]:.2f} pp, mean time used {mean_time[old]:.2f}"
    )


def table_for(n: int, problems: int, seed: int) -> dict[str, tuple]:
    """Print one N's table; (rule, worst loss in pp, mean time used) per rule label."""
    mean_q = calibrate(seed + 1, n)
    print(
        f"\nN={n}, {problems} problems per scenario; q ~ Beta, mean {mean_q:.3f}, "
        f"a+b={CONCENTRATION} (maj@{n} calibrated to {TARGET_MAJ:.0%} when independent)"
    )

    data = {
        name: draw(np.random.default_rng(seed), problems, n, mean_q, speed)
        for name, speed in SCENARIOS.items()
    }
    # the vectorised rule is the engine's: check it against ConsensusStop itself on a sample
    sample = data["independent"]
    for rule in (r for r in rules().values() if r is not None):
        fast = evaluate(Rollouts(sample.t[:150], sample.a[:150]), rule)["stop_idx"]
        slow = [scalar_stop_idx(sample.t[i], sample.a[i], rule) for i in range(150)]
        assert list(fast) == slow, rule
    print("vectorised rules match ConsensusStop on 150 problems x every rule\n")

    base = {name: evaluate(r, None) for name, r in data.items()}
    header = f"{'rule':32}" + "".join(
        f" | {name[:12]:>12} acc  d(pp)+-2se  time  work early" for name in SCENARIOS
    )
    print(header)
    print("-" * len(header))
    table = []
    for label, rule in rules().items():
        cells, worst_loss, mean_time = [], 0.0, 0.0
        for name, r in data.items():
            res = evaluate(r, rule)
            diff = res["right"].astype(float) - base[name]["right"].astype(float)
            d, se = 100 * diff.mean(), 100 * diff.std(ddof=1) / np.sqrt(len(diff))
            worst_loss = max(worst_loss, -d)
            mean_time += res["time"].mean() / len(data)
            cells.append(
                f" | {res['right'].mean():17.3f} {d:+5.2f}+-{2 * se:4.2f} {res['time'].mean():5.2f}"
                f" {res['work'].mean():5.2f} {res['early'].mean():5.2f}"
            )
        table.append((label, rule, worst_loss, mean_time))
        print(f"{label:32}" + "".join(cells))

    return {label: (rule, loss, time) for label, rule, loss, time in table}


if __name__ == "__main__":
    main()
