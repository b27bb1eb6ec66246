"""The transformers backend on tiny models loaded from disk (built offline by tiny_models).

Three models: `scripted` writes a known text then EOS under greedy decoding (stop strings, EOS,
lengths, detokenization), `random` is a plain random Llama (sampling and seeds) and `peaked`
has large random weights so its greedy text changes if positions, padding or the KV cache are
mishandled (batching against `model.generate`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import CHAT_TEMPLATE, DEFAULT_SCRIPT

from kaggle_submission.backends import create_backend
from kaggle_submission.backends.base import GenerationRequest, SamplingParams
from kaggle_submission.prompts import OUTPUT_FENCE, PromptFormat, decide_prompt

PROBLEM = "What is 2 + 3?"


@pytest.fixture(scope="module")
def scripted(scripted_model_dir: Path):
    backend = create_backend(
        "transformers", model=scripted_model_dir, device="cpu", max_batch_size=16
    )
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def random_backend(tiny_model_dir: Path):
    backend = create_backend("transformers", model=str(tiny_model_dir), device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def peaked(peaked_model_dir: Path):
    backend = create_backend("transformers", model=peaked_model_dir, device="cpu", dtype="float32")
    yield backend
    backend.close()


def request(prompt: str, rid: str = "r", **params) -> GenerationRequest:
    return GenerationRequest(rid, prompt, SamplingParams(**params))


def run(coro):
    return asyncio.run(coro)


async def steps_pass(backend, n: int, timeout: float = 20.0) -> None:
    """Wait until the worker has decoded `n` more steps (a request is mid-decoding)."""
    target = backend.stats["steps"] + n
    deadline = time.monotonic() + timeout
    while backend.stats["steps"] < target:
        assert time.monotonic() < deadline, "the worker made no progress"
        await asyncio.sleep(0.002)


def prompt_for(backend, problem: str = PROBLEM) -> str:
    """The prompt as the engine renders it: decided from the model directory, not the backend."""
    return decide_prompt(None, backend.model_path).render(problem)


# ------------------------------------------------------------------ loading, template, describe


def test_the_model_directory_decides_the_prompt_not_the_backend(scripted):
    assert scripted.name == "transformers"
    assert not hasattr(scripted, "chat_template")  # backends receive text and only generate
    assert decide_prompt(None, scripted.model_path) == PromptFormat("chat_template", CHAT_TEMPLATE)
    assert prompt_for(scripted) == "### Problem: What is 2 + 3?\n### Solution: "


def test_describe(scripted):
    info = scripted.describe()
    assert info["engine"] == "transformers"
    assert info["device"] == "cpu"
    assert info["dtype"] == "float32"
    assert info["max_model_len"] == 1024
    assert {"torch", "transformers", "tokenizers", "python"} <= set(info["versions"])


def test_importing_backends_does_not_import_torch():
    code = (
        "import sys, kaggle_submission.backends\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ------------------------------------------------------------------ text, stops, eos, length


def test_greedy_writes_the_script_then_eos(scripted):
    out = run(scripted.generate(request(prompt_for(scripted), temperature=0.0, max_tokens=50)))
    assert out.finish_reason == "eos"
    assert out.text == DEFAULT_SCRIPT
    assert out.stop is None and out.error is None
    assert out.prompt_tokens == len(scripted.tokenizer(prompt_for(scripted))["input_ids"])
    assert out.completion_tokens == len(scripted.tokenizer(DEFAULT_SCRIPT)["input_ids"])  # + EOS
    assert out.seconds > 0


def test_stop_string_is_kept_and_ends_the_text(scripted):
    params = {"temperature": 0.0, "max_tokens": 50, "stop": (OUTPUT_FENCE,)}
    out = run(scripted.generate(request(prompt_for(scripted), **params)))
    assert out.finish_reason == "stop"
    assert out.stop == OUTPUT_FENCE
    assert out.text == DEFAULT_SCRIPT
    assert out.text.endswith(OUTPUT_FENCE)


def test_stop_inside_a_token_cuts_right_after_it_and_earliest_wins(scripted):
    prompt = prompt_for(scripted)
    out = run(scripted.generate(request(prompt, temperature=0.0, max_tokens=50, stop=("omp",))))
    assert (out.text, out.finish_reason, out.stop) == ("We comp", "stop", "omp")
    assert out.completion_tokens == 2  # "We", " compute"
    stops = ("42", "value", "nowhere")
    out = run(scripted.generate(request(prompt, temperature=0.0, max_tokens=50, stop=stops)))
    assert (out.text, out.stop) == ("We compute the value", "value")


def test_max_tokens_gives_length_with_exactly_that_many_tokens(
    scripted, random_backend, tiny_model_dir
):
    out = run(scripted.generate(request(prompt_for(scripted), temperature=0.0, max_tokens=3)))
    assert (out.text, out.finish_reason, out.completion_tokens) == ("We compute the", "length", 3)
    prompt = prompt_for(random_backend, "How many primes are less than 100?")
    out = run(random_backend.generate(request(prompt, temperature=0.0, max_tokens=17)))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 17
    # Incremental detokenization (with held-back partial UTF-8) equals decoding all at once.
    assert out.text == reference_greedy(tiny_model_dir, [prompt], 17)[0]


def test_tiny_top_p_is_greedy(scripted, random_backend):
    for backend in (scripted, random_backend):
        prompt = prompt_for(backend)
        greedy = run(backend.generate(request(prompt, temperature=0.0, max_tokens=12)))
        nucleus = run(
            backend.generate(request(prompt, temperature=1.0, top_p=1e-6, max_tokens=12, seed=3))
        )
        assert nucleus.text == greedy.text


# ------------------------------------------------------------------ seeds and batching


def test_same_seed_same_text_different_seeds_differ(random_backend):
    prompt = prompt_for(random_backend)

    def sample(seed: int):
        params = {"temperature": 1.0, "max_tokens": 16, "seed": seed}
        return run(random_backend.generate(request(prompt, **params)))

    first, again = sample(123), sample(123)
    assert first.text == again.text
    assert first.completion_tokens == again.completion_tokens
    texts = {sample(seed).text for seed in range(4)}
    assert len(texts) >= 3


def test_concurrent_requests_share_a_batch_and_keep_their_seeded_text(random_backend):
    prompt = prompt_for(random_backend)
    reqs = [
        request(prompt + "x" * i, f"r{i}", temperature=1.0, top_p=0.9, max_tokens=16, seed=i)
        for i in range(8)
    ]
    solo = [run(random_backend.generate(r)) for r in reqs]

    async def together():
        return await asyncio.gather(*(random_backend.generate(r) for r in reqs))

    before = random_backend.stats
    batched = run(together())
    after = random_backend.stats
    steps = after["steps"] - before["steps"]
    row_steps = after["row_steps"] - before["row_steps"]
    assert 0 < steps < 16
    assert row_steps >= 6 * steps  # on average most of the 8 rows decoded in every step
    assert after["max_rows"] >= 8
    assert [c.request_id for c in batched] == [r.request_id for r in reqs]
    assert [c.text for c in batched] == [c.text for c in solo]


def reference_greedy(model_dir: Path, prompts: list[str], max_new: int) -> list[str]:
    """Greedy text of each prompt alone, by `model.generate` (no padding, no batch)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    texts = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=max_new, do_sample=False)
            texts.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def test_padding_joining_and_chunked_prefill_match_model_generate(peaked, peaked_model_dir):
    """Left padding, rows joining a running batch, chunked prefill: same greedy text as alone."""
    problems = [f"What is {'2 + 3 * ' * i}7?" for i in range(6)]
    prompts = [prompt_for(peaked, p) for p in problems]
    expected = reference_greedy(peaked_model_dir, prompts, 24)
    reqs = [request(p, f"p{i}", temperature=0.0, max_tokens=24) for i, p in enumerate(prompts)]

    async def together():
        return await asyncio.gather(*(peaked.generate(r) for r in reqs))

    assert [c.text for c in run(together())] == expected

    async def staggered():
        long = asyncio.create_task(
            peaked.generate(request(prompts[0], "long", temperature=0.0, max_tokens=80))
        )
        await steps_pass(peaked, 3)
        late = []
        for r in reqs:
            late.append(asyncio.create_task(peaked.generate(r)))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*late), await long

    joined_before = peaked.stats["joined_running"]
    late, long = run(staggered())
    assert peaked.stats["joined_running"] > joined_before
    assert [c.text for c in late] == expected
    assert long.text.startswith(expected[0])

    peaked.max_prefill_tokens = 8  # prompts of ~20-40 tokens: prefilled in several chunks
    try:
        assert [c.text for c in run(together())] == expected
    finally:
        peaked.max_prefill_tokens = 8192


