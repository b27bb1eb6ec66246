"""The dry run: the Kaggle code path (kernel, adapter, local gateway, budget) on validation data.

Writes into one folder: the submission file, traces.jsonl, summary.json, report.md and plots.
On a machine without a GPU or weights, the `demo-cpu` preset runs the tiny demo model on
synthetic arithmetic problems it can solve, and every output says that it is a demo.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from ..competition.gateway import GatewayRow, run_local_gateway
from ..config import override
from ..kernel import Kernel
from ..presets import Preset, get_preset
from ..problems import Problem, load_problems, truths
from ..traces import TraceWriter, read_traces
from .demo import demo_weights, is_demo_model
from .report import ProgressLine, fmt_value, result_line, run_summary, summarize, write_report

log = logging.getLogger(__name__)

DEMO_BANNER = (
    "DEMO RUN: a tiny model trained on synthetic arithmetic, not NuminaMath; the figures show "
    "the pipeline works, not competition accuracy."
)


@dataclass(frozen=True)
class DryRunOptions:
    """Attributes:
    data: a shipped set name, a CSV path, or "demo" (held-out demo problems).
    preset: preset name or preset file.
    out_dir: output folder (created).
    limit: first N problems of the file (before shuffling).
    shuffle_seed: the gateway's order (None: file order).
    model: a model directory that replaces the preset's weights.
    backend: replaces the preset's backend ("transformers", "vllm", ...).
    overrides: dotted preset overrides ("engine.num_rollouts": 8, ...).
    time_limit_s: the whole run's limit (replaces budget.total_s).
    ablate_code: after the run, solve the same problems again with code execution off (every
        block gets an empty output) and report both; None: on for the demo model only, whose
        task cannot be solved without its code's output. Not part of the Kaggle path: it
        does not touch the submission or the budget, and its traces go to ABLATION_TRACES.
    """

    data: str = "demo"
    preset: str = "demo-cpu"
    out_dir: Path = Path("runs/dry-run")
    limit: int | None = None
    shuffle_seed: int | None = 0
    model: str | None = None
    backend: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    time_limit_s: float | None = None
    ablate_code: bool | None = None


ABLATION_TRACES = "traces.no-code.jsonl"


def load_data(options: DryRunOptions) -> tuple[str, list[Problem]]:
    if options.data == "demo":
        from .demo import demo_problems

        problems = demo_problems(options.limit or 20)
        return (
            "demo problems (synthetic arithmetic, held out from the demo model's training)",
            problems,
        )
    problem_set = load_problems(options.data)
    problems = list(problem_set)[: options.limit] if options.limit else list(problem_set)
    return str(problem_set.path), problems


def build_preset(options: DryRunOptions, num_problems: int) -> Preset:
    changes: dict[str, Any] = {"budget.num_problems": num_problems, **options.overrides}
    if options.time_limit_s is not None:
        changes["budget.total_s"] = options.time_limit_s
    preset = get_preset(options.preset).with_overrides(changes)
    return override(preset, backend=options.backend) if options.backend else preset


def progress(kernel: Kernel, total: int, stream: TextIO) -> Callable[[GatewayRow, int], None]:
    """The gateway's per-row callback: the shared progress line, with the budget left."""
    line = ProgressLine(total, stream)

    def budget_left(_: ProgressLine, elapsed: float) -> str:
        return f"budget left {kernel.budget.time_left():.0f} s"

    def on_row(row: GatewayRow, _total: int) -> None:
        line(row.key, row.answer, row.truth, row.seconds, budget_left)

    return on_row


def dry_run(options: DryRunOptions, stream: TextIO | None = None) -> dict[str, Any]:
    """Run it; returns the summary (also written to summary.json). Progress goes to `stream`
    (default: sys.stderr as it is at call time, not at import)."""
    stream = stream or sys.stderr
    run_started = time.monotonic()
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_name, problems = load_data(options)
    preset = build_preset(options, len(problems))
    demo = is_demo_model(preset.model) and options.model is None
    if demo:
        print(DEMO_BANNER, file=stream)
    trace_path = out / "traces.jsonl"
    if trace_path.exists():
        trace_path.unlink()
    # a demo model is built here, its protocol decided from its manifest entry's format
    found = demo_weights(preset.model, options.model)
    kernel = Kernel(
        preset,
        model_dir=found.path if found is not None else options.model,
        trace_path=trace_path,
        run_started=run_started,
        weights=(lambda: found) if found is not None else None,
    )
    with kernel:
        engine_name = kernel.solver.backend.name if kernel.solver else preset.backend
        print(
            f"engine: {engine_name} | model: {kernel.model_path} | preset: {preset.name} | "
            f"N={preset.engine.num_rollouts} M={preset.engine.max_calls} | "
            f"{len(problems)} problems from {data_name}",
            file=stream,
            flush=True,
        )
        gateway = run_local_gateway(
            preset.competition,
            problems,
            kernel.answer,
            out,
            shuffle_seed=options.shuffle_seed,
            on_row=progress(kernel, len(problems), stream),
        )
        engine = kernel.describe()
        ablation = None
        if options.ablate_code if options.ablate_code is not None else demo:
            ablation = ablate_code_execution(kernel, preset, problems, out, stream)
    traces = {t.problem_id: t for t in read_traces(trace_path)}
    ordered = [traces[r.key] for r in gateway.rows if r.key in traces]
    summary = run_summary(
        ordered,
        problems,
        preset,
        banner=DEMO_BANNER if demo else "",
        backend=engine_name,
        model=str(kernel.model_path),
        engine=engine,
        submission=gateway.submission_path,
        wall_seconds=time.monotonic() - run_started,
        data=data_name,
        gateway_correct=gateway.correct,
        gateway_violations=gateway.violations,
    )
    if ablation is not None:
        summary["code_ablation"] = {
            "with_code": {k: summary[k] for k in ABLATION_KEYS},
            "without_code": {k: ablation[k] for k in ABLATION_KEYS},
            "traces": str(out / ABLATION_TRACES),
        }
    report = write_report(summary, out)
    print(result_line(summary, f"report {report}"), file=stream)
    return summary


ABLATION_KEYS = ("scored", "correct", "maj_at_n", "pass_at_n", "single_sample", "executions")


def ablate_code_execution(
    kernel: Kernel,
    preset: Preset,
    problems: list[Problem],
    out: Path,
    stream: TextIO,
) -> dict[str, Any] | None:
    """Solve `problems` again on the loaded engine with `execute_code` off; their summary.

    What it shows: how much of the accuracy comes from running the model's code rather than
    from its own text (the winner's TIR premise). Each problem gets the preset's cap.
    """
    if kernel.solver is None:
        print("code ablation skipped: no engine is loaded", file=stream)
        return None
    config = replace(preset.engine, execute_code=False)
    (out / ABLATION_TRACES).unlink(missing_ok=True)
    writer = TraceWriter(out / ABLATION_TRACES)
    traces = []
    for problem in problems:
        deadline = time.monotonic() + preset.budget.cap_s
        solution = kernel.solver.solve(
            problem.problem, deadline, problem.key, config=config, write_trace=False
        )
        writer.write(solution.trace)
        traces.append(solution.trace)
    ablation = summarize(traces, truths(problems, preset.policy), {})
    print(
        f"without code execution: accuracy {ablation['correct']}/{ablation['scored']}, "
        f"single sample {fmt_value(ablation['single_sample'])}",
        file=stream,
    )
    return ablation
