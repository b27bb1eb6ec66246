"""Failure kinds: vLLM's and torch's errors as they raise them, and transformers' own."""

from __future__ import annotations

import asyncio

import pytest

from kaggle_submission.backends.base import GenerationRequest, SamplingParams, classify_exception
from kaggle_submission.backends.vllm_compat import classify_error

# Messages exactly as the libraries format them (vLLM 0.19.1 / 0.32.0 input processor, torch).
TOO_LONG = (
    "The decoder prompt (length 5000) is longer than the maximum model length of 4096. "
    "Make sure that `max_model_len` is no smaller than the number of text tokens."
)
AT_LIMIT = (
    "The decoder prompt (length 4096) plus the number of requested output tokens (at least 1) "
    "is longer than the maximum model length of 4096. Make sure that `max_model_len` is no "
    "smaller than the number of text tokens (prompt + requested output tokens)."
)
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 14.74 GiB "
    "of which 1.12 GiB is free."
)


def _vllm_errors():
    exceptions = pytest.importorskip("vllm.v1.engine.exceptions")
    vllm_exc = pytest.importorskip("vllm.exceptions")
    return exceptions.EngineDeadError, exceptions.EngineGenerateError, vllm_exc


def _wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise outer from inner
    except BaseException as exc:
        return exc


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "kind"),
    [
        pytest.param(lambda d, g, v: d(), "engine_dead", id="EngineDeadError"),
        pytest.param(lambda d, g, v: v.VLLMValidationError(TOO_LONG), "context", id="too-long"),
        pytest.param(lambda d, g, v: v.VLLMValidationError(AT_LIMIT), "context", id="at-limit"),
        pytest.param(lambda d, g, v: ValueError(TOO_LONG), "context", id="too-long-0.19"),
        pytest.param(
            lambda d, g, v: v.VLLMValidationError("top_p must be in (0, 1], got 2.0."),
            "request",
            id="bad-parameter",
        ),
        pytest.param(lambda d, g, v: _wrapped(g(), KeyError("x")), "request", id="generate-error"),
        pytest.param(
            lambda d, g, v: _wrapped(g(), RuntimeError(CUDA_OOM)), "oom", id="generate-oom"
        ),
    ],
)
def test_vllm_errors_are_classified_as_vllm_raises_them(make, kind):
    dead, generate_error, vllm_exc = _vllm_errors()
    assert classify_error(make(dead, generate_error, vllm_exc)) == kind


def test_an_errored_engine_is_dead_whatever_it_raised():
    assert classify_error(ValueError("anything"), engine_errored=True) == "engine_dead"


def test_torch_out_of_memory_by_type_and_message():
    torch = pytest.importorskip("torch")
    assert classify_exception(torch.OutOfMemoryError(CUDA_OOM)) == "oom"
    assert classify_exception(RuntimeError(CUDA_OOM)) == "oom"
    assert classify_exception(RuntimeError("CUDA error: device-side assert triggered")) == (
        "engine_dead"
    )
    assert classify_exception(KeyError("rollout")) == "request"


def test_transformers_backend_kinds(tiny_model_dir):
    from kaggle_submission.backends import create_backend

    backend = create_backend("transformers", model=str(tiny_model_dir), max_model_len=16)

    async def run():
        try:
            long = GenerationRequest("a", "word " * 40, SamplingParams(max_tokens=4))
            bad = GenerationRequest("b", "hi", SamplingParams(max_tokens=4, top_p=2.0))
            return await asyncio.gather(backend.generate(long), backend.generate(bad))
        finally:
            await backend.aclose()

    long, bad = asyncio.run(run())
    assert (long.finish_reason, long.failure) == ("error", "context")
    assert (bad.finish_reason, bad.failure) == ("error", "request")
