"""The asynchronous protocol between the SC-TIR engine and an LLM backend.

The engine submits one continuation per rollout as a coroutine (`await backend.generate(req)`),
so a backend with continuous batching (vLLM) sees every live rollout at once and a rollout never
waits for the others. Cancelling the awaiting task is the cancel operation: a backend must stop
the request underneath (vLLM: abort; transformers: drop the row at the next step) and let
`asyncio.CancelledError` propagate.

This module knows no backend: which backends exist, and how to build one by name, is the
registry's business (`backends/__init__.py`).
"""

from __future__ import annotations

import abc
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length", "eos", "abort", "error"]

# Why a request failed, decided by the backend where it catches the error, so that the engine
# and the kernel never parse messages:
#   "request": this request only (a rejected parameter, a malformed input): its rollout fails,
#       the engine is fine;
#   "context": the context is full (the prompt leaves no room for a token): on a rollout's
#       first call the problem's prompt is too long, later the rollout ends unfinished;
#   "engine_dead": every later request would fail too: the engine must be rebuilt;
#   "oom": out of memory: rebuild with fewer rollouts.
FailureKind = Literal["request", "context", "engine_dead", "oom"]
ENGINE_FAILURES: frozenset[str] = frozenset({"engine_dead", "oom"})


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, as the engine's config sets them for a round."""

    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 2048
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # top-k log-probabilities per generated token (None: not asked). A backend that honours it
    # fills Completion.entropy_sum/entropy_tokens with `topk_entropy` of each token's top k.
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if self.logprobs is not None and self.logprobs < 1:
            raise ValueError(f"logprobs must be >= 1 or None, got {self.logprobs}")


@dataclass(frozen=True)
class GenerationRequest:
    """One continuation of one rollout.

    `prompt` is the whole context so far (the problem prompt, earlier generations and output
    blocks); prefix caching makes resending it cheap. `problem_key`, `rollout` and `call`
    identify the request for replay and for traces; live backends ignore them.
    """

    request_id: str
    prompt: str
    params: SamplingParams
    problem_key: str = ""
    rollout: int = 0
    call: int = 0


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one request.

    finish_reason: "stop" when a stop string ended it (the stop string is kept at the end of
    `text`, `stop` names it), "eos" when the model ended its answer, "length" when max_tokens
    ran out, "abort" when cancelled, "error" when the backend failed (`error` says why,
    `failure` says what it means for the engine; None: the backend could not tell).
    """

    request_id: str
    text: str
    finish_reason: FinishReason
    stop: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    failure: FailureKind | None = None
    # with params.logprobs: the sum over generated tokens of `topk_entropy`, and how many
    # tokens it covers (0: not measured, e.g. not asked or a backend without logprobs)
    entropy_sum: float = 0.0
    entropy_tokens: int = 0

    @classmethod
    def failed(
        cls,
        request_id: str,
        message: str,
        started: float,
        failure: FailureKind | None = None,
    ) -> Completion:
        """The answer to a request the backend could not serve (`started`: perf_counter)."""
        return cls(
            request_id=request_id,
            text="",
            finish_reason="error",
            seconds=time.perf_counter() - started,
            error=message,
            failure=failure,
        )


class Backend(abc.ABC):
    """What the engine needs from an LLM backend; every backend subclasses it.

    `generate`, `aclose` and `describe` are required. The rest have defaults that do nothing,
    so the engine and the runners call them on any backend without asking whether it has them.
    """

    name: str = "?"

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> Completion:
        """Run one continuation; cancelling the caller's task cancels the request."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the engine (processes, GPU memory)."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ran, for logs and traces: engine, model, versions, settings."""

    async def start(self) -> None:
        """Load before the first problem, so a model load belongs to start-up (default: none,
        the backend is ready when built)."""
        return None

    def kill(self) -> None:
        """Free the engine's processes and memory from any thread, bounded, even when its event
        loop is stuck; a rebuild calls it before building the next engine (default: nothing to
        free beyond `aclose`)."""
        return None

    def progress(self) -> int | None:
        """A counter that grows while tokens are produced, read by the engine's silence
        watchdog (default None: no per-token signal, the watchdog counts completions)."""
        return None

    @property
    def dead(self) -> bool:
        """True once the in-process engine died and every later request would fail: the runner
        rebuilds it (default False: nothing to rebuild, e.g. servers that heal themselves)."""
        return False


