"""Sharded, resumable dry runs: many problems at once over one backend (usually servers).

Why: the sequential dry run (dryrun.py) replays Kaggle's contract one problem at a time, which is
right for checking the submission but slow for measuring accuracy on hundreds of problems, and
one crash loses the run. Here the same engine (`solve_async`), sandbox, voting and trace records
solve up to `concurrency` problems at once on one event loop (in a background thread, as the
Solver's), typically over the `openai` backend spread across several vLLM/SGLang servers.

What stays the same as on Kaggle: the prompt, the SC-TIR rules, per-rollout seeds, the vote and
the trace schema. What differs: there is no run-wide Kaggle budget; each problem gets its own
deadline (`problem_cap_s`, default the preset's budget.cap_s) from when it starts, and there is
no gateway (the answers go straight into the submission file, in the competition's format).

Durability: each finished problem's trace is appended to traces.jsonl at once (flush + fsync),
so the file is the run's state. With `resume` the file is read first and every problem already
traced is skipped: an interrupted run continues where it stopped, with no problem solved twice
and none lost. A last line cut short by a crash is dropped (that problem is redone), and so are
records of problems whose solve failed in the backend (`redo_errors`; kept aside in
traces.errors.jsonl), so that traces.jsonl holds exactly one record per problem. Problems in
flight when the run is stopped (Ctrl-C, `stop_event`) leave no record and are redone.

The training side samples the same way: `sharded_dry_run(problems, preset, out_dir,
servers=urls, concurrency=K, write_outputs=False)` and then `read_traces(out_dir /
"traces.jsonl")`; every rollout's text, answer and status is in the records.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..backends.base import Backend, BackendFactory
from ..competition.gateway import write_submission  # re-exported: the one writer
from ..engine import (
    EngineLoop,
    Solution,
    describe_backend,
    fallback_solution,
    rebuild_config,
    solve_async,
    start_backend,
    watchdog_grace_s,
)
from ..presets import Preset
from ..problems import Problem, truths
from ..protocols import NUMINA, Protocol, decide_protocol
from ..sandbox import Sandbox
from ..traces import SolveTrace
from .dryrun import DEMO_BANNER, DryRunOptions, build_preset, load_data
from .report import ProgressLine, result_line, run_summary, write_report

log = logging.getLogger(__name__)

TRACES_FILE = "traces.jsonl"
REDONE_FILE = "traces.errors.jsonl"

# a plain function, or a `BackendFactory` (with a fallback for a backend that does not start)
AnyFactory = BackendFactory | Callable[[], Backend]
OnSolution = Callable[[Problem, Solution], None]


# --------------------------------------------------------------------------- the trace file


class DurableTraceWriter:
    """Appends one record per line and fsyncs it, so a crash loses at most the line in writing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, trace: SolveTrace) -> None:
        line = trace.to_json() + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.close()


@dataclass(frozen=True)
class ResumeState:
    """What an existing trace file holds: the finished problems, and what was repaired."""

    finished: dict[str, SolveTrace]
    dropped_partial: bool = False
    dropped_errors: tuple[str, ...] = ()
    dropped_duplicates: tuple[str, ...] = ()


def load_finished(path: str | Path, redo_errors: bool = True) -> ResumeState:
    """Read a trace file for resuming, and repair it in place.

    A last line that does not parse (a crash while writing it) is cut off; a bad line anywhere
    else raises ValueError naming the line (that is not a crash, something else wrote there).
    Duplicate records keep the first; with `redo_errors`, records whose solve failed in the
    backend (stop_reason "error") move to traces.errors.jsonl so the problem is solved again.
    The file is rewritten atomically only when something was dropped.
    """
    path = Path(path)
    if not path.exists():
        return ResumeState({})
    data = path.read_bytes()
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    finished: dict[str, SolveTrace] = {}
    keep: list[bytes] = []
    moved: list[bytes] = []
    partial = False
    errors: list[str] = []
    duplicates: list[str] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            trace = SolveTrace.from_dict(json.loads(line))
        except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            if index == last:
                log.warning("%s: dropping an unfinished last line (%s)", path, exc)
                partial = True
                continue
            raise ValueError(f"{path}:{index + 1}: {exc}") from exc
        key = trace.problem_id
        if key in finished:
            duplicates.append(key)
            continue
        if redo_errors and trace.stop_reason == "error":
            errors.append(key)
            moved.append(line)
            continue
        finished[key] = trace
        keep.append(line)
    if partial or errors or duplicates:
        if moved:
            with (path.parent / REDONE_FILE).open("ab") as fh:
                fh.write(b"".join(line + b"\n" for line in moved))
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(b"".join(line + b"\n" for line in keep))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    return ResumeState(finished, partial, tuple(errors), tuple(duplicates))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the run


