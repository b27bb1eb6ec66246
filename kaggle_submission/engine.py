"""SC-TIR for one problem: N rollouts, each up to M generation calls, code run between calls.

Each rollout is its own asyncio task: it generates until the model asks for code output, runs the
block in its persistent sandbox session (in a thread, so the loop keeps feeding the backend), and
continues. There is no round barrier unless asked for: a rollout whose code ran fast submits its
next call while others still generate, which is what keeps a continuous-batching engine full.

At the deadline, or when the early-stop rule settles the answer, everything in flight is
cancelled and the finished answers are voted on. `solve` always returns an answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .answers import AIMO1_POLICY, AnswerPolicy, Vote, extract_answer, extract_boxed, vote
from .backends.base import (
    ENGINE_FAILURES,
    Backend,
    BackendFactory,
    Completion,
    GenerationRequest,
    SamplingParams,
    classify_exception,
    problem_key,
)
from .config import EngineConfig, to_dict
from .protocols import NUMINA, Protocol
from .sandbox import ExecResult
from .stopping import StopView
from .traces import (
    ExecutionSegment,
    GenerationSegment,
    RolloutTrace,
    SolveTrace,
    StopReason,
    TraceWriter,
    VoteTrace,
    rollout_confidence,
)

if TYPE_CHECKING:
    from .sandbox import Sandbox, Session

log = logging.getLogger(__name__)

# Why a solve failed, for the kernel: the backend's failure kinds (backends/base.py), plus
# "stuck" (the event loop stopped answering: the watchdog gave up on it). Only "engine_dead",
# "oom" and "stuck" call for a rebuild; "request" and "context" cost this problem only.
SolveFailure = Literal["request", "context", "engine_dead", "oom", "stuck"]
REBUILD_FAILURES: frozenset[str] = ENGINE_FAILURES | {"stuck"}


def rebuild_config(failure: SolveFailure | None, config: EngineConfig) -> EngineConfig | None:
    """The one recovery rule (the kernel's and the sharded run's) after a failed problem: None
    when the engine is alive (a request's failure, a prompt too long: that problem only), else
    the config to rebuild the engine with (N halved on out-of-memory)."""
    if failure not in REBUILD_FAILURES:
        return None
    if failure == "oom":
        return dataclasses.replace(config, num_rollouts=max(1, config.num_rollouts // 2))
    return config


def watchdog_grace_s(config: EngineConfig, margin_s: float) -> float:
    """How long past a problem's deadline a runner waits before calling the engine stuck, one
    formula for the kernel's Solver and the sharded run: never before the engine's expected
    lateness (the budget's `margin_s`) nor the config's `hang_grace_s`."""
    return max(config.hang_grace_s, margin_s)


@dataclass(frozen=True)
class Solution:
    """The outcome of one problem: the answer (always set) and the full trace."""

    answer: int
    vote: Vote
    stop_reason: StopReason
    seconds: float
    trace: SolveTrace
    error: str | None = None
    failure: SolveFailure | None = None


def rollout_seed(base: int, rollout: int, call: int) -> int:
    """A distinct, reproducible seed per (rollout, call)."""
    return (base * 1_000_003 + rollout * 10_007 + call) % (2**31 - 1)


def code_calls(config: EngineConfig) -> int:
    """The code calls a rollout may make, as a protocol's prompt announces them (openmath-tir):
    one fewer than its generation calls, since the last call must be able to read the last
    output and answer (8 code calls: max_calls 9)."""
    return max(0, config.max_calls - 1)


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def first_box_region(text: str) -> str:
    """`text` up to its second box, so that the last box read there is the first one
    (`stop_at_first_answer`: what the call generated past its first box is left out)."""
    boxes = list(_BOX_RE.finditer(text))
    return text if len(boxes) < 2 else text[: boxes[1].start()]


class _RoundBarrier:
    """Holds every live rollout at each call until all have arrived (the winner's batching)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        event = self.event
        if self.arrived >= self.parties:
            self._release()
        else:
            await event.wait()

    def leave(self) -> None:
        self.parties -= 1
        if self.parties > 0 and self.arrived >= self.parties:
            self._release()

    def _release(self) -> None:
        self.event.set()
        self.event = asyncio.Event()
        self.arrived = 0


class _ProblemRun:
    """The state of one `solve`: rollouts, their sessions, the finish order."""

    def __init__(
        self,
        problem: str,
        problem_id: str,
        backend: Backend,
        sandbox: Sandbox,
        config: EngineConfig,
        policy: AnswerPolicy,
        executor: concurrent.futures.Executor,
        protocol: Protocol = NUMINA,
    ) -> None:
        self.problem = problem
        self.problem_id = problem_id
        self.backend = backend
        self.sandbox = sandbox
        self.config = config
        self.policy = policy
        self.executor = executor
        self.protocol = protocol  # decided with the weights, before the engine was built
        self.rules = config.rules_for(protocol)
        self.stop = config.stop_for(protocol)
        self.prompt = protocol.render(problem, code_calls(config))
        self.key = problem_key(self.prompt)
        self.start = time.monotonic()
        self.rollouts = [RolloutTrace(index=i) for i in range(config.num_rollouts)]
        self.sessions: list[Session] = []
        self.barrier = _RoundBarrier(config.num_rollouts) if config.round_barrier else None
        # what ends the whole solve early: (failure kind, message), set by a rollout
        self.fatal: tuple[SolveFailure, str] | None = None
        self.failures: dict[int, SolveFailure | None] = {}  # failed rollouts' failure kinds
        # the silence watchdog: requests in flight and when progress was last seen
        self.in_flight = 0
        self.last_progress = time.monotonic()
        self._progress_mark: int | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def rollout(self, trace: RolloutTrace) -> None:
        try:
            await self._rollout(trace)
        finally:
            trace.seconds = self.elapsed()
            trace.confidence = rollout_confidence(trace)
            if self.barrier is not None:
                self.barrier.leave()

    async def _rollout(self, trace: RolloutTrace) -> None:
        cfg = self.config
        protocol, rules = self.protocol, self.rules
        session: Session | None = None
        attempt = 0
        attempt_text = ""
        executed_in_attempt = 0
        budget = cfg.max_tokens_per_rollout
        spent = 0  # tokens generated by this rollout, every attempt
        for call in range(cfg.max_calls):
            if self.barrier is not None and call > 0:
                await self.barrier.wait()
            max_tokens = cfg.max_tokens_per_call
            if budget is not None:
                max_tokens = min(max_tokens, budget - spent)
            request = GenerationRequest(
                request_id=f"{self.key}-{trace.index}-{call}",
                prompt=self.prompt + attempt_text,
                params=SamplingParams(
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_tokens=max_tokens,
                    stop=self.stop,
                    seed=rollout_seed(cfg.seed, trace.index, call),
                    logprobs=cfg.confidence_top_k if cfg.confidence == "entropy" else None,
                ),
                problem_key=self.key,
                rollout=trace.index,
                call=call,
            )
            started = self.elapsed()
            completion = await self._generate(request)
            failure = completion.failure if completion.finish_reason == "error" else None
            if failure == "context" and attempt_text:
                # the rollout's context is full: it ends unfinished, not as an error
                completion = dataclasses.replace(completion, finish_reason="length")
            trace.segments.append(
                GenerationSegment(
                    call=call,
                    attempt=attempt,
                    text=completion.text,
                    finish_reason=completion.finish_reason,
                    stop=completion.stop,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=completion.completion_tokens,
                    started=started,
                    seconds=self.elapsed() - started,
                    error=completion.error,
                    entropy_sum=completion.entropy_sum,
                    entropy_tokens=completion.entropy_tokens,
                )
            )
            if completion.finish_reason in ("error", "abort"):
                trace.status = "error"
                trace.error = completion.error or completion.finish_reason
                self.failures[trace.index] = failure
                if failure == "context":  # the problem's own prompt does not fit
                    self.fail("context", f"prompt too long: {trace.error}")
                elif failure in ENGINE_FAILURES:
                    self.fail(failure, trace.error)  # type: ignore[arg-type]
                return
            text = completion.text
            attempt_text += text
            spent += completion.completion_tokens
            # the budget is spent: whatever the rollout would do next, it ends unfinished
            spent_all = budget is not None and spent >= budget

            def restart() -> None:
                nonlocal attempt, attempt_text, executed_in_attempt
                trace.restarts += 1
                attempt += 1
                attempt_text = ""
                executed_in_attempt = 0

            if rules.restart_without_code and not protocol.wrote_code(attempt_text):
                if spent_all:
                    trace.status = "unfinished"
                    return
                restart()
                continue
            asked_for_code = completion.finish_reason == "stop" and bool(self.stop)
            region = protocol.answer_text(text)
            if cfg.stop_at_first_answer:
                region = first_box_region(region)
            ends = rules.answer_ends_rollout or not asked_for_code or cfg.stop_at_first_answer
            if self._has_answer(region) and ends:
                if rules.prune_unexecuted and executed_in_attempt == 0:
                    trace.status = "pruned"
                    return
                trace.answer = extract_answer(region, self.policy)
                trace.status = "answered" if trace.answer is not None else "no_answer"
                return
            if spent_all:
                trace.status = "unfinished"
                return
            code = protocol.find_code(text) if asked_for_code else None
            if code is None:
                if rules.restart_unfinished:
                    restart()
                    continue
                trace.status = "no_answer"
                return
            started = self.elapsed()
            if not cfg.execute_code:
                result = ExecResult(
                    "",
                    ok=True,
                    timed_out=False,
                    seconds=0.0,
                    reset=False,
                    restored=False,
                    queued_seconds=0.0,
                )
            else:
                if session is None:
                    session = await self._in_thread(self.sandbox.session)
                    self.sessions.append(session)
                result = await self._in_thread(session.run, code)
            appended = protocol.feed(result.output, max(0, code_calls(cfg) - 1 - call))
            attempt_text += appended
            executed_in_attempt += 1
            trace.executed += 1
            trace.code_errors += 0 if result.ok else 1
            trace.segments.append(
                ExecutionSegment(
                    call=call,
                    attempt=attempt,
                    code=code,
                    output=result.output,
                    appended=appended,
                    ok=result.ok,
                    timed_out=result.timed_out,
                    reset=result.reset,
                    started=started,
                    seconds=result.seconds,
                    queued_seconds=result.queued_seconds,
                )
            )
        trace.status = "exhausted"

    async def _generate(self, request: GenerationRequest) -> Completion:
        """The backend's completion; an exception escaping it (a backend that could not even
        answer) becomes a failed completion, classified, by default a dead engine."""
        self.in_flight += 1
        if self.in_flight == 1:  # silence counts from the first request in flight
            self.last_progress = time.monotonic()
        t0 = time.perf_counter()
        try:
            return await self.backend.generate(request)
        except Exception as exc:
            kind = classify_exception(exc, default="engine_dead")
            message = f"{type(exc).__name__}: {exc}"
            return Completion.failed(request.request_id, message, t0, kind)
        finally:
            self.in_flight -= 1
            self.last_progress = time.monotonic()

    def fail(self, failure: SolveFailure, message: str) -> None:
        """End the solve early (the first reason wins): a dead engine, a prompt too long."""
        if self.fatal is None:
            self.fatal = (failure, message)

    def silent_for(self) -> float:
        """Seconds since the engine last made progress while requests were in flight."""
        now = time.monotonic()
        try:
            mark = self.backend.progress()  # None: no per-token signal, completions count
        except Exception:  # a counter must never cost an answer
            mark = None
        if mark != self._progress_mark:
            self._progress_mark = mark
            self.last_progress = now
        if self.in_flight == 0:
            return 0.0
        return now - self.last_progress

    def _has_answer(self, text: str) -> bool:
        return extract_boxed(text) is not None or extract_answer(text, self.policy) is not None

    def weight(self, trace: RolloutTrace) -> float:
        """An answer's vote weight, in (0, 1]: error_code_weight if its code failed, times its
        confidence with confidence "entropy" (1 where the backend measured no entropy)."""
        weight = self.config.error_code_weight if trace.code_errors else 1.0
        if self.config.confidence == "entropy" and trace.confidence is not None:
            weight *= trace.confidence
        return weight

    def stop_view(self, finished: list[RolloutTrace], running: int) -> StopView:
        answered = [t for t in finished if t.answer is not None]
        return StopView(
            answers=tuple(t.answer for t in answered if t.answer is not None),
            weights=tuple(self.weight(t) for t in answered),
            finished=len(finished),
            running=running,
            total=self.config.num_rollouts,
        )

    def close_sessions(self) -> None:
        """Kill the rollouts' interpreters off the event loop (a kill sweeps /proc)."""
        for session in self.sessions:
            self.executor.submit(session.close)


async def solve_async(
    problem: str,
    *,
    backend: Backend,
    sandbox: Sandbox,
    config: EngineConfig,
    policy: AnswerPolicy = AIMO1_POLICY,
    deadline: float | None = None,
    problem_id: str = "",
    executor: concurrent.futures.Executor | None = None,
    protocol: Protocol = NUMINA,
) -> Solution:
    """Solve one problem; `deadline` is a `time.monotonic()` instant. Never raises.

    `protocol` (`protocols.decide_protocol`, decided with the weights) renders the problem,
    finds code, feeds output and reads answers; the backend receives the text."""
    own_executor = executor is None
    if executor is None:
        executor = concurrent.futures.ThreadPoolExecutor(config.num_rollouts + 4, "sandbox-call")
    run = _ProblemRun(problem, problem_id, backend, sandbox, config, policy, executor, protocol)
    started_at = time.time()
    stop_reason: StopReason = "finished"
    error: str | None = None
    failure: SolveFailure | None = None
    finished: list[RolloutTrace] = []
    tasks: dict[asyncio.Task[None], RolloutTrace] = {}
    silence = config.silence_timeout_s
    poll = None if silence is None else min(1.0, silence / 4)
    try:
        tasks = {asyncio.create_task(run.rollout(t)): t for t in run.rollouts}
        pending = set(tasks)
        while pending:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                stop_reason = "deadline"
                break
            if silence is not None:
                quiet = run.silent_for()
                if quiet >= silence:
                    stop_reason, failure = "error", "engine_dead"
                    error = (
                        f"the engine produced nothing for {quiet:.1f} s with "
                        f"{run.in_flight} requests in flight"
                    )
                    log.error("problem %s: %s; treating it as dead", problem_id, error)
                    break
                timeout = poll if timeout is None else min(timeout, poll)
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                trace = tasks[task]
                exc = None if task.cancelled() else task.exception()
                if task.cancelled() or exc is not None:
                    trace.status = "error"
                    trace.error = repr(exc) if exc is not None else "cancelled"
                    log.warning("rollout %d of %s failed: %r", trace.index, problem_id, exc)
                finished.append(trace)
            if run.fatal is not None:
                failure, error = run.fatal
                stop_reason = "prompt_too_long" if failure == "context" else "error"
                log.error("problem %s: %s (%s); stopping it", problem_id, error, failure)
                break
            rule = config.early_stop
            if (
                pending
                and done
                and rule is not None
                and rule(run.stop_view(finished, len(pending)))
            ):
                stop_reason = "early_stop"
                break
    except Exception as exc:  # the engine itself failed: vote on what finished
        stop_reason, error = "error", f"{type(exc).__name__}: {exc}"
        log.exception("solve of %s failed", problem_id)
    finally:
        live = [t for t in tasks if not t.done()]
        for task in live:
            task.cancel()
        if live:
            await asyncio.wait(live, timeout=config.drain_seconds)
        for task in live:
            tasks[task].status = "cancelled"
        run.close_sessions()
        if own_executor:
            executor.shutdown(wait=False)
    if error is None and finished and all(t.status == "error" for t in run.rollouts):
        stop_reason, error = "error", "every rollout failed in the backend"
        kinds = {run.failures.get(t.index) for t in run.rollouts}
        failure = kinds.pop() if len(kinds) == 1 else None  # type: ignore[assignment]
    answered = [t for t in finished if t.answer is not None and t.status == "answered"]
    result = vote([t.answer for t in answered], policy, weights=[run.weight(t) for t in answered])
    plain = vote([t.answer for t in answered], policy)  # one vote each, for the record
    seconds = run.elapsed()
    trace = SolveTrace(
        problem_id=problem_id,
        problem=problem,
        prompt=run.prompt,
        answer=result.answer,
        stop_reason=stop_reason,
        started_at=started_at,
        seconds=seconds,
        budget_s=None if deadline is None else deadline - run.start,
        config=to_dict(config),
        backend=describe_backend(backend),
        vote=VoteTrace(
            counts=dict(result.counts),
            n_valid=result.n_valid,
            n_total=config.num_rollouts,
            margin=result.margin,
            used_fallback=result.used_fallback,
            plain_counts=dict(plain.counts),
            plain_answer=plain.answer,
        ),
        rollouts=run.rollouts,
        error=error,
    )
    return Solution(result.answer, result, stop_reason, seconds, trace, error, failure)


def fallback_solution(
    problem: str,
    problem_id: str,
    config: EngineConfig,
    policy: AnswerPolicy,
    error: str,
    failure: SolveFailure | None = None,
) -> Solution:
    """The answer when the engine could not produce one: the policy's fallback, with why."""
    result = vote([], policy)
    trace = SolveTrace(
        problem_id=problem_id,
        problem=problem,
        prompt="",
        answer=result.answer,
        stop_reason="error",
        started_at=time.time(),
        seconds=0.0,
        budget_s=None,
        config=to_dict(config),
        backend={},
        vote=VoteTrace({}, 0, config.num_rollouts, 0.0, True),
        rollouts=[],
        error=error,
    )
    return Solution(result.answer, result, "error", 0.0, trace, error, failure)


def describe_backend(backend: Backend) -> dict[str, Any]:
    """The backend's self-description for traces and summaries; never raises."""
    try:
        return {"name": backend.name, **backend.describe()}
    except Exception as exc:  # a description must never cost an answer
        return {"name": backend.name, "describe_error": repr(exc)}


# What a runner is given: a backend already built, a plain function that builds one, or a
# `BackendFactory` (one with a fallback for when its backend does not start).
BackendSource = Backend | BackendFactory | Callable[[], Backend]


def as_factory(source: BackendSource) -> BackendFactory:
    """`source` as a `BackendFactory` (a built backend: one that returns it)."""
    if isinstance(source, BackendFactory):
        return source
    if isinstance(source, Backend):
        backend = source
        return BackendFactory(lambda: backend)
    return BackendFactory(source)


async def start_backend(source: BackendSource) -> Backend:
    """The backend, started: a model load belongs to start-up, not to the first problem.

    A `BackendFactory` with a `fallback` (preset backend "auto") gets a second chance: when
    the first backend fails to start, the fallback's backend is used instead.
    """
    factory = as_factory(source)
    built = factory.build()
    try:
        await built.start()
    except Exception:
        if factory.fallback is None:
            raise
        log.exception("%s did not start; using the fallback backend", built.name)
        with contextlib.suppress(Exception):
            await built.aclose()
        built = factory.fallback()
    return built


class EngineLoop:
    """One event loop in a daemon thread, for an engine's whole life.

    Why a thread of its own: an async engine (vLLM's AsyncLLM, an HTTP client) stays bound to
    the loop it started on, while its callers (gRPC workers, a CLI) are synchronous threads.
    """

    def __init__(self, name: str = "engine-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        """Run `coro` on the loop and wait for it; on timeout it is cancelled and re-raised."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    @property
    def running(self) -> bool:
        return self.loop.is_running()

    def responsive(self, timeout: float = 1.0) -> bool:
        """Whether the loop still runs callbacks (a backend may have blocked it)."""
        try:
            self.call(asyncio.sleep(0), timeout)
            return True
        except concurrent.futures.TimeoutError:
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Finish async generators (HTTP streams) if the loop still answers, stop it, join it.

        A loop that a hung backend blocks is left to its daemon thread.
        """
        if not self.loop.is_running():
            return
        if self.responsive():
            with contextlib.suppress(Exception):
                self.call(self.loop.shutdown_asyncgens(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout)
        if not self._thread.is_alive():
            self.loop.close()


def kill_backend(backend: Backend) -> None:
    """Free a backend's engine from this thread even if its event loop is stuck
    (`Backend.kill`); never raises: a rebuild must go on."""
    try:
        backend.kill()
    except Exception:
        log.exception("killing the %s backend failed", backend.name)


def _tracking(source: BackendSource, built: list[Backend]) -> BackendSource:
    """`source`, recording every backend it builds (the fallback's too), so that a build cut
    off by its deadline can still be killed."""
    if isinstance(source, Backend):
        built.append(source)
        return source
    factory = as_factory(source)

    def tracking(build: Callable[[], Backend]) -> Callable[[], Backend]:
        def tracked() -> Backend:
            backend = build()
            built.append(backend)
            return backend

        return tracked

    fallback = None if factory.fallback is None else tracking(factory.fallback)
    return BackendFactory(tracking(factory.build), fallback)


class Solver:
    """A synchronous front for `solve_async`, usable from any thread (gRPC workers included).

    It owns one `EngineLoop` for its whole life; a hang watchdog turns a stuck engine into a
    fallback answer instead of a stuck run. `hang_grace_s` (default: the config's) is how long
    after the deadline the watchdog waits; see EngineConfig.hang_grace_s.
    """

    def __init__(
        self,
        backend: BackendSource,
        sandbox: Sandbox,
        config: EngineConfig,
        policy: AnswerPolicy = AIMO1_POLICY,
        trace_writer: TraceWriter | None = None,
        hang_grace_s: float | None = None,
        protocol: Protocol = NUMINA,
    ) -> None:
        self.sandbox = sandbox
        self.protocol = protocol
        self.hang_grace_s = config.hang_grace_s if hang_grace_s is None else hang_grace_s
        self.config = config
        self.policy = policy
        self.trace_writer = trace_writer
        self._executor = concurrent.futures.ThreadPoolExecutor(
            2 * config.num_rollouts + 4, "sandbox-call"
        )
        self._engine_loop = EngineLoop()
        self.backend: Backend = self._engine_loop.call(start_backend(backend))

    def responsive(self, timeout: float = 1.0) -> bool:
        """Whether the event loop still runs callbacks (a backend may have blocked it)."""
        return self._engine_loop.responsive(timeout)

    def solve(
        self,
        problem: str,
        deadline: float | None = None,
        problem_id: str = "",
        config: EngineConfig | None = None,
        write_trace: bool = True,
    ) -> Solution:
        """Solve one problem before `deadline` (time.monotonic); always returns a Solution.

        A watchdog gives up `hang_grace_s` after the deadline even if the event loop itself is
        stuck (a backend blocking it), so a hang costs one answer, not the run; the solution's
        failure is then "stuck". If the loop still answers, the solve is late, not stuck, and it
        gets one more grace so that its vote is kept. `write_trace` off keeps a measurement (an
        ablation) out of the run's trace file.
        """
        config = config or self.config
        future = self._engine_loop.submit(
            solve_async(
                problem,
                backend=self.backend,
                sandbox=self.sandbox,
                config=config,
                policy=self.policy,
                deadline=deadline,
                problem_id=problem_id,
                executor=self._executor,
                protocol=self.protocol,
            )
        )
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            try:
                solution = future.result(None if timeout is None else timeout + self.hang_grace_s)
            except concurrent.futures.TimeoutError:
                if not self.responsive(min(1.0, max(0.1, self.hang_grace_s))):
                    raise
                log.warning("problem %s: late past the deadline but the loop runs", problem_id)
                solution = future.result(self.hang_grace_s)
        except Exception as exc:
            future.cancel()
            hung = isinstance(exc, concurrent.futures.TimeoutError)
            reason = "the engine hung past the deadline" if hung else f"{type(exc).__name__}: {exc}"
            log.error("problem %s: %s; submitting the fallback", problem_id, reason)
            solution = fallback_solution(
                problem, problem_id, config, self.policy, reason, "stuck" if hung else None
            )
        if write_trace and self.trace_writer is not None:
            try:
                self.trace_writer.write(solution.trace)
            except OSError:
                log.exception("could not write the trace of %s", problem_id)
        return solution

    def rebuild(
        self,
        backend: BackendSource,
        timeout: float | None = None,
        close_timeout: float = 30.0,
    ) -> None:
        """Replace a dead backend (dead engine, out of memory, hang): free it, then build anew.

        The old engine is freed first, so two never share the GPU: closed on its loop (at most
        `close_timeout`), then killed (`kill_backend`: its processes, its memory) whatever the
        close did. A loop that a hung backend blocks is abandoned after the kill (its daemon
        thread is left to the hang) and the new backend gets a new loop. The build must finish
        within `timeout` seconds of the call (the budget's allowance, freeing included): past
        it, what was built is killed and TimeoutError is raised.
        """
        ends = None if timeout is None else time.monotonic() + timeout
        old = self.backend
        if self.responsive(min(1.0, max(0.1, self.hang_grace_s))):
            self._close_backend(close_timeout)
            kill_backend(old)
        else:
            log.error("the engine's event loop is stuck; killing its backend, new loop")
            kill_backend(old)
            self._engine_loop = EngineLoop()
        built: list[Backend] = []
        timeout = None if ends is None else max(0.0, ends - time.monotonic())
        try:
            self.backend = self._engine_loop.call(start_backend(_tracking(backend, built)), timeout)
        except BaseException as exc:
            if isinstance(exc, concurrent.futures.TimeoutError):
                log.error("the engine build ran past its %.0f s allowance: killing it", timeout)
            for new in built:
                kill_backend(new)
            raise

    def _close_backend(self, timeout: float = 60.0) -> None:
        try:
            self._engine_loop.call(self.backend.aclose(), timeout)
        except Exception:  # a dead engine may fail to close; go on (the caller kills it)
            log.exception("closing the backend failed")

    def close(self) -> None:
        """Close the backend, stop the loop, and wait for sandbox calls to finish."""
        if not self._engine_loop.running:
            return
        try:
            if self.responsive():
                self._close_backend()
            else:  # its loop is stuck: free the engine from here
                kill_backend(self.backend)
        finally:
            self._engine_loop.close()
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Solver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
