"""Fault injection through the kernel: every problem is answered, the run goes on."""

from __future__ import annotations

import time

import pytest

from kaggle_submission.backends.scripted import ScriptedBackend, tir_script
from kaggle_submission.budget import BudgetConfig
from kaggle_submission.competition.gateway import run_local_gateway
from kaggle_submission.config import override
from kaggle_submission.kernel import Kernel
from kaggle_submission.presets import PRESETS
from kaggle_submission.problems import Problem
from kaggle_submission.stopping import NEVER_STOP


def preset(total_s: float = 120.0, n: int = 4, problems: int = 6, margin_s: float = 0.5):
    base = PRESETS["demo-cpu"]
    return override(
        base,
        engine=override(base.engine, num_rollouts=n, early_stop=NEVER_STOP),
        budget=BudgetConfig(
            total_s=total_s,
            num_problems=problems,
            startup_reserve_s=0,
            safety_s=0,
            floor_s=0.5,
            cap_s=3.0,
            margin_s=margin_s,
        ),
    )


PROBLEMS = [Problem(f"p{i}", f"p{i}", f"Problem {i}", 42, i + 2, "t") for i in range(6)]


class FaultyBackend(ScriptedBackend):
    """Fails on chosen problems: raise, out-of-memory, or block the event loop."""

    def __init__(self, faults: dict[str, str]) -> None:
        super().__init__(tir_script())
        self.faults = faults
        self.hung = False

    async def generate(self, request):
        fault = next((f for key, f in self.faults.items() if key in request.prompt), None)
        if fault == "raise":
            raise RuntimeError("engine exploded")
        if fault == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if fault == "hang" and not self.hung:
            self.hung = True
            time.sleep(4.0)  # blocks the loop: only the watchdog can answer in time
        return await super().generate(request)


@pytest.mark.parametrize("fault", ["raise", "oom", "hang"])
def test_faults_cost_one_answer_not_the_run(tmp_path, fault):
    built = []

    def factory():
        built.append(1)
        return FaultyBackend({"Problem 2": fault})

    kernel = Kernel(preset(), backend=factory, trace_path=tmp_path / "t.jsonl")
    with kernel:
        started = time.monotonic()
        result = run_local_gateway("aimo1", PROBLEMS, kernel.answer, tmp_path, shuffle_seed=None)
        elapsed = time.monotonic() - started
    answers = {r.key: r.answer for r in result.rows}
    assert len(answers) == 6
    assert answers["p2"] == 0  # the fallback
    assert all(answers[k] == 42 for k in answers if k != "p2")
    if fault == "oom":
        assert kernel.engine_config.num_rollouts == 2  # halved
    if fault in ("raise", "oom"):
        assert kernel.rebuilds == 1 and len(built) == 2
    if fault == "hang":
        # the watchdog answers at the deadline (cap 3 s) plus the margin, then a new loop
        assert result.rows[2].seconds < 3.0 + 0.5 + 1.5
        assert kernel.rebuilds == 1 and len(built) == 2
        assert elapsed < 4.0 + 6 * 1.5


def test_out_of_time_still_answers_everything(tmp_path):
    slow = ScriptedBackend(tir_script(), latency=0.3)
    kernel = Kernel(preset(total_s=1.0, margin_s=0.1), backend=slow)
    with kernel:
        result = run_local_gateway("aimo1", PROBLEMS, kernel.answer, tmp_path)
    assert len(result.rows) == 6
    assert all(r.answer in (0, 42) for r in result.rows)
    assert sum(r.seconds for r in result.rows) < 1.0 + 6 * 0.1 + 0.5


def test_startup_order_sandbox_before_engine(monkeypatch):
    order = []
    kernel = Kernel(preset(), backend=lambda: order.append("engine") or ScriptedBackend())
    real_start = kernel.sandbox.start
    monkeypatch.setattr(kernel.sandbox, "start", lambda: order.append("sandbox") or real_start())
    with kernel:
        assert order == ["sandbox", "engine"]