# ------------------------------------------------------------------ cancellation and errors


def test_cancel_in_flight_request(random_backend):
    prompt = prompt_for(random_backend)
    seen: dict[str, object] = {}

    async def scenario():
        victim = asyncio.create_task(
            random_backend.generate(request(prompt, "victim", temperature=0.0, max_tokens=900))
        )
        await steps_pass(random_backend, 3)
        others = [
            asyncio.create_task(
                random_backend.generate(request(prompt, f"o{i}", temperature=1.0, max_tokens=12))
            )
            for i in range(3)
        ]
        await asyncio.sleep(0.01)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        seen["cancelled_at"] = random_backend.stats["steps"]
        return await asyncio.gather(*others)

    before = random_backend.stats
    others = run(scenario())
    assert all(c.finish_reason in ("length", "eos") and c.text for c in others)
    time.sleep(0.05)
    after = random_backend.stats
    assert after["cancelled"] == before["cancelled"] + 1
    # The victim left the batch: far fewer steps than its 900 tokens, and the worker is idle.
    assert after["steps"] - before["steps"] < 100
    time.sleep(0.05)
    assert random_backend.stats["steps"] == after["steps"]


def test_over_long_prompt_is_an_error_and_the_backend_goes_on(scripted):
    prompt = prompt_for(scripted)
    too_long = "### Problem: " + "2 + 3 " * 2000

    async def mixed():
        return await asyncio.gather(
            scripted.generate(request(too_long, "long", temperature=0.0, max_tokens=8)),
            scripted.generate(request(prompt, "ok", temperature=0.0, max_tokens=50)),
        )

    bad, good = run(mixed())
    assert bad.finish_reason == "error"
    assert "max_model_len" in (bad.error or "")
    assert (good.finish_reason, good.text) == ("eos", DEFAULT_SCRIPT)
    again = run(scripted.generate(request(prompt, temperature=0.0, max_tokens=50)))
    assert again.text == DEFAULT_SCRIPT


