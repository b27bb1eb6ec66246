"""Serve first, build in the background: the run cell's server answers calls before the engine
is ready, a failed build still yields a complete submission, and start-up is timed.

The engine is a scripted backend behind a factory that takes as long as the test decides: it
returns only once the gateway's first `predict` call has arrived, so a kernel built before
serving (the old order) never gets a call and its build fails on the event's timeout.
"""

from __future__ import annotations

import csv
import logging
import threading
from pathlib import Path

import pytest

from kaggle_submission import notebook_main as nm
from kaggle_submission.backends.scripted import ScriptedBackend, tir_script
from kaggle_submission.competition import get_adapter
from kaggle_submission.kernel import BackgroundStart, Kernel
from kaggle_submission.presets import PRESETS
from kaggle_submission.traces import read_traces

pl = pytest.importorskip("polars")

EVENT_TIMEOUT_S = 60.0  # only ever reached when the behaviour under test is broken


def overrides(competition: str) -> dict[str, object]:
    return {
        "competition": competition,
        "engine.num_rollouts": 2,
        "engine.max_calls": 2,
        "budget.total_s": 600,
        "budget.startup_reserve_s": 0,
        "budget.safety_s": 0,
    }


def write_csv(path: Path, n: int = 3) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "problem", "answer"])
        writer.writerows((f"p{i}", f"Problem {i}: what is 6 times 7?", 42) for i in range(n))
    return path


