"""The public API: ``Sandbox`` (one per kernel process) and ``Session`` (one rollout's interpreter).

Why apart from the process layer: this is where a block's outcome becomes what the model reads
(sentences from ``messages``) and where a killed interpreter is replaced and its blocks replayed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import weakref
from typing import Any

from .config import ExecResult, SandboxConfig, SandboxError
from .messages import (
    LOST_MESSAGE,
    NOT_RESTARTED_MESSAGE,
    OUTPUT_BROKEN_MESSAGE,
    RESTARTED_MESSAGE,
    RESTORED_MESSAGE,
    STREAM_REOPENED_MESSAGE,
    THREADS_MESSAGE,
    crash_message,
    join_lines,
    memory_message,
    timeout_message,
)
from .output import _Discard, _OutputBuffer
from .processes import _Core, _WorkerProcess, describe_status


class Sandbox:
    """Executes model code for one kernel process; thread-safe; a context manager.

    Call ``start()`` (or enter the context) before the LLM engine initialises CUDA.
    """

    def __init__(self, config: SandboxConfig = SandboxConfig()) -> None:  # noqa: B008 (frozen)
        self.config = config
        self._core = _Core(config)
        self._finalizer = weakref.finalize(self, self._core.close)

    def start(self) -> Sandbox:
        """Start the template (imports numpy/sympy once); raises if CUDA is already initialised."""
        self._core.start()
        return self

    def session(self) -> Session:
        """A new interpreter for one rollout (forked now in persistent mode)."""
        return Session(self._core)

    def close(self) -> None:
        """Kill every worker and the template; no process started by the sandbox survives."""
        self._finalizer()

    @property
    def template_pid(self) -> int | None:
        """Pid of the running template (for monitoring and tests)."""
        template = self._core.template
        return template.pid if template is not None else None

    @property
    def spare_pids(self) -> tuple[int, ...]:
        """Pids of the workers forked ahead of time, the next one to be adopted first (for
        monitoring and tests: a run waits on this to reach its steady state)."""
        with self._core.lock:
            return tuple(worker.pid for worker in self._core.spares)

    def check_memory(self) -> int:
        """Bytes the template and workers hold now, enforcing the shared limit as the watchdog
        does every ``memory_poll_s`` (for monitoring and benchmarks)."""
        return self._core.check_memory()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Session:
    """One rollout's interpreter: state persists across ``run`` calls (persistent mode)."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._config = core.config
        self._lock = threading.Lock()  # one block in flight per session
        self._history: list[str] = []
        self._holder: list[_WorkerProcess | None] = [None]  # shared with the finalizer
        self._closed = False
        self._adopt_lock = threading.Lock()  # orders close() against adopting a new worker
        # A session dropped without close() still kills its worker when garbage-collected.
        self._finalizer = weakref.finalize(self, _release_worker, core, self._holder)
        if self._config.mode == "persistent":
            self._adopt(core.take())

    @property
    def _worker(self) -> _WorkerProcess | None:
        return self._holder[0]

    @_worker.setter
    def _worker(self, worker: _WorkerProcess | None) -> None:
        self._holder[0] = worker

    @property
    def pid(self) -> int | None:
        """Pid of the current worker (persistent mode), for monitoring and tests."""
        return self._worker.pid if self._worker is not None else None

    def run(self, code: str) -> ExecResult:
        """Execute one block and return what the model should read. Safe to call from any thread."""
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        queued_from = time.monotonic()
        with self._lock:
            if self._closed or self._core.closed:
                raise SandboxError("the session is closed")
            self._core.slots.acquire()
            try:
                queued = time.monotonic() - queued_from
                if self._config.mode == "isolated":
                    return self._run_isolated(code, queued)
                return self._run_persistent(code, queued)
            finally:
                self._core.slots.release()

    def close(self) -> None:
        """Kill this session's worker now (even mid-block) and remove its directory."""
        with self._adopt_lock:
            self._closed = True
        self._finalizer()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _adopt(self, worker: _WorkerProcess) -> bool:
        """Make worker this session's interpreter, unless the session was closed meanwhile."""
        with self._adopt_lock:
            if not self._closed:
                self._worker = worker
                return True
        self._core.discard(worker)
        return False

    def _execute(
        self, worker: _WorkerProcess, code: str, out: _OutputBuffer
    ) -> tuple[str, Any, float]:
        return worker.execute(code, self._config.timeout_s, out, self._config.echo_last_expression)

    def _failure(
        self, status: str, worker: _WorkerProcess, out: _OutputBuffer
    ) -> tuple[str, str, str | None]:
        """Kill the worker after a timeout or death: (sentence for the model, error, crash)."""
        self._core.discard(worker, out)
        if worker.memory_killed and self._core.memory_limit is not None:
            return memory_message(self._core.memory_limit), "MemoryError", None
        if status == "timeout":
            return timeout_message(self._config.timeout_s), "TimeoutError", None
        description = describe_status(self._core.exit_status(worker.pid))
        return crash_message(description), "Crash", description

    def _run_isolated(self, code: str, queued: float) -> ExecResult:
        out = _OutputBuffer(self._config.max_output_chars)
        try:
            worker = self._core.spawn()
        except SandboxError as exc:
            return _sandbox_failure(exc, queued)
        try:
            status, reply, seconds = self._execute(worker, code, out)
        except BaseException:
            self._core.discard(worker)
            raise
        if status == "done":
            self._core.discard(worker)
            return _finished(out, reply, seconds, queued)
        sentence, error, crash = self._failure(status, worker, out)
        return ExecResult(
            output=join_lines(out.text(), sentence),
            ok=False,
            timed_out=error == "TimeoutError",
            seconds=seconds,
            reset=False,
            restored=False,
            queued_seconds=queued,
            error=error,
            crash=crash,
        )

    def _run_persistent(self, code: str, queued: float) -> ExecResult:
        out = _OutputBuffer(self._config.max_output_chars)
        if self._worker is None:
            try:
                self._adopt(self._core.spawn())
            except SandboxError as exc:
                return _sandbox_failure(exc, queued)
        worker = self._worker
        if worker is None:
            raise SandboxError("the session is closed")
        status, reply, seconds = self._execute(worker, code, out)
        if status == "done":
            notes = [STREAM_REOPENED_MESSAGE.format(name=n) for n in reply.get("reopened") or ()]
            # A thread left running would burn a core through later blocks, and a broken output
            # pipe would silence them: the block ran, but its interpreter cannot be kept. It is
            # replaced without this block (replaying it would start the thread again).
            if reply.get("threads"):
                notes.append(THREADS_MESSAGE)
            if reply.get("output_broken"):
                notes.append(OUTPUT_BROKEN_MESSAGE)
            if not reply.get("threads") and not reply.get("output_broken"):
                if reply.get("ok"):
                    self._history.append(code)
                return _finished(out, reply, seconds, queued, notes)
            self._worker = None
            self._core.discard(worker, out)
            restart, restored, replay_seconds = self._restart()
            result = _finished(out, reply, seconds, queued, [*notes, restart])
            return dataclasses.replace(
                result, reset=True, restored=restored, replay_seconds=replay_seconds
            )
        self._worker = None
        sentence, error, crash = self._failure(status, worker, out)
        restart, restored, replay_seconds = self._restart()
        return ExecResult(
            output=join_lines(out.text(), sentence, restart),
            ok=False,
            timed_out=error == "TimeoutError",
            seconds=seconds,
            reset=True,
            restored=restored,
            queued_seconds=queued,
            error=error,
            crash=crash,
            replay_seconds=replay_seconds,
        )

    def _restart(self) -> tuple[str, bool, float]:
        """Fork a fresh worker and replay earlier blocks: (sentence, restored, replay seconds)."""
        started = time.monotonic()
        try:
            worker = self._core.spawn()
        except SandboxError:
            return NOT_RESTARTED_MESSAGE, False, 0.0
        if not self._adopt(worker):
            return NOT_RESTARTED_MESSAGE, False, 0.0
        if not self._history:
            return RESTARTED_MESSAGE, False, 0.0
        if not self._config.replay_on_reset:
            self._history.clear()
            return LOST_MESSAGE, False, 0.0
        budget_end = started + self._config.max_replay_s
        for i, block in enumerate(self._history):
            budget = min(self._config.timeout_s, budget_end - time.monotonic())
            status, reply, _secs = "timeout", None, 0.0
            if budget > 0:
                status, reply, _secs = worker.execute(
                    block, budget, _Discard(), self._config.echo_last_expression
                )
            if status == "done" and reply.get("ok"):
                continue
            del self._history[i:]
            if status != "done":  # the replay itself hung or crashed: start clean
                self._history.clear()
                self._worker = None
                self._core.discard(worker)
                with contextlib.suppress(SandboxError):
                    self._adopt(self._core.spawn())
            return LOST_MESSAGE, False, time.monotonic() - started
        return RESTORED_MESSAGE, True, time.monotonic() - started


def _release_worker(core: _Core, holder: list[_WorkerProcess | None]) -> None:
    """Kill a session's worker (at close() or when the session is garbage-collected)."""
    worker, holder[0] = holder[0], None
    if worker is not None:
        core.discard(worker)


def _finished(
    out: _OutputBuffer,
    reply: dict[str, Any],
    seconds: float,
    queued: float,
    notes: list[str] | tuple[str, ...] = (),
) -> ExecResult:
    """ExecResult of a block that ran to its end (with or without an exception)."""
    ok = bool(reply.get("ok"))
    return ExecResult(
        output=join_lines(out.text(), *notes),
        ok=ok,
        timed_out=False,
        seconds=seconds,
        reset=False,
        restored=False,
        queued_seconds=queued,
        error=None if ok else reply.get("error"),
    )


def _sandbox_failure(exc: SandboxError, queued: float) -> ExecResult:
    """ExecResult when no interpreter could be started at all."""
    return ExecResult(
        output=join_lines("", NOT_RESTARTED_MESSAGE),
        ok=False,
        timed_out=False,
        seconds=0.0,
        reset=True,
        restored=False,
        queued_seconds=queued,
        error="SandboxError",
        crash=str(exc),
    )