@dataclass
class ShardedResult:
    """What a sharded run produced (the summary is also in summary.json)."""

    traces: list[SolveTrace]
    solved_now: list[str]
    resumed: list[str]
    missing: list[str]
    stopped: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)
    submission_path: Path | None = None
    report_path: Path | None = None
    engine: dict[str, Any] = field(default_factory=dict)


class _Run:
    """One sharded run's state on the engine loop."""

    def __init__(
        self,
        preset: Preset,
        todo: Sequence[Problem],
        factory: AnyFactory,
        sandbox: Sandbox,
        writer: DurableTraceWriter,
        concurrency: int,
        problem_cap_s: float,
        stop_event: threading.Event,
        on_solution: OnSolution | None,
        progress: Callable[[Problem, Solution], None],
        protocol: Protocol = NUMINA,
        heals_itself: bool = False,
    ) -> None:
        """`heals_itself`: the backend is servers (never rebuilt from here)."""
        self.preset = preset
        self.config = preset.engine  # N halves after an out-of-memory rebuild
        self.heals_itself = heals_itself
        self.protocol = protocol
        self.todo = list(todo)
        self.factory = factory
        self.sandbox = sandbox
        self.writer = writer
        self.concurrency = concurrency
        self.problem_cap_s = problem_cap_s
        self.stop_event = stop_event
        self.on_solution = on_solution
        self.progress = progress
        self.solved: list[str] = []
        self.backend: Backend | None = None
        self.engine: dict[str, Any] = {}
        self._rebuild_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def main(self) -> None:
        config = self.preset.engine
        workers = min(self.concurrency * config.num_rollouts + 4, 512)
        executor = concurrent.futures.ThreadPoolExecutor(workers, "sandbox-call")
        self._rebuild_lock = asyncio.Lock()
        slots = asyncio.Semaphore(self.concurrency)
        watcher = asyncio.create_task(self._watch_stop())
        try:
            self.backend = await start_backend(self.factory)
            self._tasks = [
                asyncio.create_task(self._one(p, slots, executor), name=f"problem-{p.key}")
                for p in self.todo
            ]
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            failures = [r for r in results if isinstance(r, Exception)]
            if failures:  # e.g. the trace file cannot be written: the run cannot go on
                raise failures[0]
        finally:
            watcher.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, watcher, return_exceptions=True)
            if self.backend is not None:
                self.engine = describe_backend(self.backend)
                try:
                    await self.backend.aclose()
                except Exception:  # a failing close must not hide the run's outcome
                    log.exception("closing the backend failed")
            executor.shutdown(wait=False, cancel_futures=True)

    async def _watch_stop(self) -> None:
        while not self.stop_event.is_set():
            await asyncio.sleep(0.05)
        self._cancel_all()

    def _cancel_all(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def _one(
        self,
        problem: Problem,
        slots: asyncio.Semaphore,
        executor: concurrent.futures.Executor,
    ) -> None:
        async with slots:
            if self.stop_event.is_set():
                return
            backend = self.backend
            assert backend is not None
            config = self.config
            policy = self.preset.policy
            deadline = time.monotonic() + self.problem_cap_s
            grace = watchdog_grace_s(config, self.preset.budget.margin_s)
            try:
                solution = await asyncio.wait_for(
                    solve_async(
                        problem.problem,
                        backend=backend,
                        sandbox=self.sandbox,
                        config=config,
                        policy=policy,
                        deadline=deadline,
                        problem_id=problem.key,
                        executor=executor,
                        protocol=self.protocol,
                    ),
                    timeout=self.problem_cap_s + grace,
                )
            except asyncio.TimeoutError:
                reason = "the engine hung past the deadline"
                log.error("problem %s: %s; recording the fallback", problem.key, reason)
                solution = fallback_solution(
                    problem.problem, problem.key, config, policy, reason, "stuck"
                )
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.writer.write, solution.trace)
            self.solved.append(problem.key)
            self.progress(problem, solution)
            if self.on_solution is not None:
                self.on_solution(problem, solution)
            if self.stop_event.is_set():
                self._cancel_all()
            elif solution.stop_reason == "error":
                await self._maybe_rebuild(backend, solution)

    async def _maybe_rebuild(self, failed: Backend, solution: Solution) -> None:
        """The kernel's recovery rule (`engine.rebuild_config`): an in-process engine that
        failed (dead, out of memory: N halved, stuck) is replaced once; a request's failure
        costs that problem only, and servers heal themselves."""
        config = rebuild_config(solution.failure, self.config)
        if config is None or self.heals_itself:
            return
        assert self._rebuild_lock is not None
        async with self._rebuild_lock:
            if self.backend is not failed:  # another problem's failure rebuilt it already
                return
            log.warning("the backend failed (%s); rebuilding it", solution.failure)
            if config.num_rollouts != self.config.num_rollouts:
                log.warning(
                    "out of memory: N %d -> %d", self.config.num_rollouts, config.num_rollouts
                )
            self.config = config
            try:
                await failed.aclose()
            except Exception:
                log.exception("closing the failed backend failed")
            self.backend = await start_backend(self.factory)


