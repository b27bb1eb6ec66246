"""AIMO-2: kaggle_evaluation's AIMO2InferenceServer around the shared `predict`."""

from __future__ import annotations

from pathlib import Path

from ..answers import AIMO2_POLICY
from .base import AnswerFn
from .kaggle_eval import predict, serve

NAME = "aimo2"
POLICY = AIMO2_POLICY
SUBMISSION_FILE = "submission.parquet"
PER_CALL_LIMIT_S: float | None = 30 * 60.0
SERVER = ("kaggle_evaluation.aimo_2_inference_server", "AIMO2InferenceServer")

__all__ = ["NAME", "PER_CALL_LIMIT_S", "POLICY", "SUBMISSION_FILE", "predict", "run"]


def run(answer_fn: AnswerFn, test_path: str | Path | None = None) -> None:
    """On Kaggle: serve `answer_fn` (or run Kaggle's local gateway on `test_path`)."""
    serve(answer_fn, POLICY, SERVER, test_path)
