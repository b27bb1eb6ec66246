"""Per-problem figures from traces: what counts as a sample, a pass and a vote."""

from __future__ import annotations

import pytest

from kaggle_submission.offline.report import problem_stats, summarize
from kaggle_submission.traces import RolloutTrace, SolveTrace, VoteTrace


def _trace(answer: int, rollouts: list[tuple[str, int | None]], key: str = "p") -> SolveTrace:
    return SolveTrace(
        problem_id=key,
        problem="?",
        prompt="?",
        answer=answer,
        stop_reason="early_stop",
        started_at=0.0,
        seconds=1.0,
        budget_s=10.0,
        config={},
        backend={},
        vote=VoteTrace({answer: 1.0}, 1, len(rollouts), 1.0, False),
        rollouts=[RolloutTrace(i, status, value) for i, (status, value) in enumerate(rollouts)],
    )


@pytest.mark.parametrize(
    ("rollouts", "single", "finished", "passed"),
    [
        # early stop after 3 of 8 agreed: the 5 cancelled rollouts carry no outcome
        ([("answered", 7)] * 3 + [("cancelled", None)] * 5, 1.0, 3, True),
        # a rollout that finished without an answer counts against single-sample accuracy
        (
            [("answered", 7), ("no_answer", None), ("answered", 3), ("cancelled", None)],
            1 / 3,
            3,
            True,
        ),
        ([("answered", 3), ("pruned", None)], 0.0, 2, False),
        # everything cancelled (deadline before any finished): no single-sample figure
        ([("cancelled", None)] * 4, None, 0, False),
    ],
)
def test_single_sample_counts_finished_rollouts_only(rollouts, single, finished, passed) -> None:
    stats = problem_stats(_trace(7, rollouts), truth=7)
    assert stats.single_sample == (pytest.approx(single) if single is not None else None)
    assert stats.n_finished == finished and stats.n_rollouts == len(rollouts)
    assert stats.pass_at_n is passed and stats.correct is True


def test_summary_averages_single_sample_over_problems_with_an_outcome() -> None:
    traces = [
        _trace(7, [("answered", 7), ("answered", 3)], "a"),
        _trace(5, [("cancelled", None)] * 2, "b"),
        _trace(1, [("answered", 1)], "c"),
    ]
    summary = summarize(traces, {"a": 7, "b": 5, "c": 2}, {})
    assert summary["scored"] == 3 and summary["correct"] == 2
    assert summary["single_sample"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["pass_at_n"] == pytest.approx(1 / 3)