def sharded_dry_run(
    problems: Sequence[Problem],
    preset: Preset,
    out_dir: str | Path,
    *,
    backend_factory: AnyFactory | None = None,
    servers: str | Sequence[str] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    protocol: Protocol | None = None,
    concurrency: int = 4,
    resume: bool = True,
    problem_cap_s: float | None = None,
    shuffle_seed: int | None = 0,
    redo_errors: bool = True,
    stop_event: threading.Event | None = None,
    on_solution: OnSolution | None = None,
    extra_summary: Mapping[str, Any] | None = None,
    write_outputs: bool = True,
    stream: TextIO | None = sys.stderr,
) -> ShardedResult:
    """Solve `problems` up to `concurrency` at a time; append traces; write the report.

    The backend is `backend_factory()` (called on the engine loop) or, with `servers`, an
    OpenAIBackend over them (`backend_options` are its keyword options: model, tokenizer_dir,
    max_concurrency_per_server, ...). `protocol` renders the prompts (default: decided from
    the servers' `tokenizer_dir` when given, else the kit's format). `problem_cap_s` is each
    problem's time (default the preset's budget.cap_s). `resume` skips the problems already in
    out_dir/traces.jsonl; without it the file is started afresh. `stop_event` (or Ctrl-C)
    stops the run: what finished is kept. With `write_outputs` the submission file,
    summary.json and report.md are written too.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if (backend_factory is None) == (servers is None):
        raise ValueError("give exactly one of backend_factory or servers")
    keys = [p.key for p in problems]
    if len(set(keys)) != len(keys):
        raise ValueError("problem keys must be unique (they identify problems on resume)")
    factory = backend_factory or _openai_factory(servers, backend_options or {})
    if protocol is None:
        model_dir = (backend_options or {}).get("tokenizer_dir") if servers else None
        protocol = decide_protocol(None, model_dir) if model_dir else NUMINA
    cap = float(problem_cap_s if problem_cap_s is not None else preset.budget.cap_s)
    if cap <= 0:
        raise ValueError("problem_cap_s must be positive")
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock_dir(out)
    try:
        trace_path = out / TRACES_FILE
        if not resume and trace_path.exists():
            trace_path.unlink()
        state = load_finished(trace_path, redo_errors=redo_errors)
        order = list(problems)
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(order)
        resumed = [p.key for p in order if p.key in state.finished]
        todo = [p for p in order if p.key not in state.finished]
        _note_resume(state, resumed, len(order), stream)
        _check_configs(state.finished, resumed, preset)

        stop = stop_event or threading.Event()
        engine: dict[str, Any] = {}
        solved: list[str] = []
        if todo:
            progress = _progress(
                len(order), len(resumed), started, stream, truths(order, preset.policy)
            )
            sandbox = Sandbox(preset.sandbox)
            writer = DurableTraceWriter(trace_path)
            runner: EngineLoop | None = None
            try:
                sandbox.start()  # before the backend: no engine (CUDA) exists yet in this process
                runner = EngineLoop("sharded-loop")
                run = _Run(
                    preset,
                    todo,
                    factory,
                    sandbox,
                    writer,
                    min(concurrency, len(todo)),
                    cap,
                    stop,
                    on_solution,
                    progress,
                    protocol,
                    heals_itself=servers is not None,
                )
                future = runner.submit(run.main())
                try:
                    _wait(future)
                except KeyboardInterrupt:
                    stop.set()  # cancels what is in flight; finished problems stay traced
                    _wait_quietly(future, 60)
                    raise
                finally:
                    solved, engine = run.solved, run.engine
            finally:
                if runner is not None:
                    runner.close()
                writer.close()
                sandbox.close()

        finished = load_finished(trace_path, redo_errors=False).finished
        traces = [finished[p.key] for p in order if p.key in finished]
        missing = [p.key for p in order if p.key not in finished]
        seconds = time.monotonic() - started
        result = ShardedResult(
            traces=traces,
            solved_now=solved,
            resumed=resumed,
            missing=missing,
            stopped=stop.is_set() or bool(missing),
            seconds=seconds,
            engine=engine,
        )
        if write_outputs:
            _write_outputs(result, order, preset, out, servers, concurrency, extra_summary, stream)
        return result
    finally:
        lock.close()  # closing the file releases the lock


def _lock_dir(out: Path) -> TextIO:
    """An exclusive lock on the run's folder: two runs appending to one traces.jsonl would
    solve problems twice."""
    fh = (out / ".sharded.lock").open("a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise RuntimeError(f"another sharded run is writing to {out}") from None
    return fh


def _openai_factory(servers: str | Sequence[str] | None, options: Mapping[str, Any]) -> AnyFactory:
    from ..backends.openai_backend import OpenAIBackend

    assert servers is not None

    def factory() -> Backend:
        return OpenAIBackend(servers, **dict(options))

    return factory


def _wait(future: concurrent.futures.Future[None]) -> None:
    """Wait in short steps so Ctrl-C reaches this thread."""
    while True:
        try:
            future.result(timeout=0.2)
            return
        except concurrent.futures.TimeoutError:
            continue


def _wait_quietly(future: concurrent.futures.Future[None], timeout: float) -> None:
    try:
        future.result(timeout=timeout)
    except BaseException:  # we are already leaving with KeyboardInterrupt
        log.debug("sharded run ended with an error while stopping", exc_info=True)


def _note_resume(state: ResumeState, resumed: list[str], total: int, stream: TextIO | None) -> None:
    if stream is None:
        return
    if resumed:
        print(f"resuming: {len(resumed)} of {total} problems already traced", file=stream)
    if state.dropped_partial:
        print(
            "resuming: dropped a half-written last trace line (that problem is redone)", file=stream
        )
    if state.dropped_errors:
        print(
            f"resuming: redoing {len(state.dropped_errors)} problems whose solve failed "
            f"(records kept in {REDONE_FILE})",
            file=stream,
        )


def _check_configs(
    finished: Mapping[str, SolveTrace], resumed: Sequence[str], preset: Preset
) -> None:
    """Warn when resumed records were made with another engine config than this run's."""
    from ..config import to_dict

    current = json.loads(json.dumps(to_dict(preset.engine)))
    differing = [k for k in resumed if finished[k].config != current]
    if differing:
        log.warning(
            "%d resumed problems were solved with another engine config (e.g. %s)",
            len(differing),
            differing[0],
        )


