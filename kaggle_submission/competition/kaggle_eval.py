"""AIMO-2 and AIMO-3: the kaggle_evaluation inference server contract.

The server looks `predict` up by its __name__, calls it from a gRPC worker thread with one polars
Series per CSV column ((id, problem) and, on the reference set, answer), and fails the
submission on an exception. So `predict` here is a module-level function that only reads the
installed kernel and never raises; `install` sets the kernel before `serve()`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from ..answers import AnswerPolicy
from .base import AnswerFn, safe_answer, scalar

_lock = threading.Lock()
_state: dict[str, Any] = {"answer_fn": None, "policy": None}


def install(answer_fn: AnswerFn, policy: AnswerPolicy) -> None:
    """Set the kernel that `predict` calls (once, before serving)."""
    with _lock:
        _state["answer_fn"] = answer_fn
        _state["policy"] = policy


def predict(id_: Any, problem: Any, answer: Any = None) -> Any:
    """One problem in, a 1-row polars frame {"id", "answer"} out; never raises."""
    import polars as pl

    policy: AnswerPolicy = _state["policy"]
    try:
        problem_id = scalar(id_)
        text = scalar(problem)
    except Exception:
        problem_id, text = str(id_), ""
    value = safe_answer(_state["answer_fn"], problem_id, text, policy)
    return pl.DataFrame({"id": [problem_id], "answer": [value]})


def serve(
    answer_fn: AnswerFn,
    policy: AnswerPolicy,
    server: tuple[str, str],
    test_path: str | Path | None = None,
) -> None:
    """Install the kernel, then serve on Kaggle's rerun or run Kaggle's own local gateway."""
    import importlib

    install(answer_fn, policy)
    server_module, server_class = server
    module = importlib.import_module(server_module)
    server = getattr(module, server_class)(predict)
    if os.getenv("KAGGLE_IS_COMPETITION_RERUN"):
        server.serve()
    else:
        server.run_local_gateway((str(test_path),) if test_path else None)
