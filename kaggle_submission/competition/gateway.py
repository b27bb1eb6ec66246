"""The kit's own local gateway: Kaggle's contract, on any CSV, without Kaggle.

It serves problems one at a time in shuffled order through the same entry points the notebook
uses (AIMO-1: an `aimo`-style env; AIMO-2/3: the module-level `predict` with polars Series),
enforces predict-before-next and the per-call limit, checks every returned row, writes the
submission file in the competition's format, and scores it when answers are known.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..problems import Problem, truths
from . import get_adapter
from .base import AnswerFn


class GatewayError(RuntimeError):
    """The kernel broke the competition's contract (Kaggle would fail the submission)."""


@dataclass(frozen=True)
class GatewayRow:
    """One served problem: what was submitted and how long the call took."""

    key: str
    answer: int
    truth: int | None
    seconds: float
    order: int

    @property
    def correct(self) -> bool | None:
        return None if self.truth is None else self.answer == self.truth


@dataclass
class GatewayResult:
    competition: str
    submission_path: Path
    rows: list[GatewayRow] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def scored(self) -> int:
        return sum(r.truth is not None for r in self.rows)

    @property
    def correct(self) -> int:
        return sum(bool(r.correct) for r in self.rows)


OnRow = Callable[[GatewayRow, int], None]


class LocalAimoEnv:
    """AIMO-1's `aimo` env: make_env once, iter_test once, predict before the next item."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        self.iterated = False
        self.pending: Any = None
        self.submissions: list[tuple[str, Any]] = []

    def iter_test(self) -> Iterator[tuple[Any, Any]]:
        import pandas as pd

        if self.iterated:
            raise GatewayError("iter_test() may only be called once")
        self.iterated = True
        for problem in self.problems:
            test = pd.DataFrame({"id": [problem.key], "problem": [problem.problem]})
            submission = pd.DataFrame({"id": [problem.key], "answer": [0]})
            self.pending = problem.key
            yield test, submission
            if self.pending is not None:
                raise GatewayError(f"predict() was not called for {problem.key} before the next")

    def predict(self, submission: Any) -> None:
        if self.pending is None:
            raise GatewayError("predict() called with no pending problem")
        if list(submission.columns) != ["id", "answer"] or len(submission) != 1:
            raise GatewayError(f"submission must be 1 row of id, answer; got {submission!r}")
        if str(submission["id"].iloc[0]) != self.pending:
            raise GatewayError(f"submission id {submission['id'].iloc[0]} != {self.pending}")
        self.submissions.append((self.pending, submission["answer"].iloc[0]))
        self.pending = None


def run_local_gateway(
    competition: str,
    problems: Sequence[Problem],
    answer_fn: AnswerFn,
    out_dir: str | Path,
    shuffle_seed: int | None = 0,
    per_call_limit_s: float | None = None,
    on_row: OnRow | None = None,
) -> GatewayResult:
    """Serve `problems` to the competition's adapter the way Kaggle does; write the submission."""
    adapter = get_adapter(competition)
    order = list(problems)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    truth = truths(order, adapter.POLICY)  # as the competition defines it (mod 1000: AIMO-1/2)
    limit = per_call_limit_s if per_call_limit_s is not None else adapter.PER_CALL_LIMIT_S
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = GatewayResult(competition, out / adapter.SUBMISSION_FILE)

    def record(key: str, answer: Any, seconds: float) -> None:
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise GatewayError(f"{key}: answer {answer!r} is not an int")
        if adapter.POLICY.admit(answer) != answer:
            raise GatewayError(f"{key}: answer {answer} outside {adapter.NAME}'s range")
        if limit is not None and result.rows and seconds > limit:
            result.violations.append(f"{key}: predict took {seconds:.1f} s > limit {limit:.0f} s")
        row = GatewayRow(key, answer, truth[key], seconds, len(result.rows))
        result.rows.append(row)
        if on_row is not None:
            on_row(row, len(order))

    if competition == "aimo1":
        _serve_aimo1(adapter, order, answer_fn, record)
    else:
        _serve_kaggle_eval(adapter, order, answer_fn, record)
    write_submission(result.submission_path, [(r.key, r.answer) for r in result.rows])
    return result


def _serve_aimo1(adapter: Any, order: list[Problem], answer_fn: AnswerFn, record: Any) -> None:
    env = LocalAimoEnv(order)
    clock = {"t": time.monotonic()}

    def timed(problem_id: str, problem: str) -> int:
        start = time.monotonic()
        try:
            return answer_fn(problem_id, problem)
        finally:
            clock["t"] = time.monotonic() - start

    real_predict = env.predict

    def predict(submission: Any) -> None:
        real_predict(submission)
        key, answer = env.submissions[-1]
        record(key, int(answer) if hasattr(answer, "__index__") else answer, clock["t"])

    env.predict = predict  # type: ignore[method-assign]
    adapter.serve_env(env, timed)


def _serve_kaggle_eval(
    adapter: Any, order: list[Problem], answer_fn: AnswerFn, record: Any
) -> None:
    import polars as pl

    from .kaggle_eval import install

    install(answer_fn)
    with_answers = all(p.answer is not None for p in order)
    for problem in order:
        columns = {"id": [problem.key], "problem": [problem.problem]}
        if with_answers:
            columns["answer"] = [problem.answer]
        frame = pl.DataFrame(columns)
        start = time.monotonic()
        try:
            returned = adapter.predict(*(frame[c] for c in frame.columns))
        except Exception as exc:
            raise GatewayError(
                f"{problem.key}: predict raised {type(exc).__name__}: {exc}"
            ) from exc
        seconds = time.monotonic() - start
        if not isinstance(returned, pl.DataFrame) or returned.columns != ["id", "answer"]:
            raise GatewayError(f"{problem.key}: predict must return a polars frame (id, answer)")
        if returned.height != 1 or str(returned["id"][0]) != problem.key:
            raise GatewayError(f"{problem.key}: predict returned {returned}")
        record(problem.key, returned["answer"][0], seconds)


def write_submission(path: str | Path, rows: Sequence[tuple[str, int]]) -> None:
    """The competition's submission file (CSV or parquet by suffix): columns id, answer. The one
    writer: the local gateway's and the sharded dry run's files are written alike."""
    path = Path(path)
    ids = [key for key, _ in rows]
    answers = [int(answer) for _, answer in rows]
    if path.suffix == ".csv":
        import csv

        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "answer"])
            writer.writerows(zip(ids, answers, strict=True))
    else:
        import polars as pl

        pl.DataFrame({"id": ids, "answer": answers}).write_parquet(path)
