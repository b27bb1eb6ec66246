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


# ----------------------------- one writer, progress line and recovery rule for every run


def test_one_submission_writer_for_both_runs(tmp_path):
    from kaggle_submission.competition import gateway
    from kaggle_submission.offline import sharded

    assert sharded.write_submission is gateway.write_submission
    path = tmp_path / "submission.csv"
    gateway.write_submission(path, [("a", 7), ("b", 0)])
    assert list(csv.reader(path.open())) == [["id", "answer"], ["a", "7"], ["b", "0"]]


def test_one_progress_line():
    from kaggle_submission.offline.report import ProgressLine

    stream = io.StringIO()
    line = ProgressLine(3, stream, done=1)
    line("p1", 5, 5, 1.25, lambda _, __: "budget left 9 s")
    line("p2", 4, None, 2.0, lambda ln, _: f"{ln.new} new", "finished")
    first, second = stream.getvalue().splitlines()
    assert first.startswith("[2/3] p1: answer 5 ok (1.2 s) | elapsed ")
    assert first.endswith(", budget left 9 s, accuracy 1/1")
    assert second.startswith("[3/3] p2: answer 4  (2.0 s, finished) | elapsed ")
    assert second.endswith(", 2 new, accuracy 1/1")


def test_one_recovery_rule_and_watchdog_formula():
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import rebuild_config, watchdog_grace_s

    config = EngineConfig(num_rollouts=5, hang_grace_s=10.0)
    for alive in (None, "request", "context"):
        assert rebuild_config(alive, config) is None
    assert rebuild_config("engine_dead", config) == config
    assert rebuild_config("stuck", config) == config
    assert rebuild_config("oom", config).num_rollouts == 2
    assert rebuild_config("oom", EngineConfig(num_rollouts=1)).num_rollouts == 1
    assert watchdog_grace_s(config, 2.0) == 10.0
    assert watchdog_grace_s(config, 30.0) == 30.0


def test_sharded_run_rebuilds_by_the_kernel_rule(tmp_path):
    """An in-process engine is rebuilt on an engine failure (N halved on out-of-memory), never
    on a request's failure: seen through the public sharded run, one problem at a time."""
    import time

    from kaggle_submission.backends.base import Completion
    from kaggle_submission.backends.scripted import ScriptedBackend, tir_script
    from kaggle_submission.offline.sharded import sharded_dry_run
    from kaggle_submission.presets import get_preset
    from kaggle_submission.problems import Problem

    preset = get_preset("demo-cpu").with_overrides(
        {"engine.num_rollouts": 8, "engine.max_calls": 2, "engine.early_stop": None}
    )
    built: list[str] = []

    class Failing(ScriptedBackend):
        """The first engine fails one request of "bad request" and every request of "oom"."""

        async def generate(self, request):
            if "oom" in request.prompt and len(built) == 1:
                return Completion.failed(request.request_id, "CUDA out of memory", 0.0, "oom")
            if "bad request" in request.prompt and request.rollout == 0:
                return Completion.failed(
                    request.request_id, "rejected", time.perf_counter(), "request"
                )
            return await super().generate(request)

    def factory() -> Failing:
        built.append("engine")
        return Failing(tir_script())

    problems = [
        Problem(key, key, f"What is 6 * 7? ({key})", 42, i + 2, "test")
        for i, key in enumerate(["bad request", "oom", "after"])
    ]
    result = sharded_dry_run(
        problems,
        preset,
        tmp_path,
        backend_factory=factory,
        concurrency=1,
        shuffle_seed=None,
        redo_errors=False,
        stream=None,
    )
    traces = {t.problem_id: t for t in result.traces}
    assert len(built) == 2  # the request failure cost nothing; out of memory one rebuild
    assert traces["bad request"].answer == 42
    assert traces["after"].config["num_rollouts"] == 4  # N halved after out of memory