class Records(logging.Handler):
    """The package logger's records (it does not propagate to the root logger in a run)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records():
    handler = Records()
    logger = logging.getLogger("kaggle_submission")
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def patch_kernel(monkeypatch, engine) -> list[Kernel]:
    """main() builds a real Kernel whose backend factory is `engine`."""
    kernels: list[Kernel] = []

    def make_kernel(preset, weights, trace_path, run_started, model_dir=None):
        kernel = Kernel(preset, backend=engine, trace_path=trace_path, run_started=run_started)
        kernels.append(kernel)
        return kernel

    monkeypatch.setattr(nm, "make_kernel", make_kernel)
    return kernels


@pytest.mark.parametrize("competition", ["aimo2", "aimo3"])
def test_the_server_answers_calls_before_the_engine_is_ready(tmp_path, monkeypatch, competition):
    adapter = get_adapter(competition)
    called = threading.Event()
    real_predict = adapter.predict

    def spy(*columns):
        called.set()
        return real_predict(*columns)

    monkeypatch.setattr(adapter, "predict", spy)
    seen: dict[str, object] = {}

    def slow_engine() -> ScriptedBackend:
        # built off the main thread, after the sandbox template (the kernel's start-up order)
        seen["sandbox"] = kernels[0].sandbox.template_pid
        seen["thread"] = threading.current_thread().name
        if not called.wait(EVENT_TIMEOUT_S):
            raise TimeoutError("no predict call arrived while the engine was building")
        return ScriptedBackend(tir_script())

    kernels = patch_kernel(monkeypatch, slow_engine)
    out = tmp_path / "out"
    result = nm.main(
        "demo-cpu",
        overrides(competition),
        mode="local",
        local_csv=write_csv(tmp_path / "test.csv"),
        out_dir=out,
    )
    assert result.engine_error is None
    # the first call came in while the engine was building, waited, and got the engine's answer
    assert result.answered == 3 and result.correct == result.scored == 3
    assert seen["sandbox"] is not None and seen["thread"] != "MainThread"
    assert result.t_serving_s is not None and result.t_engine_ready_s is not None
    assert 0 <= result.t_serving_s < result.t_engine_ready_s
    frame = pl.read_parquet(out / "submission.parquet")
    assert sorted(frame["id"].to_list()) == ["p0", "p1", "p2"]
    traces = list(read_traces(out / "traces.jsonl"))
    assert len(traces) == 3
    for trace in traces:
        assert trace.t_serving_s == result.t_serving_s
        assert trace.t_engine_ready_s == result.t_engine_ready_s
        # the template forked from the (now finished) build thread still runs the model's code
        outputs = [s.output for r in trace.rollouts for s in r.segments if s.kind == "execution"]
        assert outputs and all(o == "42\n" for o in outputs)


@pytest.mark.parametrize("competition", ["aimo1", "aimo2", "aimo3"])
def test_a_failed_build_answers_every_problem_with_the_fallback(
    tmp_path, monkeypatch, records, competition
):
    def broken_engine() -> ScriptedBackend:
        raise RuntimeError("no GPU here")

    patch_kernel(monkeypatch, broken_engine)
    out = tmp_path / "out"
    result = nm.main(
        "demo-cpu",
        overrides(competition),
        mode="local",
        local_csv=write_csv(tmp_path / "test.csv", n=4),
        out_dir=out,
    )
    fallback = get_adapter(competition).POLICY.fallback
    assert result.engine_error == "RuntimeError: no GPU here"
    assert result.answered == 4 and result.correct == 0
    assert result.t_serving_s is not None and result.t_engine_ready_s is None
    submission = Path(result.submission or "")
    if competition == "aimo1":
        rows = list(csv.DictReader(submission.open()))
    else:
        rows = pl.read_parquet(submission).to_dicts()
    assert sorted(r["id"] for r in rows) == ["p0", "p1", "p2", "p3"]
    assert {int(r["answer"]) for r in rows} == {fallback}
    # loud once (with the traceback), one short line per problem
    loud = [r for r in records if r.levelno == logging.CRITICAL]
    assert len(loud) == 1 and loud[0].exc_info is not None
    per_call = [r for r in records if "the engine build failed" in r.getMessage()]
    assert len(per_call) == 4 and all(r.exc_info is None for r in per_call)


def test_a_later_call_does_not_wait_past_the_per_call_limit(tmp_path):
    """AIMO-2: a second call while the engine still builds answers the fallback at once (the
    wait plus a full solve could pass 30 minutes); the first call waits and gets the answer."""
    release = threading.Event()

    def slow_engine() -> ScriptedBackend:
        if not release.wait(EVENT_TIMEOUT_S):
            raise TimeoutError("the test never released the build")
        return ScriptedBackend(tir_script())

    preset = PRESETS["demo-cpu"].with_overrides({**overrides("aimo2"), "budget.total_s": 5 * 3600})
    kernel = Kernel(preset, backend=slow_engine)
    build = BackgroundStart(kernel, get_adapter("aimo2").PER_CALL_LIMIT_S).begin()
    answers: dict[str, int] = {}
    first = threading.Thread(target=lambda: answers.update(p0=build.answer("p0", "6 x 7?")))
    second = threading.Thread(target=lambda: answers.update(p1=build.answer("p1", "6 x 7?")))
    try:
        first.start()
        assert build.first_call.wait(EVENT_TIMEOUT_S)
        second.start()
        second.join(EVENT_TIMEOUT_S)
        assert not second.is_alive() and answers == {"p1": preset.policy.fallback}
        assert not build.ready.is_set()  # it answered without the engine
    finally:
        release.set()
        first.join(EVENT_TIMEOUT_S)
        build.close()
    assert answers["p0"] == 42


@pytest.mark.parametrize(
    ("first", "time_left", "limit", "expected"),
    [
        (True, 5000.0, 1800.0, 5000.0),  # the first call has no deadline: up to the run's end
        (False, 5000.0, None, 5000.0),  # AIMO-1: no per-call limit
        (False, 5000.0, 9 * 3600.0, 5000.0),  # AIMO-3: the rest of the run fits in one call
        (False, 5000.0, 1800.0, 0.0),  # AIMO-2 mid-run: waiting could pass 30 minutes
        (False, 1000.0, 1800.0, 1000.0),  # AIMO-2 near the end: wait + solve <= time left
        (True, -3.0, None, 0.0),
    ],
)
def test_wait_limit(first, time_left, limit, expected):
    assert BackgroundStart.wait_limit(first, time_left, limit, margin_s=2.0) == expected


def test_kaggle_mode_starts_the_build_only_when_serving(tmp_path, monkeypatch):
    """On Kaggle the build starts from the adapter's `on_serving`, after the server exists."""
    events: list[str] = []

    def engine() -> ScriptedBackend:
        events.append("build")
        return ScriptedBackend(tir_script())

    patch_kernel(monkeypatch, engine)
    adapter = get_adapter("aimo2")

    def run(answer_fn, test_path=None, on_serving=None):
        events.append("server created")
        on_serving()
        events.append(f"answer {answer_fn('q', 'what is 6 times 7?')}")

    monkeypatch.setattr(adapter, "run", run)
    monkeypatch.chdir(tmp_path)
    result = nm.main(
        "demo-cpu", overrides("aimo2"), mode="kaggle", input_root=str(tmp_path), out_dir=tmp_path
    )
    assert events == ["server created", "build", "answer 42"]
    assert result.answered == 1 and result.engine_error is None
