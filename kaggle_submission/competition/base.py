"""What every adapter shares: the answer function and the guard that never lets `predict` fail.

On Kaggle an exception inside predict fails the whole submission, so every adapter calls the
kernel through `safe_answer`: a problem always gets an integer in the competition's range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..answers import AnswerPolicy

log = logging.getLogger("kaggle_submission.competition")

AnswerFn = Callable[[str, str], int]


def scalar(value: Any) -> Any:
    """The single value of a 1-row polars/pandas Series or frame column, or the value itself."""
    if hasattr(value, "item") and hasattr(value, "__len__") and not isinstance(value, str):
        if len(value) != 1:
            raise ValueError(f"expected a 1-row series, got {len(value)} rows")
        return value.item(0) if _is_polars(value) else value.item()
    return value


def _is_polars(value: Any) -> bool:
    return type(value).__module__.startswith("polars")


def safe_answer(
    answer_fn: AnswerFn | None, problem_id: Any, problem: Any, policy: AnswerPolicy
) -> int:
    """`answer_fn(id, problem)` as an in-range int; the fallback on any failure, with a log line."""
    try:
        if answer_fn is None:
            raise RuntimeError("no kernel installed: call install(answer_fn) before serving")
        value = answer_fn(str(problem_id), str(problem))
        admitted = policy.admit(value)
        if admitted is None:
            raise ValueError(f"answer {value!r} outside the policy's range")
        return admitted
    except Exception as exc:
        log.error(
            "problem %s: %s: %s; submitting the fallback %d",
            problem_id,
            type(exc).__name__,
            exc,
            policy.fallback,
        )
        return policy.fallback