def _rate(line: ProgressLine, elapsed: float) -> str:
    """The sharded run's figure on the shared progress line: problems solved per minute."""
    rate = 60.0 * line.new / elapsed if elapsed > 0 else 0.0
    return f"{rate:.1f} problems/min"


def _progress(
    total: int, done: int, started: float, stream: TextIO | None, truth: Mapping[str, int | None]
) -> Callable[[Problem, Solution], None]:
    """The shared progress line (`ProgressLine`), per finished problem, with the rate."""
    line = ProgressLine(total, stream, done=done, started=started)

    def on_solution(problem: Problem, solution: Solution) -> None:
        line(
            problem.key,
            solution.answer,
            truth.get(problem.key),
            solution.seconds,
            _rate,
            solution.stop_reason,
        )

    return on_solution


def _write_outputs(
    result: ShardedResult,
    order: Sequence[Problem],
    preset: Preset,
    out: Path,
    servers: str | Sequence[str] | None,
    concurrency: int,
    extra: Mapping[str, Any] | None,
    stream: TextIO | None,
) -> None:
    from ..competition import get_adapter

    adapter = get_adapter(preset.competition)
    submission = out / adapter.SUBMISSION_FILE
    write_submission(submission, [(t.problem_id, t.answer) for t in result.traces])
    minutes = result.seconds / 60.0
    server_list = (
        [s for s in servers.split(",") if s.strip()] if isinstance(servers, str) else servers
    )
    summary = run_summary(
        result.traces,
        order,
        preset,
        backend=result.engine.get("name", "openai" if servers else preset.backend),
        model=result.engine.get("model", preset.model),
        engine=result.engine,
        submission=submission,
        wall_seconds=result.seconds,
        mode="sharded",
        concurrency=concurrency,
        servers=list(server_list) if server_list else None,
        resumed=len(result.resumed),
        solved_now=len(result.solved_now),
        missing=result.missing,
        complete=not result.missing,
        problems_per_minute=len(result.solved_now) / minutes if minutes > 0 else None,
        **(extra or {}),
    )
    result.summary = summary
    result.submission_path = submission
    result.report_path = write_report(summary, out)
    if stream is not None:
        note = "" if not result.missing else f" | {len(result.missing)} problems not solved yet"
        solved = f"{len(result.solved_now)} solved now, {len(result.resumed)} resumed{note}"
        print(result_line(summary, solved, f"report {result.report_path}"), file=stream)


