"""AIMO-2 and AIMO-3: the kaggle_evaluation inference server contract.

The server looks `predict` up by its __name__, calls it from a gRPC worker thread with one polars
Series per CSV column ((id, problem), plus `answer` on the reference set and whatever column a
hidden CSV may add), and fails the submission on an exception. So each adapter defines a
module-level `predict` that calls `respond` with its own POLICY: the fallback is known even
before a kernel is installed, and nothing raised ever leaves `predict`.

The server must accept calls within 15 minutes of the gateway's first dial, so `serve` installs
the answer function and starts serving at once; `on_serving` is where the caller starts building
the engine in the background (see `kernel.BackgroundStart`).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..answers import AnswerPolicy
from .base import AnswerFn, safe_answer, scalar

RERUN_VARIABLE = "KAGGLE_IS_COMPETITION_RERUN"

_lock = threading.Lock()
_state: dict[str, Any] = {"answer_fn": None}


def install(answer_fn: AnswerFn | None) -> None:
    """Set the answer function that `predict` calls (None: answer the fallback)."""
    with _lock:
        _state["answer_fn"] = answer_fn


def respond(policy: AnswerPolicy, id_: Any, problem: Any) -> Any:
    """What every adapter's `predict` returns: a 1-row polars frame {"id", "answer"}.

    The id comes back as it came in (an int stays an int, a string a string); the answer is
    the installed function's, admitted by `policy`, or `policy.fallback`. Never raises.
    """
    import polars as pl

    try:
        problem_id = scalar(id_)
        text = scalar(problem)
    except Exception:
        problem_id, text = str(id_), ""
    value = safe_answer(_state["answer_fn"], problem_id, text, policy)
    return pl.DataFrame({"id": [problem_id], "answer": [value]})


def is_rerun() -> bool:
    """Kaggle's own test: the variable being set at all, even to "", means the hidden rerun."""
    return os.getenv(RERUN_VARIABLE) is not None


def serve(
    answer_fn: AnswerFn,
    predict: Callable[..., Any],
    server: tuple[str, str],
    test_path: str | Path | None = None,
    on_serving: Callable[[], None] | None = None,
) -> None:
    """Install `answer_fn`, then serve `predict` on Kaggle's rerun or run Kaggle's own local
    gateway on `test_path`; `on_serving` runs just before the server starts taking calls."""
    install(answer_fn)
    server_module, server_class = server
    module = importlib.import_module(server_module)
    instance = getattr(module, server_class)(predict)
    if on_serving is not None:
        on_serving()
    if is_rerun():
        instance.serve()
    else:
        instance.run_local_gateway((str(test_path),) if test_path else None)
