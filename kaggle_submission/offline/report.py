"""Dry-run reports, computed from the traces only (the same records the tuner reads).

summary.json holds every figure; report.md shows them with PNG plots (matplotlib, imported only
here). Definitions, per problem with a known answer:
- maj@N: the voted answer is right (the competition's score).
- pass@N: some rollout's answer is right (what a perfect vote could reach).
- single-sample: the share of the N rollouts whose own answer is right (one sample's accuracy).
- plain and weighted votes, on the same finished rollouts: one vote per answer, against each
  answer weighing its rollout's confidence (exp(-mean top-k token entropy), 1 where none was
  measured) times the config's error_code_weight when its code failed: what
  `engine.confidence="entropy"` votes with. Measured only when the run asked for logprobs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..problems import Problem, truths, unanswerable
from ..traces import ExecutionSegment, SolveTrace

if TYPE_CHECKING:
    from ..presets import Preset


@dataclass(frozen=True)
class ProblemStats:
    """One problem's figures."""

    problem_id: str
    truth: int | None
    answer: int
    correct: bool | None
    pass_at_n: bool | None
    single_sample: float | None
    n_rollouts: int
    n_finished: int
    n_answered: int
    margin: float
    stop_reason: str
    seconds: float
    budget_s: float | None
    restarts: int
    pruned: int
    executions: int
    code_errors: int
    timeouts: int
    tokens: int
    plain_answer: int | None = None
    weighted_answer: int | None = None
    plain_correct: bool | None = None
    weighted_correct: bool | None = None
    confidence_mean: float | None = None  # over answered rollouts with a measured confidence


def _tally(answers: Sequence[int], weights: Sequence[float]) -> int | None:
    """The weighted majority of answers already admitted by the policy (the engine's vote:
    ties go to the answer seen first); None when there is none."""
    totals: dict[int, float] = {}
    for answer, weight in zip(answers, weights, strict=True):
        totals[answer] = totals.get(answer, 0.0) + weight
    return max(totals, key=lambda a: totals[a]) if totals else None  # max keeps the first


def _vote_pair(trace: SolveTrace) -> tuple[int, int, float | None]:
    """(plain answer, weighted answer, mean confidence) of one record's answered rollouts."""
    answered = [r for r in trace.rollouts if r.status == "answered" and r.answer is not None]
    answers = [r.answer for r in answered if r.answer is not None]
    error_weight = float(trace.config.get("error_code_weight", 1.0))
    weights = [
        (error_weight if r.code_errors else 1.0)
        * (r.confidence if r.confidence is not None else 1.0)
        for r in answered
    ]
    plain = _tally(answers, [1.0] * len(answers))
    weighted = _tally(answers, weights)
    measured = [r.confidence for r in answered if r.confidence is not None]
    return (
        trace.answer if plain is None else plain,
        trace.answer if weighted is None else weighted,
        _mean(measured),
    )


