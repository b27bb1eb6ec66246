"""The training side on tiny models and a few dozen rows (CPU, no downloads).

Each stage runs for real: data preparation and decontamination, SFT stage 1 and 2 through TRL
(a handful of steps), GPTQ quantization through gptqmodel (skipped with the reason when it is not
installed), publish into a manifest, the kernel loading the published model, and KTO sampling
through the kernel's engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl", reason="training needs trl (training/requirements-train.txt)")
pytest.importorskip("datasets", reason="training needs datasets")

from kaggle_submission import manifest as mf
from kaggle_submission.prompts import format_prompt
from training import config as tc
from training import data as td
from training.sft import SFTStageConfig, accumulation_steps, build_trainer, train

REPO = Path(__file__).resolve().parent.parent
TIR_SAMPLE = REPO / "data" / "numinamath_tir_sample.jsonl"
AIME_PROBLEM = (
    "Find the number of ordered pairs $(m,n)$ of positive integers such that $m^2n = 20^{20}$."
)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tir.jsonl (synthetic TIR rows + the real NuminaMath-TIR row), cot.jsonl (no code)."""
    from training.synthetic import make_rows

    out = tmp_path_factory.mktemp("rows")
    tir = make_rows(30, seed=5)
    real = json.loads(TIR_SAMPLE.read_text().splitlines()[0])
    td.write_jsonl(
        out / "tir.jsonl", [*tir, {"problem": real["problem"], "solution": real["solution"]}]
    )
    cot = [
        {
            "problem": r["problem"],
            "solution": f"We compute it. The answer is $\\boxed{{{r['answer']}}}$.",
        }
        for r in tir
    ]
    td.write_jsonl(out / "cot.jsonl", cot)
    return out


def stage_config(model: str, out: Path, data_file: Path, **changes: object) -> SFTStageConfig:
    """A few-step CPU version of the stage configs (recipe from the YAML, sizes tiny)."""
    overrides = [
        f"model={model}",
        f"output_dir={out}",
        f"data.sources=[{{path: {data_file}}}]",
        "data.eval_fraction=0.1",
        "block_size=64",
        "max_steps=3",
        "per_device_train_batch_size=2",
        "global_batch_size=4",
        "bf16=false",
        "gradient_checkpointing=false",
        "save_strategy=no",
        "logging_steps=1",
        "disable_tqdm=true",
        "torch_threads=2",
        "attn_implementation=null",
    ]
    overrides += [f"{k}={v}" for k, v in changes.items()]
    return tc.load_config(SFTStageConfig, tc.CONFIG_DIR / "stage1_cot.yaml", overrides)


# ------------------------------------------------------------------------------ configs


def test_stage_configs_follow_the_winners_recipe() -> None:
    s1 = tc.load_config(SFTStageConfig, tc.CONFIG_DIR / "stage1_cot.yaml")
    s2 = tc.load_config(SFTStageConfig, tc.CONFIG_DIR / "stage2_tir.yaml")
    assert (s1.block_size, s2.block_size) == (2048, 1024)
    assert (s1.num_train_epochs, s2.num_train_epochs) == (3, 4)
    assert (s1.warmup_ratio, s2.warmup_ratio) == (0.0, 0.1)
    for s in (s1, s2):
        assert s.learning_rate == 2e-5 and s.lr_scheduler_type == "cosine"
        assert s.packing and s.bf16 and s.gradient_checkpointing and s.global_batch_size == 32
        assert s.data.decontamination.enabled
    assert s1.data.sources[0].name == "AI-MO/NuminaMath-CoT"
    assert s2.data.sources[0].name == "AI-MO/NuminaMath-TIR"
    assert s2.model == "runs/stage1_cot/final"
    assert accumulation_steps(s1, processes=8) == 1
    assert accumulation_steps(s1, processes=1) == 8


