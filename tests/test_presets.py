"""Presets, overrides and preset files."""

from __future__ import annotations

import json

import pytest

from kaggle_submission.offline.capacity import (
    NUMINAMATH_7B,
    ModelShape,
    estimate,
    parse_hardware,
    report,
)
from kaggle_submission.presets import PRESETS, get_preset, parse_overrides
from kaggle_submission.stopping import ConsensusStop


@pytest.mark.parametrize(
    ("name", "competition", "hardware", "max_answer", "hours"),
    [
        ("aimo1-t4x2", "aimo1", "t4x2", 999, 9),
        ("aimo2-l4x4", "aimo2", "l4x4", 999, 5),
        ("aimo3-h100", "aimo3", "h100x1", 99999, 5),
    ],
)
def test_competition_presets(name, competition, hardware, max_answer, hours):
    preset = PRESETS[name]
    assert preset.competition == competition
    assert preset.hardware == hardware
    assert preset.policy.max_value == max_answer
    assert preset.budget.total_s == hours * 3600
    assert preset.budget.num_problems == 50
    assert preset.backend == "vllm"
    assert preset.backend_options["quantization"] == "gptq"


def test_t4_preset_names_turing_settings():
    options = PRESETS["aimo1-t4x2"].backend_options
    assert options["dtype"] == "float16"
    assert options["attention_backend"] == "TRITON_ATTN"
    assert options["tensor_parallel_size"] == 2


def test_dotted_overrides():
    preset = PRESETS["aimo1-t4x2"].with_overrides(
        {
            "engine.num_rollouts": 16,
            "engine.early_stop": {"agree": 5, "within_first": 7},
            "budget.total_s": 600,
            "backend.max_model_len": 2048,
            "sandbox.timeout_s": 3.0,
        }
    )
    assert preset.engine.num_rollouts == 16
    assert preset.engine.early_stop == ConsensusStop(agree=5, within_first=7)
    assert preset.budget.total_s == 600
    assert preset.backend_options["max_model_len"] == 2048
    assert preset.backend_options["tensor_parallel_size"] == 2
    assert preset.sandbox.timeout_s == 3.0
    assert PRESETS["aimo1-t4x2"].engine.num_rollouts == 48  # the original is untouched


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"engine.nope": 1}, "EngineConfig has no field"),
        ({"gpu.count": 1}, "unknown override section 'gpu'"),
        ({"engine.num_rollouts": 0}, "must be >= 1"),
    ],
)
def test_bad_overrides_name_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        PRESETS["demo-cpu"].with_overrides(changes)


def test_preset_file(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"base": "aimo1-t4x2", "overrides": {"engine.num_rollouts": 32}}))
    preset = get_preset(str(path))
    assert preset.name == "tuned"
    assert preset.engine.num_rollouts == 32
    (tmp_path / "bad.json").write_text('{"base": "nope"}')
    with pytest.raises(ValueError, match=r"bad\.json: not a valid preset file"):
        get_preset(str(tmp_path / "bad.json"))


def test_capacity_of_the_mission_model():
    shape = ModelShape.from_config(NUMINAMATH_7B)
    assert shape.kv_bytes_per_token() == 491_520  # 0.49 MB: 2 x 30 layers x 32 heads x 128 x 2 B
    assert 7.2e9 < shape.weight_bytes(8) < 8.2e9  # ~7.4 GB of 8-bit weights with fp16 embeddings
    tensor_parallel, per_gpu = estimate(shape, "t4x2")
    assert tensor_parallel.engines == 1 and per_gpu.engines == 2
    assert tensor_parallel.cache_tokens_per_engine > 2 * per_gpu.cache_tokens_per_engine
    assert tensor_parallel.rollouts_at[2048] > per_gpu.rollouts_at[2048]
    assert "rollouts that fit" in report("aimo1-t4x2")


def test_capacity_reads_a_model_dir(tiny_model_dir):
    shape = ModelShape.from_dir(tiny_model_dir)
    assert shape.head_dim == 64
    with pytest.raises(ValueError, match="expected <gpu>x<count>"):
        parse_hardware("tpu")


# ---------------------------------------------------------------- one reader, one parser, one table


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("16", 16),
        ("2e-5", 2e-5),
        ("true", True),
        ("null", None),
        ('"quoted"', "quoted"),
        ('{"agree": 4}', {"agree": 4}),
        ("[wandb]", ["wandb"]),  # a YAML flow collection (training's configs)
        ("[{path: x.jsonl}]", [{"path": "x.jsonl"}]),
        ("float16", "float16"),  # anything else: the bare string, verbatim
        ("yes", "yes"),
        ("runs/x", "runs/x"),
        ("", ""),
    ],
)
def test_set_values_follow_one_rule_everywhere(text, value):
    from kaggle_submission.presets import parse_set_value
    from training import config as training_config

    assert parse_set_value(text) == value
    assert parse_overrides([f"a.b={text}"]) == {"a.b": value}
    assert training_config.parse_override(f"a.b={text}") == (["a", "b"], value)


@pytest.mark.parametrize("pair", ["oops", "=5"])
def test_set_needs_a_key(pair):
    from training import config as training_config

    with pytest.raises(ValueError, match="expected key=value"):
        parse_overrides([pair])
    with pytest.raises(training_config.ConfigError, match="expected key=value"):
        training_config.parse_override(pair)


def test_one_preset_file_reader(tmp_path):
    import build_kernel as bk
    from kaggle_submission.offline import tune
    from kaggle_submission.presets import read_preset_file

    path = tmp_path / "tuned.json"
    path.write_text(
        json.dumps(
            {
                "base": "aimo1-t4x2",
                "overrides": {"engine.num_rollouts": 24},
                "description": "tuned",
            }
        )
    )
    spec = read_preset_file(path)
    assert (spec.base, dict(spec.overrides), spec.name, spec.description) == (
        "aimo1-t4x2",
        {"engine.num_rollouts": 24},
        "tuned",
        "tuned",
    )
    assert tune.base_preset(str(path)) == ("aimo1-t4x2", {"engine.num_rollouts": 24})
    base, overrides, built = bk.resolve_preset_input(str(path), {})
    assert (base, overrides["name"], overrides["description"]) == ("aimo1-t4x2", "tuned", "tuned")
    assert built == get_preset(str(path))
    bad = tmp_path / "bad.json"
    bad.write_text('{"overrides": {}}')
    with pytest.raises(ValueError, match=r"bad\.json: not a valid preset file"):
        read_preset_file(bad)
    with pytest.raises(bk.BuildError, match="not a valid preset file"):
        bk.resolve_preset_input(str(bad), {})


def test_one_hardware_table():
    import build_kernel as bk
    from kaggle_submission import hardware
    from kaggle_submission.offline import capacity
    from kaggle_submission.offline.tuning.throughput import roofline_table

    assert capacity.GPUS is hardware.GPUS and bk.MACHINE_SHAPES is hardware.MACHINE_SHAPES
    for preset in PRESETS.values():
        if preset.hardware == "cpu":
            continue
        gpu, _ = hardware.parse_hardware(preset.hardware)
        assert preset.hardware in hardware.MACHINE_SHAPES
        table = roofline_table(preset.hardware)
        assert f"{hardware.GPUS[gpu].bandwidth / 1e9:.0f} GB/s" in table.source
