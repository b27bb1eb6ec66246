"""Benchmark of the code sandbox against a fresh ``python3 -c`` per block (the AIMO-1 winner's way).

Prints one table: per-block latency (warm session, isolated fork, fresh interpreter), kill-to-ready
after a C-level loop, throughput of 48 sessions x 4 blocks, and the memory (PSS) of 48 live
sessions plus the template, and the cost of one poll of the shared memory limit. Not a test: run
``python bench/bench_sandbox.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.sandbox import Sandbox, SandboxConfig, Session

PRINT_BLOCK = "print(1+1)"
SYMPY_BLOCK = "x = sp.symbols('x')\nsp.factor(x**8 - 1)"
SYMPY_FRESH_INPUT = "x = sp.symbols('x')\nsp.factor(x**8 - {k}**8)"  # new input: no cache hit
FRESH_PRELUDE = "import math, numpy as np, sympy as sp\n"
FRESH_SYMPY = "x = sp.symbols('x')\nprint(sp.factor(x**8 - 1))"  # the winner print()-wrapped it
THROUGHPUT_BLOCK = "n = {i}\ny = sp.symbols('y')\nsp.expand((y + n)**6).coeff(y, 3)"
SESSIONS = 48
BLOCKS_PER_SESSION = 4


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of fn over runs calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresh_python(code: str) -> None:
    """One block the winner's way: a new interpreter importing the prelude."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PRELUDE + code],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def pss_kib(pid: int) -> int:
    """Proportional set size of one process, from /proc/<pid>/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size of one process."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def kill_to_ready(session: Session) -> float:
    """Seconds from starting a C-level endless loop (1 s timeout) until ``print(1)`` answers."""
    start = time.perf_counter()
    result = session.run("sum(range(10**12))")
    assert result.timed_out
    assert session.run("print(1)").output == "1\n"
    return time.perf_counter() - start


def throughput(sandbox: Sandbox) -> tuple[float, float, list[Session]]:
    """(seconds to create the sessions, wall seconds for 48 x 4 sympy blocks, the sessions)."""
    start = time.perf_counter()
    sessions = [sandbox.session() for _ in range(SESSIONS)]
    created = time.perf_counter() - start
    failures: list[str] = []

    def rollout(i: int) -> None:
        for _ in range(BLOCKS_PER_SESSION):
            result = sessions[i].run(THROUGHPUT_BLOCK.format(i=i))
            expected = f"{20 * i**3}\n"
            if result.output != expected:
                failures.append(result.output)

    threads = [threading.Thread(target=rollout, args=(i,)) for i in range(SESSIONS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert not failures, failures[:3]
    return created, wall, sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    runs = 5 if args.quick else 20
    cores = len(os.sched_getaffinity(0))
    rows: list[tuple[str, str]] = []

    started = time.perf_counter()
    with Sandbox(SandboxConfig(timeout_s=1.0)) as sandbox:
        template_start = time.perf_counter() - started
        rows.append(("template start (imports + prelude + warm-up)", f"{template_start:.2f} s"))
        session = sandbox.session()
        warm_print = median_seconds(lambda: session.run(PRINT_BLOCK), runs)
        warm_sympy = median_seconds(lambda: session.run(SYMPY_BLOCK), runs)
        counter = iter(range(2, 10**6))
        warm_uncached = median_seconds(
            lambda: session.run(SYMPY_FRESH_INPUT.format(k=next(counter))), runs
        )
        fresh_print = median_seconds(lambda: fresh_python(PRINT_BLOCK), runs)
        fresh_sympy = median_seconds(lambda: fresh_python(FRESH_SYMPY), runs)
        rows += [
            ("(a) warm session, print(1+1), median", f"{warm_print * 1e3:.2f} ms"),
            ("(a) warm session, sp.factor(x**8-1), median", f"{warm_sympy * 1e3:.2f} ms"),
            (
                "(a) warm session, sp.factor(x**8-k**8), new k each run",
                f"{warm_uncached * 1e3:.2f} ms",
            ),
            ("(b) fresh python3 -c + imports, print(1+1), median", f"{fresh_print * 1e3:.0f} ms"),
            ("(b) fresh python3 -c + imports, sp.factor, median", f"{fresh_sympy * 1e3:.0f} ms"),
            ("    speed-up print(1+1) (target >= 50x)", f"{fresh_print / warm_print:.0f}x"),
            ("    speed-up sp.factor (target >= 50x)", f"{fresh_sympy / warm_sympy:.0f}x"),
            ("    speed-up sp.factor, new input each run", f"{fresh_sympy / warm_uncached:.0f}x"),
        ]
        ready = [kill_to_ready(session) for _ in range(3 if args.quick else 5)]
        rows.append(
            (
                "(c) kill-to-ready after C loop, timeout 1 s (target <= 1.3 s)",
                f"median {statistics.median(ready):.3f} s, max {max(ready):.3f} s",
            )
        )
        session.close()

        created, wall, sessions = throughput(sandbox)
        blocks = SESSIONS * BLOCKS_PER_SESSION
        rows.append((f"    create {SESSIONS} sessions (fork from template)", f"{created:.2f} s"))
        rows.append(
            (
                f"(d) {SESSIONS} sessions x {BLOCKS_PER_SESSION} sympy blocks, {cores} slots",
                f"{wall:.2f} s wall, {blocks / wall:.0f} blocks/s",
            )
        )
        template = sandbox.template_pid
        assert template is not None
        worker_pids = [s.pid for s in sessions if s.pid is not None]
        worker_pss = sum(pss_kib(pid) for pid in worker_pids)
        template_pss = pss_kib(template)
        total_rss = sum(rss_kib(pid) for pid in [template, *worker_pids])
        total_mib = (worker_pss + template_pss) / 1024
        rows.append(
            (
                f"(e) PSS of {len(worker_pids)} sessions + template (goal <= 2048 MiB)",
                f"{total_mib:.0f} MiB (workers {worker_pss / 1024:.0f}, template "
                f"{template_pss / 1024:.0f}; {worker_pss / 1024 / len(worker_pids):.1f} per "
                f"session; RSS sum {total_rss / 1024:.0f} MiB)",
            )
        )
        poll = median_seconds(sandbox.check_memory, runs)
        counted_mib = sandbox.check_memory() / 2**20
        interval = sandbox.config.memory_poll_s
        rows.append(
            (
                f"(f) shared memory limit: one poll over {len(worker_pids)} sessions",
                f"{poll * 1e3:.2f} ms ({poll / interval:.1%} of a core at one poll per "
                f"{interval:g} s); counts {counted_mib:.0f} MiB against the PSS above",
            )
        )
        for s in sessions:
            s.close()

    with Sandbox(SandboxConfig(mode="isolated", timeout_s=1.0)) as isolated:
        iso = isolated.session()
        iso_print = median_seconds(lambda: iso.run(PRINT_BLOCK), runs)
        rows.append(
            ("    isolated mode (fork per block), print(1+1), median", f"{iso_print * 1e3:.1f} ms")
        )

    print(
        f"machine: {platform.machine()}, {cores} usable cores ({os.cpu_count()} total), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    print(f"repetitions: {runs} per latency median")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
