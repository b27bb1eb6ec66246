"""The dry run end to end on CPU with a tiny model built in the test."""

from __future__ import annotations

import csv
import io
import json

from kaggle_submission.__main__ import main
from kaggle_submission.offline.dryrun import DryRunOptions, dry_run
from kaggle_submission.traces import GenerationSegment, read_traces


def test_dry_run_writes_a_consistent_report(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    stream = io.StringIO()
    summary = dry_run(
        DryRunOptions(
            data="aimo1-train",
            preset="demo-cpu",
            out_dir=out,
            limit=3,
            model=str(tiny_model_dir),
            backend="transformers",
            overrides={
                "engine.num_rollouts": 2,
                "engine.max_calls": 2,
                "engine.max_tokens_per_call": 12,
            },
            ablate_code=True,
        ),
        stream=stream,
    )
    for name in (
        "submission.csv",
        "traces.jsonl",
        "summary.json",
        "report.md",
        "accuracy.png",
        "time.png",
        "margins.png",
    ):
        assert (out / name).is_file(), name
    traces = list(read_traces(out / "traces.jsonl"))
    rows = list(csv.DictReader((out / "submission.csv").open()))
    assert len(traces) == len(rows) == summary["problems"] == summary["scored"] == 3
    assert {r["id"]: int(r["answer"]) for r in rows} == {t.problem_id: t.answer for t in traces}
    tokens = sum(
        s.completion_tokens
        for t in traces
        for r in t.rollouts
        for s in r.segments
        if isinstance(s, GenerationSegment)
    )
    assert summary["tokens_generated"] == tokens
    assert summary["restarts"] == sum(r.restarts for t in traces for r in t.rollouts)
    assert summary["correct"] == summary["gateway_correct"]
    assert json.loads((out / "summary.json").read_text())["problems"] == 3
    ablation = summary["code_ablation"]
    assert ablation["with_code"]["correct"] == summary["correct"]
    assert ablation["without_code"]["scored"] == 3
    no_code = list(read_traces(out / "traces.no-code.jsonl"))
    assert sorted(t.problem_id for t in no_code) == sorted(t.problem_id for t in traces)
    assert all(t.config["execute_code"] is False for t in no_code)
    assert "## Code execution" in (out / "report.md").read_text()
    log = stream.getvalue()
    assert "[3/3]" in log and "budget left" in log and "engine: transformers" in log


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question\n1,x\n")
    assert main(["dry-run", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "no 'problem' column" in capsys.readouterr().err
