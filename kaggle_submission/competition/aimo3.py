"""AIMO-3: kaggle_evaluation's AIMO3InferenceServer around the shared `predict`."""

from __future__ import annotations

from pathlib import Path

from ..answers import AIMO3_POLICY
from .base import AnswerFn
from .kaggle_eval import predict, serve

NAME = "aimo3"
POLICY = AIMO3_POLICY
SUBMISSION_FILE = "submission.parquet"
PER_CALL_LIMIT_S: float | None = 9 * 3600.0
SERVER = ("kaggle_evaluation.aimo_3_inference_server", "AIMO3InferenceServer")

__all__ = ["NAME", "PER_CALL_LIMIT_S", "POLICY", "SUBMISSION_FILE", "predict", "run"]


def run(answer_fn: AnswerFn, test_path: str | Path | None = None) -> None:
    """On Kaggle: serve `answer_fn` (or run Kaggle's local gateway on `test_path`)."""
    serve(answer_fn, POLICY, SERVER, test_path)