@dataclass(frozen=True)
class BackendFactory:
    """How to build a backend, and what to build instead when it fails to start.

    `fallback` (preset backend "auto": transformers when vLLM does not start) is used by
    `engine.start_backend` only when `build()`'s backend raises from `start()`. Calling the
    factory builds without starting, like any `Callable[[], Backend]`.
    """

    build: Callable[[], Backend]
    fallback: Callable[[], Backend] | None = None

    def __call__(self) -> Backend:
        return self.build()


# Messages as the libraries raise them (torch: "CUDA out of memory. Tried to allocate ...",
# torch.OutOfMemoryError; vLLM: "The decoder prompt (length N) is longer than the maximum model
# length of M", "... plus the number of requested output tokens (at least 1) is longer than the
# maximum model length"; OpenAI-compatible servers: "This model's maximum context length is N").
_OOM_TYPES = frozenset({"OutOfMemoryError", "OutOfMemory"})
_OOM_TEXT = ("out of memory", "cuda_error_out_of_memory")
_CONTEXT_TEXT = (
    "longer than the maximum model length",
    "maximum context length",
    "max_model_len is",
)
_DEAD_TYPES = frozenset({"EngineDeadError", "VLLMEngineDead"})
_DEAD_TEXT = ("cuda error", "device-side assert", "nccl error", "enginecore encountered")


def failure_from_message(message: str) -> FailureKind | None:
    """A failure kind read from an error's text alone (None: nothing recognisable)."""
    text = message.lower()
    if any(t in text for t in _OOM_TEXT):
        return "oom"
    if any(t in text for t in _CONTEXT_TEXT):
        return "context"
    if any(t in text for t in _DEAD_TEXT):
        return "engine_dead"
    return None


def classify_exception(exc: BaseException, default: FailureKind = "request") -> FailureKind:
    """What an exception means for the engine, by type names (the whole MRO) and message.

    Out of memory is checked first (it poisons nothing but needs fewer rollouts), then a dead
    engine, then a full context; anything else is `default`.
    """
    names = {klass.__name__ for klass in type(exc).__mro__}
    if names & _OOM_TYPES:
        return "oom"
    if names & _DEAD_TYPES:
        return "engine_dead"
    return failure_from_message(str(exc)) or default


def topk_entropy(logprobs: Iterable[float], k: int | None = None) -> float:
    """Entropy (nats) of one token's top-k distribution, renormalised: -sum p log p.

    Why renormalised: a backend returns only the k most likely tokens' log-probabilities,
    so their probabilities are rescaled to sum to 1; the result lies in [0, log k]. `k` keeps
    the k largest (vLLM adds the sampled token when it falls outside the top k); None: all.
    """
    values = sorted((float(v) for v in logprobs if math.isfinite(float(v))), reverse=True)
    if k is not None:
        values = values[:k]
    if len(values) < 2:
        return 0.0
    top = values[0]
    weights = [math.exp(v - top) for v in values]
    total = math.fsum(weights)
    return max(0.0, -math.fsum(w / total * math.log(w / total) for w in weights if w > 0))


def problem_key(prompt: str) -> str:
    """A short stable key of a rollout's first prompt, shared by every request of the problem."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def apply_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """Cut `text` just after the earliest stop string, keeping it (as vLLM's include_stop)."""
    best: tuple[int, str] | None = None
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, stop)
    if best is None:
        return text, None
    at, stop = best
    return text[: at + len(stop)], stop
