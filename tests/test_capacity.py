"""Capacity from any config.json, the OpenMath-Nemotron presets sized by it, and their unfilled
manifest entries (valid, built with a warning, refused by the kernel, filled by `fill`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_submission import manifest as mf
from kaggle_submission.offline.capacity import (
    MODEL_CONFIGS,
    NUMINAMATH_7B,
    ModelShape,
    compare,
    estimate,
    preset_layout,
    report,
)
from kaggle_submission.offline.cli import main as cli_main
from kaggle_submission.presets import PRESETS

OPENMATH_PRESETS = {
    "aimo1-t4x2-openmath7b": "openmath-nemotron-7b-gptq-w8a16",
    "aimo2-l4x4-openmath14b": "openmath-nemotron-14b-gptq-w8a16",
}


def test_shape_from_any_config_json(tmp_path: Path) -> None:
    """Layers, KV heads and head size from config.json; head_dim wins over hidden/heads (Qwen3
    and Gemma set it apart), a nested text_config is read, a missing field is named."""
    qwen3_8b = {
        "num_hidden_layers": 36,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
        "vocab_size": 151936,
    }
    (tmp_path / "config.json").write_text(json.dumps({"text_config": qwen3_8b}))
    shape = ModelShape.from_dir(tmp_path)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (36, 8, 128)
    assert shape.kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2  # 144 KiB (FIELD_NOTES)
    gemma_like = {**qwen3_8b, "hidden_size": 3072, "num_attention_heads": 16, "head_dim": 256}
    assert ModelShape.from_config(gemma_like).head_dim == 256  # not 3072 // 16 = 192
    with pytest.raises(ValueError, match="lacks 'intermediate_size'"):
        ModelShape.from_config({k: v for k, v in qwen3_8b.items() if k != "intermediate_size"})


def test_known_shapes_match_the_field_notes() -> None:
    """KV cache per token: NuminaMath ~480 KiB, Qwen2.5-7B family ~56 KiB, Qwen2.5-14B ~192."""
    kib = {n: ModelShape.for_model(n).kv_bytes_per_token() / 1024 for n in MODEL_CONFIGS}
    assert kib == {
        "numinamath-7b-tir-gptq": 480,
        "openmath-nemotron-7b-gptq-w8a16": 56,
        "openmath-nemotron-14b-gptq-w8a16": 192,
    }
    # the weight formula did not move for the model without head_dim (q/k/v/o from heads)
    assert 7.2e9 < ModelShape.from_config(NUMINAMATH_7B).weight_bytes(8) < 8.2e9
    with pytest.raises(ValueError, match=r"no config\.json shape"):
        ModelShape.for_model("unknown-model")


def test_numina_against_openmath_on_2xt4() -> None:
    """The issue's table: 16k-token rollouts on 2xT4, 8-bit weights, TP=2."""
    numina = estimate(ModelShape.for_model("numinamath-7b-tir-gptq"), "t4x2", lengths=(16384,))
    openmath = estimate(
        ModelShape.for_model("openmath-nemotron-7b-gptq-w8a16"), "t4x2", lengths=(16384,)
    )
    assert numina[0].rollouts_at[16384] == 2 and openmath[0].rollouts_at[16384] == 18
    assert openmath[0].cache_tokens_per_engine > 8 * numina[0].cache_tokens_per_engine
    table = compare(["numinamath-7b-tir-gptq", "openmath-nemotron-7b-gptq-w8a16"], "t4x2", 16384)
    assert "rollouts of 16384 tokens" in table and len(table.splitlines()) == 6


@pytest.mark.parametrize(("preset", "model"), sorted(OPENMATH_PRESETS.items()))
def test_openmath_presets_are_sized_by_capacity(preset: str, model: str) -> None:
    """N rollouts of the preset's full length fit at once in the layout it runs; N is the
    largest power of two that does; temperature 0.6 and 8 code calls (+ the answering call)."""
    spec = PRESETS[preset]
    assert spec.model == model and spec.backend == "vllm"
    assert spec.backend_options["quantization"] == "gptq_marlin"
    assert spec.backend_options["dtype"] == "float16"
    length = spec.backend_options["max_model_len"]
    assert length >= 16384 + 1024  # a 16k-token rollout plus prompt and code outputs
    rows = estimate(
        ModelShape.for_model(model),
        spec.hardware,
        bits=8,
        memory_fraction=spec.backend_options["gpu_memory_utilization"],
        lengths=(length,),
    )
    fits = preset_layout(spec, rows).rollouts_at[length]
    n = spec.engine.num_rollouts
    assert n <= fits < 2 * n
    assert spec.engine.temperature == 0.6 and spec.engine.max_calls == 9
    assert spec.engine.early_stop is not None
    assert spec.budget.borrow_s > 0  # the time bank
    assert spec.engine.max_tokens_per_rollout == 16384  # a 16k-token rollout, restarts included
    text = report(preset)
    assert f"N={n} (all at full length at once)" in text and model in text