def test_overrides_and_errors() -> None:
    cfg = tc.load_config(
        SFTStageConfig,
        tc.CONFIG_DIR / "stage2_tir.yaml",
        ["learning_rate=1e-5", "data.decontamination.jaccard=0.7", "report_to=[wandb]"],
    )
    assert cfg.learning_rate == 1e-5 and cfg.data.decontamination.jaccard == 0.7
    assert cfg.report_to == ("wandb",)
    with pytest.raises(tc.ConfigError, match="block_size: expected an integer"):
        tc.load_config(SFTStageConfig, None, ["block_size=big"])
    with pytest.raises(tc.ConfigError, match=r"unknown key\(s\) \['lr'\]"):
        tc.load_config(SFTStageConfig, None, ["lr=1"])
    with pytest.raises(tc.ConfigError, match="expected key=value"):
        tc.load_config(SFTStageConfig, None, ["oops"])
    bad = tc.load_config(SFTStageConfig, None, ["gradient_accumulation_steps=3"])
    with pytest.raises(ValueError, match="!= global_batch_size 32"):
        accumulation_steps(bad, processes=8)


def test_accelerate_and_deepspeed_configs() -> None:
    yaml = pytest.importorskip("yaml")
    cfg_dir = tc.CONFIG_DIR
    z3 = yaml.safe_load((cfg_dir / "accelerate/zero3_8gpu.yaml").read_text())
    assert z3["distributed_type"] == "DEEPSPEED" and z3["num_processes"] == 8
    ds_file = REPO / z3["deepspeed_config"]["deepspeed_config_file"]
    ds = json.loads(ds_file.read_text())
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    one = yaml.safe_load((cfg_dir / "accelerate/single_gpu.yaml").read_text())
    assert one["num_processes"] == 1 and one["distributed_type"] == "NO"
    for name in ("kto.yaml", "quantize.yaml", "publish.yaml", "demo.yaml"):
        assert yaml.safe_load((cfg_dir / name).read_text())


# ------------------------------------------------------------------------------ data