def problem_stats(trace: SolveTrace, truth: int | None) -> ProblemStats:
    answers = [r.answer for r in trace.rollouts if r.status == "answered"]
    # A rollout cancelled by the early stop or the deadline has no outcome: counting it as
    # wrong would make single-sample accuracy depend on how soon the vote settled.
    finished = sum(r.status != "cancelled" for r in trace.rollouts)
    executions = [s for r in trace.rollouts for s in r.segments if isinstance(s, ExecutionSegment)]
    known = truth is not None
    plain, weighted, confidence = _vote_pair(trace)
    return ProblemStats(
        problem_id=trace.problem_id,
        truth=truth,
        answer=trace.answer,
        correct=trace.answer == truth if known else None,
        pass_at_n=truth in answers if known else None,
        single_sample=sum(a == truth for a in answers) / finished if known and finished else None,
        n_rollouts=len(trace.rollouts),
        n_finished=finished,
        n_answered=len(answers),
        margin=trace.vote.margin,
        stop_reason=trace.stop_reason,
        seconds=trace.seconds,
        budget_s=trace.budget_s,
        restarts=sum(r.restarts for r in trace.rollouts),
        pruned=sum(r.status == "pruned" for r in trace.rollouts),
        executions=len(executions),
        code_errors=sum(not s.ok for s in executions),
        timeouts=sum(s.timed_out for s in executions),
        tokens=sum(r.completion_tokens for r in trace.rollouts),
        plain_answer=plain,
        weighted_answer=weighted,
        plain_correct=plain == truth if known else None,
        weighted_correct=weighted == truth if known else None,
        confidence_mean=confidence,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(
    traces: Sequence[SolveTrace], truths: Mapping[str, int | None], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Every figure of the run as a JSON-ready dict."""
    stats = [problem_stats(t, truths.get(t.problem_id)) for t in traces]
    scored = [s for s in stats if s.truth is not None]
    executions = sum(s.executions for s in stats)
    overruns = [s.seconds - s.budget_s for s in stats if s.budget_s is not None]
    return {
        **extra,
        "problems": len(stats),
        "scored": len(scored),
        "correct": sum(bool(s.correct) for s in scored),
        "accuracy": _mean([float(bool(s.correct)) for s in scored]),
        "maj_at_n": _mean([float(bool(s.correct)) for s in scored]),
        "pass_at_n": _mean([float(bool(s.pass_at_n)) for s in scored]),
        "single_sample": _mean([s.single_sample for s in scored if s.single_sample is not None]),
        "seconds_total": sum(s.seconds for s in stats),
        "seconds_mean": _mean([s.seconds for s in stats]),
        "max_overrun_s": max(overruns) if overruns else None,
        "stop_reasons": {
            r: sum(s.stop_reason == r for s in stats)
            for r in sorted({s.stop_reason for s in stats})
        },
        "restarts": sum(s.restarts for s in stats),
        "pruned": sum(s.pruned for s in stats),
        "executions": executions,
        "code_error_rate": sum(s.code_errors for s in stats) / executions if executions else None,
        "code_timeouts": sum(s.timeouts for s in stats),
        "tokens_generated": sum(s.tokens for s in stats),
        "votes": {
            "confidence_measured": sum(s.confidence_mean is not None for s in stats),
            "plain_correct": sum(bool(s.plain_correct) for s in scored),
            "weighted_correct": sum(bool(s.weighted_correct) for s in scored),
            "maj_at_n_plain": _mean([float(bool(s.plain_correct)) for s in scored]),
            "maj_at_n_weighted": _mean([float(bool(s.weighted_correct)) for s in scored]),
            "differ": [s.problem_id for s in stats if s.plain_answer != s.weighted_answer],
            "confidence_mean": _mean(
                [s.confidence_mean for s in stats if s.confidence_mean is not None]
            ),
        },
        "per_problem": [asdict(s) for s in stats],
    }


def run_summary(
    traces: Sequence[SolveTrace],
    problems: Sequence[Problem],
    preset: Preset,
    *,
    backend: str,
    model: str,
    engine: Mapping[str, Any],
    submission: str | Path,
    wall_seconds: float,
    banner: str = "",
    **fields: Any,
) -> dict[str, Any]:
    """The summary every dry run writes (sequential and sharded): `summarize`'s figures, the
    fields they share, then the runner's own `fields` (gateway checks, resume counts, ...)."""
    return summarize(
        traces,
        truths(problems, preset.policy),
        {
            "banner": banner,
            "preset": preset.name,
            "backend": backend,
            "model": model,
            "engine": dict(engine),
            "competition": preset.competition,
            "submission": str(submission),
            "unanswerable": [p.key for p in unanswerable(problems, preset.policy)],
            "wall_seconds": wall_seconds,
            **fields,
        },
    )


def result_line(summary: Mapping[str, Any], *notes: str) -> str:
    """The line a dry run ends with: accuracy, pass@N, then the runner's notes."""
    accuracy = f"accuracy {summary['correct']}/{summary['scored']}"
    return " | ".join([accuracy, f"pass@N {summary['pass_at_n']}", *notes])


class ProgressLine:
    """One line per finished problem, for every dry run: k of n, answer, ok/wrong, its time,
    elapsed, the runner's own figures, running accuracy. Thread-safe (sharded runs call it
    from many problems at once)."""

    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        done: int = 0,
        started: float | None = None,
    ) -> None:
        """`done`: problems finished before (resumed); `stream` None prints nothing."""
        self.total = total
        self.stream = stream
        self.done = done
        self.new = 0  # finished by this run
        self.started = time.monotonic() if started is None else started
        self.scored = 0
        self.correct = 0
        self._lock = threading.Lock()

    def __call__(
        self,
        key: str,
        answer: int,
        truth: int | None,
        seconds: float,
        figures: Callable[[ProgressLine, float], str],
        stop_reason: str | None = None,
    ) -> None:
        """`figures(self, elapsed)`: the runner's part of the line (budget left, rate)."""
        with self._lock:
            self.done += 1
            self.new += 1
            mark = ""
            if truth is not None:
                ok = answer == truth
                self.scored += 1
                self.correct += ok
                mark = "ok" if ok else "wrong"
            elapsed = time.monotonic() - self.started
            accuracy = f"{self.correct}/{self.scored}" if self.scored else "-"
            took = f"{seconds:.1f} s" + (f", {stop_reason}" if stop_reason else "")
            if self.stream is not None:
                print(
                    f"[{self.done}/{self.total}] {key}: answer {answer} {mark} ({took}) | "
                    f"elapsed {elapsed:.0f} s, {figures(self, elapsed)}, accuracy {accuracy}",
                    file=self.stream,
                    flush=True,
                )


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def fmt_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_report(summary: Mapping[str, Any], out_dir: str | Path) -> Path:
    """summary.json, report.md and the plots; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plots = _plots(summary, out)
    per = summary["per_problem"]
    lines = [
        f"# Dry run: {summary.get('data', '')}",
        "",
        f"{summary.get('banner', '')}",
        "",
        f"- preset `{summary.get('preset')}`, backend `{summary.get('backend')}`, "
        f"model `{summary.get('model')}`",
        f"- problems {summary['problems']}, scored {summary['scored']}, "
        f"correct {summary['correct']}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in (
        "accuracy",
        "maj_at_n",
        "pass_at_n",
        "single_sample",
        "seconds_total",
        "seconds_mean",
        "max_overrun_s",
        "restarts",
        "pruned",
        "executions",
        "code_error_rate",
        "code_timeouts",
        "tokens_generated",
    ):
        lines.append(f"| {key} | {fmt_value(summary.get(key))} |")
    lines += [
        "",
        "single_sample: the share of correct answers among the rollouts that finished (those "
        "cancelled by the early stop or the deadline have no outcome); pass_at_n: some rollout "
        "was right; maj_at_n: the vote was.",
        "",
        f"Stop reasons: {summary['stop_reasons']}",
        "",
    ]
    lines += _ablation_lines(summary.get("code_ablation"))
    lines += _vote_lines(summary.get("votes"), summary.get("scored", 0))
    lines += [f"![{name}]({name})" for name in plots]
    lines += [
        "",
        "| problem | truth | answer | ok | pass@N | single | answered/finished/N | margin | s "
        "| budget s | stop |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in per:
        cells = [
            s["problem_id"],
            fmt_value(s["truth"]),
            s["answer"],
            fmt_value(s["correct"]),
            fmt_value(s["pass_at_n"]),
            fmt_value(s["single_sample"]),
            f"{s['n_answered']}/{s['n_finished']}/{s['n_rollouts']}",
            fmt_value(s["margin"]),
            f"{s['seconds']:.1f}",
            fmt_value(s["budget_s"]),
            s["stop_reason"],
        ]
        lines.append(_row(cells))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ablation_lines(ablation: Mapping[str, Any] | None) -> list[str]:
    """The same problems solved with and without running the model's code."""
    if not ablation:
        return []
    lines = [
        "## Code execution",
        "",
        "The same problems solved again with every code block given an empty output instead of",
        "running it (`engine.execute_code=false`).",
        "",
        "| run | correct | maj@N | pass@N | single sample | code blocks |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in (("with code execution", "with_code"), ("without", "without_code")):
        row = ablation[key]
        correct = f"{row['correct']}/{row['scored']}"
        shares = [fmt_value(row[k]) for k in ("maj_at_n", "pass_at_n", "single_sample")]
        lines.append(_row([label, correct, *shares, row["executions"]]))
    return [*lines, ""]


def _vote_lines(votes: Mapping[str, Any] | None, scored: int) -> list[str]:
    """Plain against confidence-weighted votes on the same rollouts."""
    if not votes:
        return []
    lines = ["## Plain and confidence-weighted votes", ""]
    if not votes["confidence_measured"]:
        return [
            *lines,
            "No token entropy was measured (run with `--set engine.confidence=entropy` to ask",
            "the backend for top-k logprobs); both votes are the plain one.",
            "",
        ]
    lines += [
        "The same finished rollouts voted twice: one vote each, and each answer weighing",
        "exp(-mean top-k token entropy) of its rollout (`engine.confidence=entropy`).",
        "",
        "| vote | correct | maj@N |",
        "|---|---|---|",
        _row(["plain", f"{votes['plain_correct']}/{scored}", fmt_value(votes["maj_at_n_plain"])]),
        _row(
            [
                "confidence-weighted",
                f"{votes['weighted_correct']}/{scored}",
                fmt_value(votes["maj_at_n_weighted"]),
            ]
        ),
        "",
        f"Mean confidence of answered rollouts: {fmt_value(votes['confidence_mean'])}; "
        f"problems where the two votes differ: {', '.join(votes['differ']) or 'none'}.",
        "",
    ]
    return lines


def _plots(summary: Mapping[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = summary["per_problem"]
    names = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = ["single-sample", "maj@N", "pass@N"]
    values = [
        summary.get("single_sample") or 0,
        summary.get("maj_at_n") or 0,
        summary.get("pass_at_n") or 0,
    ]
    ax.bar(labels, values, color=["#999", "#2a6", "#36c"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy: one sample, the vote, and the best possible vote")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)
    names.append("accuracy.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(per))
    ax.bar(xs, [s["seconds"] for s in per], label="used", color="#36c")
    budgets = [s["budget_s"] for s in per]
    if any(b is not None for b in budgets):
        ax.plot(
            xs, [b if b is not None else float("nan") for b in budgets], "r_", ms=14, label="budget"
        )
    ax.set_xlabel("problem (served order)")
    ax.set_ylabel("seconds")
    ax.set_title("Time per problem against its budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "time.png", dpi=100)
    plt.close(fig)
    names.append("time.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    shares = [s["margin"] / max(1, s["n_rollouts"]) for s in per]
    colors = ["#2a6" if s["correct"] else "#c33" if s["correct"] is False else "#999" for s in per]
    ax.scatter(range(len(per)), shares, c=colors)
    ax.set_xlabel("problem (served order)")
    ax.set_ylabel("vote margin / N")
    ax.set_title("Vote margins (green right, red wrong)")
    fig.tight_layout()
    fig.savefig(out / "margins.png", dpi=100)
    plt.close(fig)
    names.append("margins.png")
    return names