def test_bad_params_are_an_error(scripted):
    out = run(scripted.generate(request(prompt_for(scripted), temperature=-1.0)))
    assert out.finish_reason == "error" and "temperature" in (out.error or "")


def test_a_failing_forward_errors_its_rows_and_the_worker_survives(scripted):
    """A forward that raises (e.g. out of memory) in prefill or mid-decoding."""
    model = scripted.model
    real_forward = model.forward
    calls = {"n": 0}

    def fail_on(n: int):
        def forward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("injected failure")
            return real_forward(*args, **kwargs)

        return forward

    prompt = prompt_for(scripted)
    try:
        for n in (1, 3):  # 1: the prefill, 3: the second decoding step
            calls["n"] = 0
            model.forward = fail_on(n)
            out = run(scripted.generate(request(prompt, temperature=0.0, max_tokens=50)))
            assert out.finish_reason == "error"
            assert "injected failure" in (out.error or "")
    finally:
        del model.forward
    out = run(scripted.generate(request(prompt, temperature=0.0, max_tokens=50)))
    assert (out.finish_reason, out.text) == ("eos", DEFAULT_SCRIPT)


def test_aclose_aborts_running_requests(tiny_model_dir):
    backend = create_backend("transformers", model=tiny_model_dir, device="cpu")

    async def scenario():
        prompt = prompt_for(backend)
        task = asyncio.create_task(
            backend.generate(request(prompt, temperature=0.0, max_tokens=900))
        )
        while backend.stats["steps"] < 2 and not task.done():
            await asyncio.sleep(0.002)
        await backend.aclose()
        out = await task
        with pytest.raises(RuntimeError):
            await backend.generate(request(prompt))
        return out

    out = run(scenario())
    assert out.finish_reason == "abort"
    assert not backend.worker_alive


# ------------------------------------------------------------------ CUDA (skipped without a GPU)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_cuda_auto_placement_text_batching_and_cancel(scripted_model_dir, tiny_model_dir):
    """device/dtype "auto" on a GPU: the same behaviour as on the CPU, in half precision."""
    import torch

    major, _ = torch.cuda.get_device_capability()
    scripted_gpu = create_backend("transformers", model=scripted_model_dir)
    random_gpu = create_backend("transformers", model=tiny_model_dir, max_batch_size=4)
    try:
        info = scripted_gpu.describe()
        assert info["device"].startswith("cuda")
        assert info["dtype"] == ("bfloat16" if major >= 8 else "float16")
        prompt = prompt_for(scripted_gpu)
        stop = (OUTPUT_FENCE,)
        out = run(scripted_gpu.generate(request(prompt, temperature=0.0, stop=stop)))
        assert (out.text, out.finish_reason, out.stop) == (DEFAULT_SCRIPT, "stop", OUTPUT_FENCE)

        prompt = prompt_for(random_gpu)
        reqs = [
            request(prompt + " " * i, f"g{i}", temperature=1.0, top_p=0.95, max_tokens=20, seed=i)
            for i in range(10)
        ]
        solo = [run(random_gpu.generate(r)) for r in reqs[:3]]
        assert [c.text for c in solo] == [run(random_gpu.generate(r)).text for r in reqs[:3]]

        async def batched_and_cancel():
            victim = asyncio.create_task(
                random_gpu.generate(request(prompt, "v", temperature=0.0, max_tokens=900))
            )
            await steps_pass(random_gpu, 3)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            return await asyncio.gather(*(random_gpu.generate(r) for r in reqs))

        before = random_gpu.stats
        done = run(batched_and_cancel())
        after = random_gpu.stats
        assert after["cancelled"] == before["cancelled"] + 1
        assert after["max_rows"] == 4  # max_batch_size: ten requests, four rows at a time
        assert all(c.finish_reason in ("length", "eos") for c in done)
        assert all(c.completion_tokens == 20 for c in done if c.finish_reason == "length")
    finally:
        scripted_gpu.close()
        random_gpu.close()