def test_rendered_prompt_is_the_kernels_byte_for_byte(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    problem, solution = (
        "What is $2+3$?",
        "```python\nprint(2+3)\n```\n```output\n5\n```\n$\\boxed{5}$",
    )
    for template in (None, tok.chat_template):
        text = td.render(problem, solution, template)
        prompt = format_prompt(problem, template)
        assert text == prompt + solution
        assert text.encode().startswith(b"### Problem: What is $2+3$?\n### Solution: ")
    # What TRL tokenizes starts with exactly the ids the kernel's backend sends for the prompt.
    ds = __import__("training.sft", fromlist=["x"]).rendered_dataset(
        [{"problem": problem, "solution": solution}], tok.chat_template
    )
    ids = tok(ds[0]["text"])["input_ids"]
    prompt_ids = tok(format_prompt(problem, tok.chat_template))["input_ids"]
    assert ids[: len(prompt_ids) - 1] == prompt_ids[:-1]


def test_decontamination_removes_planted_duplicates(tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    (val / "aime.csv").write_text(f'id,problem,answer\n1,"{AIME_PROBLEM}",312\n')
    cfg = td.DecontamConfig(validation_dirs=(str(val),))
    rows = [
        {"problem": AIME_PROBLEM, "solution": "exact copy"},
        {
            "problem": "  find the NUMBER of ordered pairs (m, n) of positive integers such that "
            "$m^{2} n = 20^{20}$ .",
            "solution": "reformatted",
        },
        {
            "problem": AIME_PROBLEM.replace("positive integers", "positive whole numbers"),
            "solution": "reworded",
        },
        {
            "problem": "Problem 7 (AIME). " + AIME_PROBLEM + " Give the answer mod 1000.",
            "solution": "embedded",
        },
        {
            "problem": "Find the number of ordered pairs of primes whose sum is 20.",
            "solution": "ok",
        },
        {"problem": "What is $2+3$?", "solution": "ok"},
    ]
    kept, report = td.decontaminate(rows, cfg)
    assert [r["solution"] for r in kept] == ["ok", "ok"]
    assert report["exact"] == 2  # the copy and the reformatted one normalise to the same text
    assert report["near"] == 2
    assert report["by_file"] == {"aime.csv": {"exact": 2, "near": 2}}
    assert report["rows_in"] == 6 and report["rows_out"] == 2
    assert all(r["validation"] == "aime.csv:1" for r in report["removed"])


def test_decontamination_against_the_shipped_sets() -> None:
    problems = td.validation_problems(td.DecontamConfig())
    assert len(problems) > 150  # AIME, AMC, AIMO-1 train, AIMO-3 reference
    shipped = problems[0]
    kept, report = td.decontaminate(
        [{"problem": shipped.text, "solution": "x"}, {"problem": "What is 1+1?", "solution": "y"}],
        td.DecontamConfig(),
    )
    assert len(kept) == 1 and report["exact"] == 1


def test_prepare_splits_and_reports(rows_dir: Path) -> None:
    cfg = td.DataConfig(
        sources=(td.SourceSpec(path=str(rows_dir / "tir.jsonl")),), eval_fraction=0.2, seed=1
    )
    prepared = td.prepare(cfg)
    assert len(prepared.train) + len(prepared.eval) == 31
    assert len(prepared.eval) == 6
    train_problems = {r["problem"] for r in prepared.train}
    assert not train_problems & {r["problem"] for r in prepared.eval}
    assert "decontamination removed 0 exact" in td.summary_line(prepared.report)


# ------------------------------------------------------------------------------ SFT


def test_packed_blocks_have_the_configured_length(
    tiny_model_dir: Path, rows_dir: Path, tmp_path: Path
) -> None:
    cfg = stage_config(str(tiny_model_dir), tmp_path / "pack", rows_dir / "tir.jsonl")
    trainer, prepared = build_trainer(cfg)
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert len(lengths) > 3
    assert all(n == 64 for n in lengths[:-1]) and 0 < lengths[-1] <= 64
    tok = trainer.processing_class
    # No loss masking (the winner's recipe) and texts joined by EOS.
    first = trainer.train_dataset[0]
    assert first["labels"] == first["input_ids"]
    assert tok.eos_token_id in [i for ids in trainer.train_dataset["input_ids"] for i in ids]
    assert len(prepared.eval) == 3


@pytest.mark.slow
def test_sft_stage1_then_stage2(tiny_model_dir: Path, rows_dir: Path, tmp_path: Path) -> None:
    s1 = stage_config(str(tiny_model_dir), tmp_path / "s1", rows_dir / "cot.jsonl", stage="s1")
    r1 = train(s1)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (r1.final_dir / name).is_file(), name
    info = json.loads((tmp_path / "s1" / "training_info.json").read_text())
    assert info["gradient_accumulation_steps"] == 2
    assert info["config"]["block_size"] == 64
    assert "eval_loss" in r1.metrics

    s2 = stage_config(
        str(r1.final_dir), tmp_path / "s2", rows_dir / "tir.jsonl", stage="s2", warmup_ratio=0.1
    )
    r2 = train(s2)
    assert (r2.final_dir / "model.safetensors").is_file()
    assert r2.metrics["train_blocks"] > 3


# ------------------------------------------------------------------------------ quantize


@pytest.mark.slow
def test_quantize_gptq_8bit_on_cpu(tiny_model_dir: Path, rows_dir: Path, tmp_path: Path) -> None:
    try:
        import gptqmodel  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        reason = f"gptqmodel is not usable here ({exc}); see training/requirements-quantize.txt"
        if os.environ.get("KAGGLE_SUBMISSION_REQUIRE_GPTQ"):  # CI installs it: a skip would hide
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path / "gptq"
    cmd = [
        sys.executable, "-m", "training.quantize",
        "--config", str(tc.CONFIG_DIR / "quantize.yaml"),
        "--set", f"model_dir={tiny_model_dir}",
        "--set", f"output_dir={out}",
        "--set", f"calibration.sources=[{{path: {rows_dir / 'tir.jsonl'}}}]",
        "--set", "calibration.num_samples=16",
        "--set", "calibration.max_length=128",
        "--set", "device=cpu",
        "--set", "desc_act=true",
        "--set", "verify_samples=2",
    ]  # fmt: skip
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"
    assert (qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]) == (8, 128, True, True)
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    info = json.loads((out / "quantize_info.json").read_text())
    assert info["library"] == "gptqmodel" and info["library_version"]
    assert info["calibration"]["used"] == 16
    assert info["check"]["top1_agreement"] > 0.8  # random tiny model: near-ties flip a few

    entry = __import__("training.publish", fromlist=["x"]).publish_directory(
        out,
        name="tiny-gptq",
        manifest_path=tmp_path / "w.json",
        description="tiny",
        kaggle={"kind": "model", "handle": "me/tiny/transformers/gptq-8bit/1"},
    )
    q = entry.quantization
    assert q is not None and (q.method, q.bits, q.desc_act, q.library) == (
        "gptq",
        8,
        True,
        "gptqmodel",
    )


@pytest.mark.slow
def test_quantize_existing_in_its_protocol_then_fill(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An existing model's W8A16 recipe: calibration rendered by its protocol (openmath-tir
    through the model's chat template), desc_act false, fp16, a logit check, and the unfilled
    manifest entry filled with the files written."""
    try:
        import gptqmodel  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        reason = f"gptqmodel is not usable here ({exc}); see training/requirements-quantize.txt"
        if os.environ.get("KAGGLE_SUBMISSION_REQUIRE_GPTQ"):
            pytest.fail(reason)
        pytest.skip(reason)
    from kaggle_submission.protocols import get_protocol
    from training import quantize_existing as qe
    from training.synthetic import make_rows

    protocol = get_protocol("openmath-tir", tiny_model_dir)
    rows = []
    for r in make_rows(16, seed=3):  # a TIR solution in the model's own form
        code = f"<tool_call>\n```python\nprint({r['answer']})\n```\n</tool_call>"
        tail = f"So the answer is $\\boxed{{{r['answer']}}}$."
        rows.append(
            {"problem": r["problem"], "solution": code + protocol.feed(str(r["answer"]), 7) + tail}
        )
    td.write_jsonl(tmp_path / "tir.jsonl", rows)
    name = "openmath-nemotron-7b-gptq-w8a16"
    manifest = tmp_path / "w.json"
    mf.load_manifest().save(manifest)
    out = tmp_path / "gptq"
    cmd = [
        sys.executable, "-m", "training.quantize_existing",
        "--config", str(tc.CONFIG_DIR / "quantize_openmath7b.yaml"),
        "--set", f"model_dir={tiny_model_dir}",
        "--set", f"output_dir={out}",
        "--set", f"calibration.sources=[{{path: {tmp_path / 'tir.jsonl'}}}]",
        "--set", "calibration.num_samples=16",
        "--set", "calibration.max_length=128",
        "--set", "device=cpu",
        "--set", "verify_samples=2",
        "--set", f"manifest={manifest}",
    ]  # fmt: skip
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert (qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"]) == (8, 128, False, True)
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    info = json.loads((out / "quantize_info.json").read_text())
    assert (
        info["protocol"] == "openmath-tir" and "render(problem, 8)" in info["calibration"]["prompt"]
    )
    assert info["calibration"]["used"] == 16
    assert info["check"]["top1_agreement"] > 0.8
    texts = qe.calibration_texts(
        tc.load_config(
            qe.QuantizeExistingConfig,
            tc.CONFIG_DIR / "quantize_openmath7b.yaml",
            [f"calibration.sources=[{{path: {tmp_path / 'tir.jsonl'}}}]"],
        ),
        protocol,
    )
    expected = {protocol.render(r["problem"], 8) + r["solution"] for r in rows}
    assert len(texts) == 16 and set(texts) == expected  # the protocol's prompt, byte for byte
    entry = mf.load_manifest(manifest).get(name)
    assert entry.complete and "config.json" in [f.path for f in entry.files]
    assert entry.quantization is not None and entry.quantization.library == "gptqmodel"
    assert entry.prompt.format == "openmath-tir"
    weights = mf.find_weights(name, manifest_path=manifest, explicit_dir=out, check_hashes=True)
    assert weights.path == out


# ------------------------------------------------------------------------------ publish + kernel


@pytest.mark.slow
def test_publish_then_kernel_finds_loads_and_solves(demo_dir: Path, tmp_path: Path) -> None:
    from training.publish import publish_directory

    model_dir = tmp_path / "upload"
    shutil.copytree(demo_dir, model_dir)
    manifest_path = tmp_path / "weights_manifest.json"
    shutil.copy(mf.DEFAULT_MANIFEST, manifest_path)
    handle = "me/aimo-demo/transformers/tiny/2"
    entry = publish_directory(
        model_dir,
        name="published-demo",
        manifest_path=manifest_path,
        description="published by the test",
        kaggle={"kind": "model", "handle": handle},
        quantization=None,
        presets=["demo-cpu"],
        title="AIMO demo",
    )
    assert entry.prompt.format == "numina" and entry.quantization is None
    manifest = mf.load_manifest(manifest_path)  # the validator accepts it
    assert manifest.get("published-demo") == entry and entry.complete
    assert "numinamath-7b-tir-gptq" in manifest.models  # other entries kept
    meta = json.loads((model_dir / "model-instance-metadata.json").read_text())
    assert (meta["ownerSlug"], meta["modelSlug"], meta["instanceSlug"]) == (
        "me",
        "aimo-demo",
        "tiny",
    )
    assert json.loads((model_dir / "model-metadata.json").read_text())["slug"] == "aimo-demo"

    # As Kaggle mounts it: /kaggle/input/models/<owner>/<model>/<framework>/<variation>/<version>
    root = tmp_path / "kaggle" / "input"
    mounted = root / "models" / handle
    shutil.copytree(model_dir, mounted)
    found = mf.locate(manifest.get("published-demo"), roots=(root,))
    assert found == mounted
    assert mf.verify_directory(entry, found, check_hashes=True) == []

    from kaggle_submission.backends import create_backend
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import Solver
    from kaggle_submission.offline.demo import demo_problems
    from kaggle_submission.sandbox import Sandbox, SandboxConfig

    problems = demo_problems(3, seed=3)
    config = EngineConfig(num_rollouts=4, max_calls=3, max_tokens_per_call=96, early_stop=None)
    with (
        Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox,
        Solver(
            lambda: create_backend("transformers", model=str(found), dtype="float32"),
            sandbox,
            config,
        ) as solver,
    ):
        solutions = [solver.solve(p.problem, problem_id=p.key) for p in problems]
    assert all(s.error is None for s in solutions)
    assert all(sum(r.executed for r in s.trace.rollouts) >= 1 for s in solutions)
    assert any(s.answer == p.answer for s, p in zip(solutions, problems, strict=True))


# ------------------------------------------------------------------------------ KTO


@pytest.mark.slow
def test_kto_samples_with_the_engine_and_trains(demo_dir: Path, tmp_path: Path) -> None:
    from kaggle_submission.offline.demo import demo_problems
    from training.kto import KTOStageConfig, ground_truth, rollout_completion, run

    problems = demo_problems(3, seed=11)
    rows = [
        {"problem": p.problem, "solution": f"$\\boxed{{{p.answer}}}$", "answer": p.answer}
        for p in problems
    ]
    td.write_jsonl(tmp_path / "kto.jsonl", rows)
    assert ground_truth({"solution": "so $\\boxed{12}$"}, "aimo1") == 12
    assert ground_truth({"answer": "007", "solution": ""}, "aimo1") == 7
    common = [
        f"model={demo_dir}",
        f"output_dir={tmp_path / 'kto'}",
        f"data.sources=[{{path: {tmp_path / 'kto.jsonl'}}}]",
        "data.decontamination.enabled=false",
        "sampling.problems=3",
        "sampling.samples_per_problem=2",
        "sampling.max_calls=3",
        "sampling.max_tokens_per_call=96",
        "sampling.include_unanswered=true",
        "sampling.backend_options={dtype: float32}",
        "max_steps=2",
        "max_length=256",
        "per_device_train_batch_size=2",
        "gradient_accumulation_steps=1",
        "bf16=false",
        "gradient_checkpointing=false",
        "logging_steps=1",
        "disable_tqdm=true",
    ]
    # 1. Sampling through the kernel's engine and sandbox, labelled by the answer.
    cfg = tc.load_config(KTOStageConfig, tc.CONFIG_DIR / "kto.yaml", [*common, "sample_only=true"])
    info = run(cfg)
    samples_path = tmp_path / "kto" / "samples.jsonl"
    samples = [json.loads(x) for x in samples_path.read_text().splitlines()]
    assert info["samples"] == len(samples) >= 3
    prompts = {format_prompt(p.problem) for p in problems}
    for s in samples:
        assert s["prompt"] in prompts
        assert s["completion"].startswith("```python\n")
        assert "```output\n" in s["completion"]  # the output block the sandbox appended
        assert s["label"] == (s["answer"] == s["truth"])
    # 2. KTO training on labelled samples (labels alternated so both kinds are present).
    mixed = [{**s, "label": i % 2 == 0} for i, s in enumerate(samples)]
    td.write_jsonl(tmp_path / "mixed.jsonl", mixed)
    cfg = tc.load_config(
        KTOStageConfig,
        tc.CONFIG_DIR / "kto.yaml",
        [*common, f"samples_file={tmp_path / 'mixed.jsonl'}"],
    )
    info = run(cfg)
    assert info["desirable"] >= 1 and info["undesirable"] >= 1
    assert (tmp_path / "kto" / "final" / "model.safetensors").is_file()
    assert rollout_completion(type("R", (), {"segments": []})()) == ""