def test_per_gpu_layout_is_an_option() -> None:
    spec = PRESETS["aimo1-t4x2-openmath7b"].with_overrides(
        {
            "backend.layout": "per_gpu",
            "backend.tensor_parallel_size": 1,
            "engine.num_rollouts": 8,
        }
    )
    rows = estimate(ModelShape.for_model(spec.model), "t4x2", lengths=(18432,))
    run = preset_layout(spec, rows)
    assert run.layout == "per_gpu" and run.rollouts_at[18432] >= 8


def test_capacity_cli_shows_every_gpu_preset_and_compares(capsys) -> None:
    assert cli_main(["capacity"]) == 0
    out = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert (name in out) is (preset.hardware != "cpu")
    assert "56 KiB/token (28 layers x 4 KV heads x 128)" in out
    assert (
        cli_main(
            ["capacity", "--compare", "numinamath-7b-tir-gptq,openmath-nemotron-7b-gptq-w8a16"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "openmath-nemotron-7b-gptq-w8a16" in table and "per_gpu" in table


# ------------------------------------------------------------------------------ unfilled entries


def test_repo_entries_are_unfilled_and_the_kernel_refuses_them(tmp_path: Path) -> None:
    manifest = mf.load_manifest()
    for preset, model in OPENMATH_PRESETS.items():
        entry = manifest.get(model)
        assert entry.unfilled and not entry.complete and entry.presets == (preset,)
        assert entry.prompt.format == "openmath-tir"
        q = entry.quantization
        assert q is not None and (q.method, q.bits, q.group_size, q.desc_act, q.sym) == (
            "gptq", 8, 128, False, True,
        )  # fmt: skip
        # an unfilled entry would "hold" any directory: the kernel refuses it instead
        with pytest.raises(mf.ManifestError, match=r"unfilled.*manifest fill"):
            mf.find_weights(model, roots=[tmp_path], explicit_dir=tmp_path)


def test_fill_lists_the_files_of_an_unfilled_entry(tmp_path: Path) -> None:
    weights = tmp_path / "w"
    (weights / "sub").mkdir(parents=True)
    (weights / "config.json").write_text("{}")
    (weights / "model-00001-of-00002.safetensors").write_bytes(b"x" * 10)
    (weights / "sub" / "extra.txt").write_text("e")
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (weights / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (weights / "model-metadata.json").write_text("{}")  # upload bookkeeping: ignored
    name = "openmath-nemotron-7b-gptq-w8a16"
    path = tmp_path / "m.json"
    mf.load_manifest().save(path)
    manifest = mf.load_manifest(path)
    # never guessed from a directory: an unfilled entry matches everything
    assert mf.main(["--manifest", str(path), "fill", str(weights)]) == 2
    assert mf.main(["--manifest", str(path), "fill", str(weights), "--name", name]) == 0
    entry = mf.load_manifest(path).get(name)
    assert [f.path for f in entry.files] == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "sub/extra.txt",
        "tokenizer_config.json",
    ]
    assert entry.complete and entry.file("model-00001-of-00002.safetensors").size == 10
    assert entry.prompt == manifest.get(name).prompt  # the rest of the entry kept
    found = mf.find_weights(name, manifest_path=path, explicit_dir=weights, check_hashes=True)
    assert found.path == weights and found.protocol.name == "openmath-tir"


def test_build_kernel_builds_the_openmath_presets_with_a_warning(tmp_path: Path) -> None:
    pytest.importorskip("nbformat")
    import build_kernel as bk

    for preset, model in OPENMATH_PRESETS.items():
        build = bk.build(bk.BuildOptions(preset=preset, owner="tester"), tmp_path / preset)
        assert build.entry is not None and build.entry.name == model
        assert any("unfilled" in w and "refuse" in w for w in build.warnings)
        assert (tmp_path / preset / f"aimo-kit-{preset}.ipynb").is_file()
