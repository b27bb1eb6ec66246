"""Adapters driven by the local gateway, with scripted answer functions."""

from __future__ import annotations

import csv
import threading
from typing import ClassVar

import polars as pl
import pytest

from kaggle_submission.competition import get_adapter
from kaggle_submission.competition.gateway import GatewayError, LocalAimoEnv, run_local_gateway
from kaggle_submission.problems import Problem, load_problems


def problems(n: int = 6, answers: bool = True) -> list[Problem]:
    return [
        Problem(f"p{i}", f"p{i}", f"What is {i} + {i}?", 2 * i if answers else None, i + 2, "t")
        for i in range(n)
    ]


def doubling(problem_id: str, problem: str) -> int:
    return 2 * int(problem.split()[2])


@pytest.mark.parametrize("competition", ["aimo1", "aimo2", "aimo3"])
def test_every_problem_answered_once_in_the_right_format(tmp_path, competition):
    calls: list[str] = []

    def answer(problem_id: str, problem: str) -> int:
        calls.append(problem_id)
        return doubling(problem_id, problem)

    result = run_local_gateway(competition, problems(), answer, tmp_path, shuffle_seed=3)
    assert sorted(calls) == [f"p{i}" for i in range(6)]
    assert calls != sorted(calls)  # shuffled
    assert result.correct == result.scored == 6
    path = result.submission_path
    if competition == "aimo1":
        assert path.name == "submission.csv"
        rows = list(csv.DictReader(path.open()))
        assert [r["id"] for r in rows] == calls
        assert all(int(r["answer"]) == 2 * int(r["id"][1:]) for r in rows)
    else:
        assert path.name == "submission.parquet"
        frame = pl.read_parquet(path)
        assert frame.columns == ["id", "answer"]
        assert frame["id"].to_list() == calls
        assert frame["answer"].dtype.is_integer()


@pytest.mark.parametrize("competition", ["aimo1", "aimo2", "aimo3"])
@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(RuntimeError("CUDA out of memory"), id="exception"),
        pytest.param(10**6, id="out-of-range"),
        pytest.param(-3, id="negative"),
        pytest.param("12", id="not-int"),
    ],
)
def test_failures_inside_predict_become_fallback_answers(tmp_path, competition, failure):
    def answer(problem_id: str, problem: str) -> int:
        if problem_id == "p1":
            if isinstance(failure, Exception):
                raise failure
            return failure
        return doubling(problem_id, problem)

    result = run_local_gateway(competition, problems(), answer, tmp_path)
    by_key = {r.key: r.answer for r in result.rows}
    assert len(result.rows) == 6
    assert by_key["p1"] == get_adapter(competition).POLICY.fallback
    assert result.correct == 5


def test_aimo3_range_and_answer_column(tmp_path):
    seen = []
    adapter = get_adapter("aimo3")

    def answer(problem_id: str, problem: str) -> int:
        seen.append(threading.current_thread().name)
        return 54321

    result = run_local_gateway("aimo3", load_problems("aimo3-reference"), answer, tmp_path)
    assert {r.answer for r in result.rows} == {54321}
    assert adapter.POLICY.max_value == 99999
    assert adapter.predict.__name__ == "predict"
    assert adapter.predict.__module__ == adapter.__name__  # a module-level function of its own


def test_predict_accepts_series_and_runs_in_a_worker_thread():
    adapter = get_adapter("aimo2")
    adapter_install = pytest.importorskip("kaggle_submission.competition.kaggle_eval").install
    adapter_install(doubling)
    out = {}

    def worker() -> None:
        out["frame"] = adapter.predict(
            pl.Series("id", ["x"]), pl.Series("problem", ["What is 4 + 4?"])
        )

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert out["frame"].to_dicts() == [{"id": "x", "answer": 8}]


def test_aimo1_env_requires_predict_before_next():
    env = LocalAimoEnv(problems(2))
    items = env.iter_test()
    next(items)
    with pytest.raises(GatewayError, match="predict\\(\\) was not called for p0"):
        next(items)
    with pytest.raises(GatewayError, match="only be called once"):
        next(env.iter_test())


