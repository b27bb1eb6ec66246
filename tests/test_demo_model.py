"""The DEMO model: trained once per test session on CPU, then judged through the kernel's engine.

With code execution it must solve most held-out problems; without it (the sandbox returns an
empty output, or the model writes the output itself) it must do clearly worse. Bounds are loose
and never depend on timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("trl", reason="building the demo model needs trl (requirements-train.txt)")
pytest.importorskip("datasets", reason="building the demo model needs datasets")

from kaggle_submission import manifest as mf
from kaggle_submission.answers import extract_answer
from kaggle_submission.offline import demo


def test_demo_problems_are_held_out_and_answerable() -> None:
    problems = demo.demo_problems(40, seed=0)
    assert len({p.problem for p in problems}) == 40
    assert all(demo.is_held_out(p.problem) for p in problems)
    assert all(p.answer is not None and 0 <= p.answer < 100 for p in problems)
    assert problems == demo.demo_problems(40, seed=0)  # deterministic
    train = demo.generate_tasks(500, seed=0, held_out=False)
    assert not {t.problem for t in train} & {p.problem for p in problems}
    assert {t.kind for t in train} == set(demo.DEMO_KINDS)


def test_synthetic_outputs_come_from_running_the_code() -> None:
    from kaggle_submission.sandbox import Sandbox, SandboxConfig
    from training.synthetic import make_rows, task_code

    rows = make_rows(10, seed=3)
    tasks = demo.generate_tasks(10, seed=3, held_out=False)
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox, sandbox.session() as session:
        for row, task in zip(rows, tasks, strict=True):
            output = session.run(task_code(task)).output  # what the kernel would append
            assert f"```output\n{output.strip()}\n```" in row["solution"]
            tens, units = divmod(task.answer, 10)
            assert row["solution"].endswith(f"\\boxed{{{tens}*10+{units}}}$.")
            assert extract_answer(row["solution"]) == task.answer


@pytest.mark.slow
def test_demo_model_is_built_and_published(demo_dir: Path) -> None:
    record = json.loads((demo_dir / demo.READY_FILE).read_text())
    assert record["version"] == demo.DEMO_VERSION and "DEMO" in record["what"]
    manifest = mf.load_manifest(demo_dir.parent / "weights_manifest.json")
    entry = manifest.get(demo.DEMO_ENTRY_NAME)
    assert entry.demo and entry.complete and entry.presets == ("demo-cpu",)
    assert mf.verify_directory(entry, demo_dir, check_hashes=True) == []
    # The shipped reference entry lists the same files with the same sizes.
    shipped = mf.load_manifest(mf.DEFAULT_MANIFEST).get(demo.DEMO_ENTRY_NAME)
    assert mf.verify_directory(shipped, demo_dir, check_hashes=False) == []
    # A second call finds it (no rebuild).
    assert demo.ensure_demo_model(demo_dir.parent) == demo_dir


@pytest.mark.slow
def test_code_execution_is_what_makes_it_accurate(demo_dir: Path) -> None:
    from training.demo import evaluate, format_results

    results = {r["mode"]: r for r in evaluate(demo_dir, n_problems=20, rollouts=4, seed=1)}
    print("\n" + format_results(list(results.values())))
    code, empty, own = results["code"], results["empty-output"], results["model-output"]
    assert code["blocks_executed"] > 0 and own["blocks_executed"] == 0
    assert code["answer_is_printed_output"] >= 0.9  # it boxes what the interpreter printed
    assert code["majority_accuracy"] >= 0.7
    assert code["single_sample_accuracy"] >= 0.5
    for ablation in (empty, own):
        assert ablation["majority_accuracy"] <= code["majority_accuracy"] - 0.4
        assert ablation["single_sample_accuracy"] <= 0.3


@pytest.mark.slow
def test_readme_main_command_reports_code_against_no_code(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`python -m kaggle_submission dry-run` as the README runs it (preset demo-cpu, backend
    auto: vLLM's CPU build where installed), on fewer problems; the report carries the
    code-execution ablation."""
    from kaggle_submission.__main__ import main

    monkeypatch.setenv("KAGGLE_SUBMISSION_CACHE", str(demo_dir.parent))
    out = tmp_path / "run"
    assert main(["dry-run", "--out", str(out), "--limit", "8", "-n", "4"]) == 0
    err = capsys.readouterr().err
    assert "DEMO RUN" in err and "without code execution" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["banner"] and summary["scored"] == 8
    ablation = summary["code_ablation"]
    with_code, without = ablation["with_code"], ablation["without_code"]
    assert with_code["correct"] == summary["correct"] >= 6
    assert with_code["executions"] > 0
    assert without["maj_at_n"] <= with_code["maj_at_n"] - 0.4
    assert without["scored"] == 8 and len(list((out / "traces.no-code.jsonl").open())) == 8
    assert len(list((out / "traces.jsonl").open())) == 8  # the ablation stays out of it
    report = (out / "report.md").read_text()
    assert "## Code execution" in report and "| without |" in report


@pytest.mark.slow
def test_sharded_dry_run_on_the_demo_preset(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`dry-run --concurrency K` in process: the preset's backend "auto" builds as in the kernel."""
    from kaggle_submission.__main__ import main

    monkeypatch.setenv("KAGGLE_SUBMISSION_CACHE", str(demo_dir.parent))
    out = tmp_path / "sharded"
    argv = ["dry-run", "--out", str(out), "--limit", "4", "-n", "2", "--concurrency", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "DEMO RUN" in err and "auto in process" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 4 and summary["correct"] >= 3
    assert len(list((out / "traces.jsonl").open())) == 4
