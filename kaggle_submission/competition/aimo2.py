"""AIMO-2: kaggle_evaluation's AIMO2InferenceServer around this module's `predict`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..answers import AIMO2_POLICY
from .base import AnswerFn
from .kaggle_eval import respond, serve

NAME = "aimo2"
POLICY = AIMO2_POLICY
SUBMISSION_FILE = "submission.parquet"
PER_CALL_LIMIT_S: float | None = 30 * 60.0
SERVER = ("kaggle_evaluation.aimo_2_inference_server", "AIMO2InferenceServer")

__all__ = ["NAME", "PER_CALL_LIMIT_S", "POLICY", "SUBMISSION_FILE", "predict", "run"]


def predict(id_: Any, problem: Any, *extra: Any) -> Any:
    """The server's endpoint (found by this name): one problem in, one (id, answer) row out.

    Extra columns (the reference set's `answer`, any a hidden CSV adds) are ignored; never
    raises, and answers POLICY's fallback while no kernel is installed.
    """
    return respond(POLICY, id_, problem)


def run(
    answer_fn: AnswerFn,
    test_path: str | Path | None = None,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """On Kaggle: serve `answer_fn` (or run Kaggle's local gateway on `test_path`)."""
    serve(answer_fn, predict, SERVER, test_path, on_serving)
