"""How late `solve` returns after its deadline: what the Solver's hang grace must cover.

    python bench/bench_drain.py [--quick]

N=48 rollouts, M=4, on a replay backend with heavy-tailed recorded call latencies (log-normal,
median 1.5 s, some calls 10 s+) and sandbox sessions running sympy between calls, so that at
the deadline most rollouts are mid-generation or mid-execution. Each trial sets a deadline
between 1 and 4 s and measures the return time minus the deadline: cancelling every rollout,
waiting `drain_seconds` for them, closing their sessions, voting and building the trace.

The baseline in the same run is the old watchdog grace, `budget.margin_s` (2 s): a drain that
exceeds the grace is a false "hang" that throws away the vote and rebuilds the engine. The
figures set EngineConfig.hang_grace_s (median, p95 and max printed with the headroom factor).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.backends.replay import ReplayBackend
from kaggle_submission.budget import BudgetConfig
from kaggle_submission.config import EngineConfig
from kaggle_submission.engine import solve_async
from kaggle_submission.prompts import format_prompt
from kaggle_submission.sandbox import Sandbox, SandboxConfig
from kaggle_submission.stopping import NEVER_STOP
from kaggle_submission.traces import GenerationSegment, RolloutTrace, SolveTrace, VoteTrace

PROBLEM = "Factor x**8 - 1 and count the factors."
OUT = "```output"
CODE = (
    "Let us factor.\n```python\nimport sympy as sp\nx = sp.symbols('x')\n"
    f"print(len(sp.factor_list(x**8 - 1)[1]))\n```\n{OUT}"
)


def recorded(n: int, m: int, rng: random.Random) -> SolveTrace:
    """N rollouts of M-1 code calls then an answer, each call with a log-normal latency."""
    rollouts = []
    for i in range(n):
        segments = []
        for call in range(m):
            text = CODE if call < m - 1 else "\nSo the answer is \\boxed{4}."
            stop = OUT if text.endswith(OUT) else None
            seconds = rng.lognormvariate(0.4, 0.8)  # median ~1.5 s, tail past 10 s
            segments.append(
                GenerationSegment(
                    call, 0, text, "stop" if stop else "eos", stop, 50, 40, 0.0, seconds
                )
            )
        rollouts.append(RolloutTrace(index=i, segments=segments))
    return SolveTrace(
        problem_id="drain",
        problem=PROBLEM,
        prompt=format_prompt(PROBLEM),
        answer=4,
        stop_reason="finished",
        started_at=0.0,
        seconds=0.0,
        budget_s=None,
        config={},
        backend={},
        vote=VoteTrace({}, 0, n, 0.0, True),
        rollouts=rollouts,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 trials instead of 20")
    args = parser.parse_args()
    trials = 5 if args.quick else 20
    n, m = 48, 4
    config = EngineConfig(num_rollouts=n, max_calls=m, early_stop=NEVER_STOP)
    overruns: list[float] = []
    in_flight: list[int] = []
    rng = random.Random(0)
    with Sandbox(SandboxConfig(timeout_s=5.0, spare_workers=n)) as sandbox:
        for trial in range(trials):
            backend = ReplayBackend([recorded(n, m, rng)], latency="recorded", strict=True)
            budget = rng.uniform(1.0, 4.0)
            start = time.monotonic()
            solution = asyncio.run(
                solve_async(
                    PROBLEM,
                    backend=backend,
                    sandbox=sandbox,
                    config=config,
                    deadline=start + budget,
                )
            )
            overruns.append(time.monotonic() - (start + budget))
            in_flight.append(sum(r.status == "cancelled" for r in solution.trace.rollouts))
            print(
                f"trial {trial:2d}: deadline {budget:.2f} s, {in_flight[-1]:2d} rollouts "
                f"cancelled, returned {overruns[-1] * 1000:7.1f} ms late",
                flush=True,
            )
            time.sleep(0.5)  # let the spare interpreters refill, as between problems
    median = statistics.median(overruns)
    p95, worst = percentile(overruns, 0.95), max(overruns)
    margin = BudgetConfig().margin_s
    print()
    print(f"drain after the deadline, N={n}, {trials} trials, sandbox sessions live:")
    print(f"  median {median * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    print(f"  rollouts in flight at the deadline: median {statistics.median(in_flight):.0f}")
    print(f"  baseline: old grace budget.margin_s = {margin:.1f} s ({margin / worst:.0f}x max)")
    grace = EngineConfig().hang_grace_s
    print(f"  EngineConfig.hang_grace_s = {grace:.1f} s ({grace / worst:.0f}x the max drain)")


if __name__ == "__main__":
    main()
