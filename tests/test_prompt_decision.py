"""One prompt decision, made with the weights before the engine exists; backends only generate.

The format comes from the manifest entry's `prompt.format` and the model directory
(`prompts.decide_prompt`, through `manifest.find_weights`); the engine renders the text and every
backend (transformers, vLLM, an OpenAI-compatible server) receives the same bytes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from kaggle_submission import manifest as mf
from kaggle_submission.backends.base import GenerationRequest
from kaggle_submission.config import EngineConfig
from kaggle_submission.engine import solve_async
from kaggle_submission.prompts import (
    NUMINA,
    PROMPT_FORMATS,
    PromptFormat,
    decide_prompt,
    format_prompt,
    read_chat_template,
)
from kaggle_submission.sandbox import Sandbox, SandboxConfig

PROBLEM = "What is 2 + 3?"
TODAY = "### Problem: What is 2 + 3?\n### Solution: "  # the bytes every existing model gets
OTHER = "{{ 'Q: ' + messages[0]['content'] + ' A:' }}"  # a model with a format of its own
HANDLE = "tester/tiny/transformers/default/1"


def _model_dir(path: Path, template: str | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    config: dict[str, Any] = {} if template is None else {"chat_template": template}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


# ------------------------------------------------------------------ the decision


def test_read_chat_template_reads_the_tokenizer_files(tmp_path: Path) -> None:
    assert read_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "T1"}))
    assert read_chat_template(tmp_path) == "T1"
    named = [{"name": "tool", "template": "X"}, {"name": "default", "template": "T2"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": named}))
    assert read_chat_template(tmp_path) == "T2"
    (tmp_path / "chat_template.jinja").write_text("T3")
    assert read_chat_template(tmp_path) == "T3"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_chat_template(tmp_path / "missing")


def test_decide_prompt_from_format_and_directory(tmp_path: Path) -> None:
    plain = _model_dir(tmp_path / "plain", None)
    own = _model_dir(tmp_path / "own", OTHER)
    # outside the manifest: the directory's own template, else the kit's format
    assert decide_prompt(None, plain) == NUMINA
    assert decide_prompt(None, own) == PromptFormat("chat_template", OTHER)
    assert decide_prompt(None, own).render(PROBLEM) == "Q: What is 2 + 3? A:"
    assert decide_prompt(None, None).render(PROBLEM) == TODAY
    # the manifest's word decides
    assert decide_prompt("numina", own) == NUMINA
    assert decide_prompt("chat_template", own).render(PROBLEM) == "Q: What is 2 + 3? A:"
    with pytest.raises(ValueError, match="no chat template"):
        decide_prompt("chat_template", plain)
    with pytest.raises(ValueError, match="unknown prompt format 'chatml'"):
        decide_prompt("chatml", own)
    assert NUMINA.render(PROBLEM) == TODAY == format_prompt(PROBLEM)


def test_the_manifest_accepts_exactly_the_formats_the_decision_knows(tmp_path: Path) -> None:
    weights = _model_dir(tmp_path / "w", OTHER)
    for name in PROMPT_FORMATS:
        entry = mf.entry_from_directory(
            weights, "m", kaggle={"kind": "model", "handle": HANDLE}, prompt={"format": name}
        )
        assert entry.prompt.format == name
    with pytest.raises(mf.ManifestError, match=r"field 'prompt\.format'"):
        mf.entry_from_directory(
            weights, "m", kaggle={"kind": "model", "handle": HANDLE}, prompt={"format": "x"}
        )


def test_find_weights_decides_the_prompt_from_the_entry(tmp_path: Path) -> None:
    root = tmp_path / "input"
    weights = _model_dir(root.joinpath("models", *HANDLE.split("/")), OTHER)
    manifest = tmp_path / "m.json"
    for name, expected in (("numina", TODAY), ("chat_template", "Q: What is 2 + 3? A:")):
        entry = mf.entry_from_directory(
            weights, "m", kaggle={"kind": "model", "handle": HANDLE}, prompt={"format": name}
        )
        mf.Manifest(models={"m": entry}).save(manifest)
        found = mf.find_weights("m", manifest, [root])
        assert found.path == weights and found.entry == entry
        assert found.protocol.render(PROBLEM) == expected
    # a directory outside the manifest: only checked to exist, its own template decides
    outside = mf.find_weights(None, explicit_dir=weights)
    assert outside.entry is None and outside.protocol == PromptFormat("chat_template", OTHER)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mf.find_weights(None, explicit_dir=tmp_path / "missing")


def test_find_weights_reads_the_input_root_from_the_environment(tmp_path, monkeypatch) -> None:
    root = tmp_path / "input"
    weights = _model_dir(root.joinpath(*HANDLE.split("/")[1:]), None)  # the classic layout
    entry = mf.entry_from_directory(weights, "m", kaggle={"kind": "model", "handle": HANDLE})
    monkeypatch.setenv("KAGGLE_INPUT_ROOT", str(root))
    assert mf.find_weights(entry).path == weights


# ------------------------------------------------------------------ the same bytes on every path


def _sent_prompt(backend: Any, prompt_format: PromptFormat) -> str:
    """The text the backend received for the first call of one rollout of PROBLEM."""
    sent: list[str] = []
    generate = backend.generate

    async def recording(request: GenerationRequest) -> Any:
        sent.append(request.prompt)
        return await generate(request)

    backend.generate = recording
    config = EngineConfig(num_rollouts=1, max_calls=1, max_tokens_per_call=4, early_stop=None)

    async def go() -> Any:
        try:
            if hasattr(backend, "start"):
                await backend.start()
            return await solve_async(
                PROBLEM, backend=backend, sandbox=box, config=config, protocol=prompt_format
            )
        finally:
            await backend.aclose()

    with Sandbox(SandboxConfig(timeout_s=2.0)) as box:
        solution = asyncio.run(asyncio.wait_for(go(), 600))
    assert solution.trace.prompt == sent[0]
    return sent[0]


def test_transformers_and_openai_server_receive_the_same_text(tiny_model_dir: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("httpx")
    from test_openai_backend import StubServer

    from kaggle_submission.backends import create_backend

    prompt_format = decide_prompt(None, tiny_model_dir)
    assert prompt_format.name == "chat_template"  # rendered through the model's own template
    local = _sent_prompt(create_backend("transformers", model=str(tiny_model_dir)), prompt_format)

    async def served() -> tuple[str, list[dict[str, Any]]]:
        stub = await StubServer().start()
        try:
            backend = create_backend("openai", servers=stub.url, timeout_s=5.0)
            text = await asyncio.to_thread(_sent_prompt, backend, prompt_format)
            return text, stub.bodies
        finally:
            await stub.stop()

    remote, bodies = asyncio.run(served())
    completions = [b for b in bodies if "prompt" in b]
    assert local == remote == completions[0]["prompt"] == TODAY


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_receives_the_same_text(tiny_model_dir: Path) -> None:
    from kaggle_submission.backends import create_backend

    try:
        import vllm  # noqa: F401
    except Exception as exc:  # installed but broken beside this torch
        pytest.skip(f"import vllm failed: {exc!r}")
    backend = create_backend(
        "vllm",
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        extra={"kv_cache_memory_bytes": 32 << 20},
    )
    assert _sent_prompt(backend, decide_prompt(None, tiny_model_dir)) == TODAY


def test_an_explicit_directory_speaks_its_presets_protocol(tmp_path: Path) -> None:
    """`--preset demo-cpu-openmath --model DIR`: the directory is the preset's model, so it gets
    the protocol of the preset's manifest entry (openmath-tir), not the bare template's; a preset
    whose model has no entry decides from the directory alone, as before."""
    from kaggle_submission.config import override
    from kaggle_submission.kernel import resolve_model
    from kaggle_submission.presets import PRESETS

    chatml = (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    own = _model_dir(tmp_path / "own", chatml)
    weights = resolve_model(PRESETS["demo-cpu-openmath"], own)
    assert weights.path == own and weights.protocol.name == "openmath-tir"
    assert "Python code calls" in weights.protocol.render(PROBLEM, 3)
    outside = override(PRESETS["demo-cpu"], model="a-model-not-in-the-manifest")
    assert resolve_model(outside, own).protocol.name == "chat_template"
