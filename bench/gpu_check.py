"""GPU check: the transformers backend on CUDA, and the budget manager against it.

    python bench/gpu_check.py [--out DIR]

What it runs (and prints), on whatever CUDA GPU is present, with CPU figures side by side:
1. A tiny random Llama (built here from a config; no download) through the real loading path
   of the transformers backend: decode throughput at 8, 32 and 64 concurrent requests on CUDA
   and on the CPU.
2. The SC-TIR engine (sandbox started before CUDA, as in the kernel) solving problems with
   N=16, M=2 under per-problem deadlines from the budget manager: time used against each
   allocation, the overrun past the deadline, and the total against the run's limit.
vLLM is not part of this check: its wheel cannot be carried to the GPU machine (see README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kaggle_submission.sandbox import Sandbox, SandboxConfig  # noqa: E402  (before CUDA)


def throughput(backend, concurrency: int, tokens: int) -> float:
    from kaggle_submission.backends.base import GenerationRequest, SamplingParams

    async def run() -> int:
        requests = [
            GenerationRequest(
                f"r{i}",
                f"### Problem: What is {i} + {i}?\n### Solution: ",
                SamplingParams(temperature=1.0, max_tokens=tokens, seed=i),
            )
            for i in range(concurrency)
        ]
        done = await asyncio.gather(*(backend.generate(r) for r in requests))
        return sum(c.completion_tokens for c in done)

    start = time.perf_counter()
    generated = asyncio.run(run())
    return generated / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write gpu_check.json here")
    args = parser.parse_args()
    sandbox = Sandbox(SandboxConfig(timeout_s=5.0)).start()

    import torch
    from tiny_models import build_tiny_llama

    from kaggle_submission.backends.transformers_backend import TransformersBackend
    from kaggle_submission.budget import Budget, BudgetConfig
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import Solver
    from kaggle_submission.stopping import NEVER_STOP

    results: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        results["gpu"] = torch.cuda.get_device_name(0)
        results["capability"] = list(torch.cuda.get_device_capability(0))
    print(json.dumps(results))
    model_dir = build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny")
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    rows = []
    for device in devices:
        backend = TransformersBackend(model_dir, device=device)
        throughput(backend, 4, 8)  # warm-up
        for concurrency in (8, 32, 64):
            tps = throughput(backend, concurrency, 128)
            rows.append({"device": device, "concurrency": concurrency, "tokens_per_s": tps})
            print(
                f"decode  {device:4s} concurrency {concurrency:3d}: {tps:9.0f} tokens/s", flush=True
            )
        asyncio.run(backend.aclose())
    results["throughput"] = rows

    device = devices[0]
    budget = Budget(
        BudgetConfig(
            total_s=40,
            num_problems=5,
            startup_reserve_s=0,
            safety_s=2,
            cap_s=6,
            margin_s=1.0,
        )
    )
    budget.started()
    config = EngineConfig(
        num_rollouts=16,
        max_calls=2,
        max_tokens_per_call=256,
        temperature=1.0,
        early_stop=NEVER_STOP,
    )
    solves = []
    with Solver(TransformersBackend(model_dir, device=device), sandbox, config) as solver:
        for i in range(5):
            allocation = budget.allocate()
            start = time.monotonic()
            solution = solver.solve(f"What is {i} * 7?", allocation.deadline, f"p{i}")
            used = time.monotonic() - start
            budget.finish()
            tokens = sum(r.completion_tokens for r in solution.trace.rollouts)
            solves.append(
                {
                    "allocated_s": allocation.seconds,
                    "used_s": used,
                    "overrun_s": time.monotonic() - allocation.deadline,
                    "stop_reason": solution.stop_reason,
                    "tokens": tokens,
                }
            )
            print(
                f"solve   {device} p{i}: allocated {allocation.seconds:5.2f} s, used "
                f"{used:5.2f} s, past deadline {solves[-1]['overrun_s']:+.3f} s, "
                f"{solution.stop_reason}, {tokens} tokens",
                flush=True,
            )
    total = time.monotonic() - budget.run_started
    results["solves"] = solves
    results["total_s"] = total
    print(
        f"budget  total {total:.1f} s of a 40 s limit (safety 2 s); "
        f"max past-deadline {max(s['overrun_s'] for s in solves):+.3f} s"
    )
    sandbox.close()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
