"""Recorded rollouts as padded numpy arrays: the population the tuner resamples.

A rollout is kept as its chain of generation calls: per call its start (seconds since the solve
began), generation seconds, completion and prompt tokens, the execution seconds after it, and
`end`, the moment the rollout moved past the call (the next call's start, or the rollout's end).
Per rollout: the call that ended it (`term`, or NO_TERM when it ran out of calls), its admitted
answer as an index into the problem's distinct answers, and whether it was cut short by the
recording itself (`censored`: cancelled by a deadline or an early stop, so what it would have done
next is unknown).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...answers import AnswerPolicy
from ...traces import ExecutionSegment, GenerationSegment, RolloutTrace, SolveTrace, read_traces

NO_TERM = 1 << 20
"""`term` of a rollout that ended by running out of calls (or was censored)."""

_ANSWER_STATUSES = ("answered", "pruned", "no_answer")


@dataclass(frozen=True)
class Recorded:
    """Every problem's rollouts, padded to (P problems, R rollouts, C calls).

    Attributes:
        problem_ids, truths: the problems (only those with a known answer) and their answers.
        n_rollouts: recorded rollouts per problem (R_p <= R).
        tokens, prompt_tokens, new_prompt_tokens: per call; new prompt tokens are those not in
            the previous call's context (the appended code output), what a prefix cache prefills.
        gen_start, gen_seconds, exec_seconds, end: per call timings (NaN where unknown).
        box_pos: token position where the answer of a terminal call is complete (inf if none).
        err_cum: a code block failed at this call or before (vote weight).
        has_call: the call exists.
        ncalls, term, answer, censored: per rollout.
        truth_id: index of the truth among the problem's answers (-2 when no rollout found it).
        fallback_ok: the policy's fallback answer is the truth (the answer when nothing is valid).
        recorded_n, recorded_m, recorded_max_tokens: the recording's N, M and tokens per call
            (smallest over the records): the simulator cannot go beyond them.
        overhead_s: per-problem time outside the rollouts (vote, drain, gateway), median.
        early_stop_recorded: some record ran with an early-stop rule.
        warnings: what the tuner's user should know about these traces.
    """

    problem_ids: tuple[str, ...]
    truths: np.ndarray
    n_rollouts: np.ndarray
    tokens: np.ndarray
    prompt_tokens: np.ndarray
    new_prompt_tokens: np.ndarray
    gen_start: np.ndarray
    gen_seconds: np.ndarray
    exec_seconds: np.ndarray
    end: np.ndarray
    box_pos: np.ndarray
    err_cum: np.ndarray
    has_call: np.ndarray
    ncalls: np.ndarray
    term: np.ndarray
    answer: np.ndarray
    censored: np.ndarray
    truth_id: np.ndarray
    fallback_ok: np.ndarray
    recorded_n: int
    recorded_m: int
    recorded_max_tokens: int
    overhead_s: float
    early_stop_recorded: bool
    warnings: tuple[str, ...]

    @property
    def num_problems(self) -> int:
        return len(self.problem_ids)

    @property
    def valid(self) -> np.ndarray:
        """(P, R): the rollout exists (padding excluded)."""
        return np.arange(self.tokens.shape[1])[None, :] < self.n_rollouts[:, None]

    def describe(self) -> dict[str, object]:
        valid = self.valid
        return {
            "problems": self.num_problems,
            "rollouts": int(valid.sum()),
            "recorded_n_min": int(self.n_rollouts.min()),
            "recorded_m": self.recorded_m,
            "recorded_max_tokens": self.recorded_max_tokens,
            "censored_share": float(self.censored[valid].mean()),
            "answered_share": float((self.answer >= 0)[valid].mean()),
            "single_sample_accuracy": float(
                ((self.answer == self.truth_id[:, None]) & valid).sum() / valid.sum()
            ),
            "overhead_s": self.overhead_s,
        }


def trace_files(paths: Iterable[str | Path]) -> list[Path]:
    """Trace files from files or dry-run folders (their traces.jsonl)."""
    files = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            path = path / "traces.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no trace file at {path}")
        files.append(path)
    return files


def truths_from(
    data: str | None = None, summaries: Iterable[str | Path] = ()
) -> dict[str, int | None]:
    """Ground truth by problem id: a dry run's summary.json (per_problem truth) and/or a
    problems CSV / shipped set name (as `dry-run --data` takes); the CSV wins on conflict."""
    truths: dict[str, int | None] = {}
    for summary in summaries:
        path = Path(summary)
        if path.is_file():
            for row in json.loads(path.read_text()).get("per_problem", []):
                if row.get("truth") is not None:
                    truths[str(row["problem_id"])] = int(row["truth"])
    if data is not None:
        from ...problems import load_problems

        for problem in load_problems(data):
            if problem.answer is not None:
                truths[problem.key] = problem.answer
    return truths


def load_recorded(
    paths: Sequence[str | Path],
    policy: AnswerPolicy,
    data: str | None = None,
    truths: Mapping[str, int | None] | None = None,
) -> Recorded:
    """Read trace files (or dry-run folders) and their truth; see `build_recorded`."""
    files = trace_files(paths)
    known = dict(truths_from(data, [f.parent / "summary.json" for f in files]))
    known.update(truths or {})
    runs = [list(read_traces(f)) for f in files]
    return build_recorded(runs, known, policy)


def _box_position(segment: GenerationSegment) -> float:
    """Approximate token position where the last box closes (the answer is complete there)."""
    text = segment.text
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0 or not text:
        return float(segment.completion_tokens)  # "answer is ..." phrases: assume at the end
    close = text.find("}", start)
    fraction = (close + 1) / len(text) if close >= 0 else 1.0
    return math.ceil(segment.completion_tokens * fraction)


def _overhead(runs: Sequence[Sequence[SolveTrace]]) -> float:
    """Median time a problem costs beyond its rollouts, plus the median gap between problems."""
    inside = [
        max(0.0, t.seconds - max((r.seconds for r in t.rollouts), default=0.0))
        for run in runs
        for t in run
    ]
    gaps = []
    for run in runs:
        ordered = sorted(run, key=lambda t: t.started_at)
        for a, b in itertools.pairwise(ordered):
            gap = b.started_at - (a.started_at + a.seconds)
            if 0 <= gap < 600:
                gaps.append(gap)
    return (statistics.median(inside) if inside else 0.0) + (
        statistics.median(gaps) if gaps else 0.0
    )


def build_recorded(
    runs: Sequence[Sequence[SolveTrace]], truths: Mapping[str, int | None], policy: AnswerPolicy
) -> Recorded:
    """Pad the records of one or more runs into arrays; records of the same problem pool their
    rollouts. Problems without a known answer are left out (named in `warnings`)."""
    warnings: list[str] = []
    by_problem: dict[str, list[RolloutTrace]] = {}
    configs = []
    for run in runs:
        for trace in run:
            configs.append(trace.config)
            by_problem.setdefault(trace.problem_id, []).extend(trace.rollouts)
    unknown = sorted(p for p in by_problem if truths.get(p) is None)
    if unknown:
        warnings.append(f"{len(unknown)} problem(s) without a known answer left out: {unknown[:5]}")
    ids = [p for p in by_problem if truths.get(p) is not None and by_problem[p]]
    if not ids:
        raise ValueError("no recorded problem has a known answer (give --data or a summary.json)")
    P = len(ids)
    R = max(len(by_problem[p]) for p in ids)
    C = max(
        1,
        max(
            sum(isinstance(s, GenerationSegment) for s in r.segments)
            for p in ids
            for r in by_problem[p]
        ),
    )
    f = lambda fill: np.full((P, R, C), fill, dtype=float)  # noqa: E731
    tokens, prompt, new_prompt = f(0.0), f(0.0), f(0.0)
    gen_start, gen_seconds, exec_seconds, end = f(np.nan), f(0.0), f(0.0), f(np.nan)
    box_pos = f(np.inf)
    err_cum = np.zeros((P, R, C), bool)
    has_call = np.zeros((P, R, C), bool)
    ncalls = np.zeros((P, R), int)
    term = np.full((P, R), NO_TERM, int)
    answer = np.full((P, R), -1, int)
    censored = np.zeros((P, R), bool)
    n_rollouts = np.zeros(P, int)
    # the truth as the competition defines it (mod 1000 under AIMO-1/2), as the answers are
    truth_values = np.array([policy.truth(int(truths[p])) for p in ids])  # type: ignore[arg-type]
    truth_id = np.full(P, -2, int)
    for i, pid in enumerate(ids):
        rollouts = by_problem[pid]
        n_rollouts[i] = len(rollouts)
        distinct: dict[int, int] = {}
        for j, rollout in enumerate(rollouts):
            gens = [s for s in rollout.segments if isinstance(s, GenerationSegment)]
            failed_calls = {
                s.call for s in rollout.segments if isinstance(s, ExecutionSegment) and not s.ok
            }
            for s in rollout.segments:
                if isinstance(s, ExecutionSegment):
                    k = next((c for c, g in enumerate(gens) if g.call == s.call), None)
                    if k is not None:
                        exec_seconds[i, j, k] += s.seconds
            cut = rollout.status == "cancelled"
            censored[i, j] = cut
            if not gens:  # failed before any call returned: one empty call
                has_call[i, j, 0] = True
                gen_start[i, j, 0] = 0.0
                gen_seconds[i, j, 0] = rollout.seconds
                end[i, j, 0] = np.nan if cut else rollout.seconds
                ncalls[i, j] = 1
                term[i, j] = NO_TERM if cut else 0
                continue
            n = len(gens)
            ncalls[i, j] = n
            failed = False
            for c, g in enumerate(gens):
                has_call[i, j, c] = True
                tokens[i, j, c] = g.completion_tokens
                prompt[i, j, c] = g.prompt_tokens
                if c > 0 and gens[c - 1].attempt == g.attempt:
                    previous = gens[c - 1].prompt_tokens + gens[c - 1].completion_tokens
                    new_prompt[i, j, c] = max(0, g.prompt_tokens - previous)
                gen_start[i, j, c] = g.started
                gen_seconds[i, j, c] = g.seconds
                failed = failed or g.call in failed_calls
                err_cum[i, j, c] = failed
                end[i, j, c] = gens[c + 1].started if c + 1 < n else rollout.seconds
            if cut:
                end[i, j, n - 1] = np.nan  # when it would have moved on is unknown
            elif rollout.status in (*_ANSWER_STATUSES, "error", "unfinished"):
                term[i, j] = n - 1  # it ended there (unfinished: token budget spent, no answer)
                if rollout.status in _ANSWER_STATUSES:
                    box_pos[i, j, n - 1] = _box_position(gens[-1])
            if rollout.status == "answered":
                value = policy.admit(rollout.answer)
                if value is not None:
                    answer[i, j] = distinct.setdefault(value, len(distinct))
        truth_id[i] = distinct.get(int(truth_values[i]), -2)

    def smallest(key: str, default: int) -> int:
        values = [int(c[key]) for c in configs if isinstance(c.get(key), int | float)]
        return min(values) if values else default

    early = any(c.get("early_stop") for c in configs)
    valid = np.arange(R)[None, :] < n_rollouts[:, None]
    share = float(censored[valid].mean())
    if share > 0:
        warnings.append(
            f"{share:.1%} of recorded rollouts were cancelled (deadline or early stop): what "
            "they would have done is unknown, so they count as never finishing. Record with "
            "engine.early_stop=null and a generous budget."
        )
    return Recorded(
        problem_ids=tuple(ids),
        truths=truth_values,
        n_rollouts=n_rollouts,
        tokens=tokens,
        prompt_tokens=prompt,
        new_prompt_tokens=new_prompt,
        gen_start=gen_start,
        gen_seconds=gen_seconds,
        exec_seconds=exec_seconds,
        end=end,
        box_pos=box_pos,
        err_cum=err_cum,
        has_call=has_call,
        ncalls=ncalls,
        term=term,
        answer=answer,
        censored=censored,
        truth_id=truth_id,
        fallback_ok=truth_values == policy.fallback,
        recorded_n=int(n_rollouts.min()),
        recorded_m=smallest("max_calls", C),
        recorded_max_tokens=smallest("max_tokens_per_call", int(tokens.max()) or 1),
        overhead_s=_overhead(runs),
        early_stop_recorded=early,
        warnings=tuple(warnings),
    )