def test_per_call_limit_violations_are_reported(tmp_path):
    import time

    def slow(problem_id: str, problem: str) -> int:
        time.sleep(0.05)
        return 0

    result = run_local_gateway("aimo2", problems(3), slow, tmp_path, per_call_limit_s=0.01)
    # the first call is exempt, as on Kaggle
    assert len(result.violations) == 2
    assert "limit" in result.violations[0]


class FakeServer:
    """Stands in for kaggle_evaluation's server class: records how it was driven."""

    instances: ClassVar[list[FakeServer]] = []

    def __init__(self, predict):
        self.predict = predict
        self.calls: list[tuple] = []
        FakeServer.instances.append(self)

    def serve(self):
        self.calls.append(("serve",))

    def run_local_gateway(self, paths):
        self.calls.append(("local", paths))
        self.answer = self.predict(pl.Series(["q"]), pl.Series(["What is 5 + 5?"]))


@pytest.mark.parametrize("competition", ["aimo2", "aimo3"])
@pytest.mark.parametrize("rerun", [True, False])
def test_kaggle_eval_run_switches_on_rerun_variable(monkeypatch, competition, rerun):
    import sys
    import types

    adapter = get_adapter(competition)
    module_name, class_name = adapter.SERVER
    fake = types.ModuleType(module_name)
    setattr(fake, class_name, FakeServer)
    monkeypatch.setitem(sys.modules, module_name, fake)
    if rerun:
        monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    else:
        monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    adapter.run(doubling, "/kaggle/input/test.csv")
    server = FakeServer.instances[-1]
    assert server.predict.__name__ == "predict"
    if rerun:
        assert server.calls == [("serve",)]
    else:
        assert server.calls == [("local", ("/kaggle/input/test.csv",))]
        assert server.answer.to_dicts() == [{"id": "q", "answer": 10}]


def test_aimo1_run_uses_the_aimo_module(monkeypatch):
    import sys
    import types

    env = LocalAimoEnv(problems(3))
    fake = types.ModuleType("aimo")
    fake.make_env = lambda: env
    monkeypatch.setitem(sys.modules, "aimo", fake)
    get_adapter("aimo1").run(doubling)
    assert env.submissions == [(f"p{i}", 2 * i) for i in range(3)]


def test_an_empty_rerun_variable_still_means_the_rerun(monkeypatch):
    """Kaggle tests the variable with `is not None`: set to "" it is the rerun, so serve."""
    import sys
    import types

    adapter = get_adapter("aimo2")
    module_name, class_name = adapter.SERVER
    fake = types.ModuleType(module_name)
    setattr(fake, class_name, FakeServer)
    monkeypatch.setitem(sys.modules, module_name, fake)
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "")
    serving: list[int] = []
    adapter.run(doubling, "/kaggle/input/test.csv", on_serving=lambda: serving.append(1))
    assert FakeServer.instances[-1].calls == [("serve",)]
    assert serving == [1]


@pytest.mark.parametrize("competition", ["aimo2", "aimo3"])
@pytest.mark.parametrize("extra", [0, 1, 2])
@pytest.mark.parametrize("problem_id", [7, "7"], ids=["int-id", "str-id"])
def test_predict_takes_extra_columns_and_returns_the_id_unchanged(competition, extra, problem_id):
    from kaggle_submission.competition.kaggle_eval import install

    adapter = get_adapter(competition)
    install(doubling)
    columns = [pl.Series("id", [problem_id]), pl.Series("problem", ["What is 4 + 4?"])]
    columns += [pl.Series(f"extra{i}", [i]) for i in range(extra)]
    frame = adapter.predict(*columns)
    assert frame.to_dicts() == [{"id": problem_id, "answer": 8}]
    assert type(frame["id"][0]) is type(problem_id)


@pytest.mark.parametrize("competition", ["aimo2", "aimo3"])
def test_predict_before_install_answers_the_adapters_fallback(competition):
    from kaggle_submission.competition.kaggle_eval import install

    adapter = get_adapter(competition)
    install(None)
    frame = adapter.predict(pl.Series("id", ["x"]), pl.Series("problem", ["What is 4 + 4?"]))
    assert frame.to_dicts() == [{"id": "x", "answer": adapter.POLICY.fallback}]
