"""AIMO-1: the `aimo` env loop.

`env = aimo.make_env()` once, `env.iter_test()` once, yielding 1-row pandas frames
(test: id, problem; submission: id, answer); `env.predict(submission)` must be called before
the next item. "The answer is a non-negative integer, which you should report modulo 1000": the
policy reduces non-negative integers mod 1000 before voting (2024 -> 24) and keeps negatives and
non-integers invalid (see answers.AnswerPolicy).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..answers import AIMO1_POLICY
from .base import AnswerFn, safe_answer, scalar

NAME = "aimo1"
POLICY = AIMO1_POLICY
SUBMISSION_FILE = "submission.csv"
PER_CALL_LIMIT_S: float | None = None


def serve_env(env: Any, answer_fn: AnswerFn) -> int:
    """Answer every item the env yields; returns how many were answered."""
    answered = 0
    for test, submission in env.iter_test():
        try:
            problem_id, problem = scalar(test["id"]), scalar(test["problem"])
        except Exception:
            problem_id, problem = "?", ""
        submission["answer"] = safe_answer(answer_fn, problem_id, problem, POLICY)
        env.predict(submission)
        answered += 1
    return answered


def run(
    answer_fn: AnswerFn,
    test_path: str | Path | None = None,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """On Kaggle: the real `aimo` module; `test_path` is unused (the env reads its own data).
    `on_serving` runs once the env exists, just before the first problem is asked for."""
    aimo = importlib.import_module("aimo")
    env = aimo.make_env()
    if on_serving is not None:
        on_serving()
    serve_env(env, answer_fn)
