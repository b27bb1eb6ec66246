"""Engine benchmarks: orchestration overhead, and the cost of a round barrier.

    python bench/bench_engine.py [--quick]

1. Overhead: `solve` with N=48, M=4 on a zero-latency replay backend whose rollouts each run
   three trivial code blocks and then answer: everything but the model (tasks, sandbox sessions
   and calls, rules, vote, trace). Target: at most 0.5 s per problem on 2 cores. Measured with
   interpreters forked on demand and with N spares forked ahead (the kernel's setting), which
   refill between problems.
2. Barrier: the same N=48, M=4 on the scripted backend with heavy-tailed (log-normal) call
   latencies, with and without the winner's round barrier, in one run; the wall-time ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.backends.base import GenerationRequest
from kaggle_submission.backends.replay import ReplayBackend
from kaggle_submission.backends.scripted import ScriptedBackend
from kaggle_submission.config import EngineConfig
from kaggle_submission.engine import solve_async
from kaggle_submission.prompts import format_prompt
from kaggle_submission.sandbox import Sandbox, SandboxConfig
from kaggle_submission.stopping import NEVER_STOP
from kaggle_submission.traces import (
    GenerationSegment,
    RolloutTrace,
    SolveTrace,
    VoteTrace,
)

PROBLEM = "Compute 1 + 1."
OUT = "```output"


def overhead_trace(n: int, m: int) -> SolveTrace:
    code = f"Step.\n```python\nprint(1 + 1)\n```\n{OUT}"
    texts = [code] * (m - 1) + ["\nSo \\boxed{2}."]
    rollouts = [
        RolloutTrace(
            index=i,
            segments=[
                GenerationSegment(
                    c,
                    0,
                    t,
                    "stop" if t.endswith(OUT) else "eos",
                    OUT if t.endswith(OUT) else None,
                    10,
                    5,
                    0.0,
                    0.0,
                )
                for c, t in enumerate(texts)
            ],
        )
        for i in range(n)
    ]
    return SolveTrace(
        "bench",
        PROBLEM,
        format_prompt(PROBLEM),
        0,
        "finished",
        0.0,
        0.0,
        None,
        {},
        {},
        VoteTrace({}, 0, n, 0.0, True),
        rollouts,
    )


def wait_for_spares(sandbox: Sandbox, count: int, limit_s: float = 30.0) -> None:
    """Steady state of a run: the kernel refills its spares while the next problem loads."""
    deadline = time.monotonic() + limit_s
    while len(sandbox.spare_pids) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def heavy_tail(seed: int):
    def latency(request: GenerationRequest) -> float:
        rng = random.Random(f"{seed}-{request.rollout}-{request.call}")
        return min(2.0, 0.05 * rng.lognormvariate(0.0, 1.0))

    return latency


def tir_rounds(request: GenerationRequest) -> str:
    if request.prompt.count(OUT) < 3:
        return f"Step.\n```python\nprint(1 + 1)\n```\n{OUT}"
    return "\nSo \\boxed{2}."


async def timed(backend, sandbox, config) -> float:
    start = time.perf_counter()
    solution = await solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config)
    assert solution.answer == 2, solution.trace.to_json()[:2000]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    n, m = 48, 4
    config = EngineConfig(num_rollouts=n, max_calls=m, early_stop=NEVER_STOP)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    trace = overhead_trace(n, m)
    for spares in (0, n):
        with Sandbox(SandboxConfig(spare_workers=spares)) as sandbox:
            runs = []
            for _ in range(repeats):
                wait_for_spares(sandbox, spares)
                runs.append(asyncio.run(timed(ReplayBackend([trace]), sandbox, config)))
            label = "forked on demand" if not spares else f"{spares} spare interpreters"
            print(
                f"overhead  N={n} M={m}, {n * (m - 1)} code blocks, zero-latency replay, "
                f"{label}: median {statistics.median(runs):.3f} s per problem "
                f"(min {min(runs):.3f}, max {max(runs):.3f}; target <= 0.5 s)"
            )
    with Sandbox(SandboxConfig(spare_workers=n)) as sandbox:
        rows = []
        for seed in range(repeats):
            wait_for_spares(sandbox, n)
            walls = {}
            for barrier in (False, True):
                backend = ScriptedBackend(tir_rounds, latency=heavy_tail(seed))
                cfg = EngineConfig(
                    num_rollouts=n, max_calls=m, early_stop=NEVER_STOP, round_barrier=barrier
                )
                walls[barrier] = asyncio.run(timed(backend, sandbox, cfg))
            rows.append(walls)
        no_barrier = statistics.median(r[False] for r in rows)
        barrier = statistics.median(r[True] for r in rows)
        ratios = [r[True] / r[False] for r in rows]
        print(
            f"barrier   N={n} M={m}, log-normal call latency (median 0.05 s, cap 2 s): "
            f"no barrier {no_barrier:.3f} s, barrier {barrier:.3f} s, "
            f"ratio barrier/no-barrier median {statistics.median(ratios):.2f}x "
            f"over {repeats} seeds"
        )


if __name__ == "__main__":
    main()