# --------------------------------------------------------------------------- CLI-style entry


@dataclass(frozen=True)
class ShardedOptions:
    """Attributes:
    run: what any dry run takes (data, preset, out_dir, model, overrides, ...); its
        time_limit_s and ablate_code do not apply here (each problem has its own cap).
    servers: OpenAI-compatible server URLs (comma-separated or a tuple); None runs the preset's
        backend in this process.
    concurrency: problems solved at once.
    resume: skip the problems already in out_dir/traces.jsonl.
    problem_cap_s: each problem's time (default the preset's budget.cap_s).
    max_concurrency_per_server: requests in flight per server.
    With servers, `run.model` is the served model's name, or a local model directory whose chat
    template renders the prompts (the server's model is then taken from the server).
    """

    run: DryRunOptions = field(default_factory=DryRunOptions)
    servers: str | tuple[str, ...] | None = None
    concurrency: int = 4
    resume: bool = True
    problem_cap_s: float | None = None
    max_concurrency_per_server: int = 64


def run_sharded(options: ShardedOptions, stream: TextIO | None = None) -> ShardedResult:
    """The CLI's `dry-run --servers ... --concurrency K --resume`: load, build, run, report.

    Messages go to `stream`, default sys.stderr as it is at call time."""
    stream = stream or sys.stderr
    run = options.run
    data_name, problems = load_data(run)
    preset = build_preset(run, len(problems))
    extra: dict[str, Any] = {"data": data_name}
    factory: AnyFactory | None = None
    backend_options: dict[str, Any] = {}
    protocol: Protocol | None = None  # with servers: from the tokenizer_dir
    if options.servers:
        from ..kernel import resolve_model

        backend_options["max_concurrency_per_server"] = options.max_concurrency_per_server
        if run.model and Path(run.model).is_dir():
            backend_options["tokenizer_dir"] = run.model
            # the same rule as in process: the preset's entry's protocol, else the directory's
            protocol = resolve_model(preset, run.model).protocol
        elif run.model:
            backend_options["expected_model"] = run.model
        engine_line = f"openai over {options.servers}"
    else:
        from ..kernel import make_backend_factory, resolve_model
        from .demo import demo_weights, is_demo_model

        # a demo model is built here, its protocol decided from its manifest entry's format
        weights = demo_weights(preset.model, run.model) or resolve_model(preset, run.model)
        model_path, protocol = weights.path, weights.protocol
        factory = make_backend_factory(preset.backend, model_path, dict(preset.backend_options))
        engine_line = f"{preset.backend} in process, model {model_path}"
        if is_demo_model(preset.model) and run.model is None:
            extra["banner"] = DEMO_BANNER
            print(DEMO_BANNER, file=stream)
    print(
        f"sharded dry run: {engine_line} | preset {preset.name} | "
        f"N={preset.engine.num_rollouts} M={preset.engine.max_calls} | {len(problems)} problems "
        f"from {data_name} | concurrency {options.concurrency}",
        file=stream,
        flush=True,
    )
    return sharded_dry_run(
        problems,
        preset,
        run.out_dir,
        backend_factory=factory,
        servers=options.servers if factory is None else None,
        backend_options=backend_options,
        protocol=protocol,
        concurrency=options.concurrency,
        resume=options.resume,
        problem_cap_s=options.problem_cap_s,
        shuffle_seed=run.shuffle_seed,
        extra_summary=extra,
        stream=stream,
    )
