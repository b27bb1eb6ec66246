"""Early-stop rules: a real majority (agree votes AND a share of the valid weight) to stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from kaggle_submission.backends.base import Completion, GenerationRequest
from kaggle_submission.backends.scripted import ScriptedBackend
from kaggle_submission.config import EngineConfig
from kaggle_submission.engine import solve_async
from kaggle_submission.presets import PRESETS
from kaggle_submission.sandbox import Sandbox, SandboxConfig
from kaggle_submission.stopping import NEVER_STOP, ConsensusStop, StopView


def view(answers: list[int], running: int, weights: list[float] | None = None) -> StopView:
    """What the engine shows a rule after len(answers) valid rollouts finished."""
    ws = tuple(weights) if weights is not None else (1.0,) * len(answers)
    n = len(answers)
    return StopView(tuple(answers), ws, finished=n, running=running, total=n + running)


AGREE4 = ConsensusStop(agree=4, min_share=0.5, unbeatable_leader=False)
OLD_AGREE4 = ConsensusStop(agree=4, min_share=0.0, unbeatable_leader=False)
FOUR_OF_FIVE = ConsensusStop(agree=4, min_share=0.5, within_first=5, unbeatable_leader=False)

# (rule, finished valid answers in finishing order, weights, still running, stops)
CASES = [
    pytest.param(
        AGREE4,
        [7, 1, 2, 7, 3, 4, 7, 5, 6, 8, 9, 10, 11, 7],
        None,
        34,
        False,
        id="4-of-14-valid-is-no-majority",
    ),
    pytest.param(
        OLD_AGREE4,
        [7, 1, 2, 7, 3, 4, 7, 5, 6, 8, 9, 10, 11, 7],
        None,
        34,
        True,
        id="old-rule-stops-on-4-of-14",
    ),
    pytest.param(AGREE4, [7, 7, 3, 7, 7], None, 43, True, id="4-of-5-stops"),
    pytest.param(AGREE4, [7, 7, 3, 9, 7, 5, 7, 2], None, 40, True, id="exactly-half-stops"),
    pytest.param(AGREE4, [7, 7, 3, 9, 7, 5, 7, 2, 1], None, 39, False, id="4-of-9-waits"),
    pytest.param(AGREE4, [7, 7, 7], None, 45, False, id="3-agree-too-few"),
    pytest.param(
        AGREE4,
        [7, 7, 7, 7, 9, 9, 9],
        [0.4, 0.4, 0.4, 0.4, 1.0, 1.0, 1.0],
        41,
        False,
        id="share-is-by-weight",
    ),
    pytest.param(
        AGREE4,
        [7, 7, 7, 7, 9, 9],
        [1.0, 1.0, 1.0, 1.0, 0.4, 0.4],
        42,
        True,
        id="down-weighted-dissent",
    ),
    pytest.param(FOUR_OF_FIVE, [7, 7, 3, 7, 7, 1, 2, 4, 5], None, 39, True, id="4-of-first-5"),
    pytest.param(
        FOUR_OF_FIVE,
        [7, 3, 7, 1, 7, 7, 7, 7],
        None,
        40,
        False,
        id="4-not-in-first-5",
    ),
    pytest.param(
        ConsensusStop(agree=None, min_share=0.9, unbeatable_leader=True),
        [7, 7, 7],
        None,
        2,
        True,
        id="unbeatable-leader-alone",
    ),
    pytest.param(
        ConsensusStop(agree=None, min_share=0.9, unbeatable_leader=True),
        [7, 7, 7],
        None,
        3,
        False,
        id="leader-still-beatable",
    ),
    pytest.param(NEVER_STOP, [7] * 40, None, 1, False, id="never"),
]


@pytest.mark.parametrize(("rule", "answers", "weights", "running", "stops"), CASES)
def test_consensus_stop(rule, answers, weights, running, stops):
    assert rule(view(answers, running, weights)) is stops


def test_default_rule_needs_a_majority():
    """The issue's case: 4 of 48 agree while 10 finished ones disagree; it must not stop."""
    answers = [7, 7, 7, 7, *range(100, 110)]
    assert ConsensusStop()(view(answers, running=34)) is False
    assert ConsensusStop().min_share >= 0.5
    for name in ("aimo1-t4x2", "aimo2-l4x4", "aimo3-h100"):
        rule = PRESETS[name].engine.early_stop
        assert rule is not None and rule.min_share >= 0.5, name
        assert rule(view(answers, running=34)) is False, name


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"min_share": 1.5}, id="share-above-1"),
        pytest.param({"min_share": -0.1}, id="share-negative"),
        pytest.param({"agree": 0}, id="agree-zero"),
    ],
)
def test_consensus_stop_validation(kwargs):
    with pytest.raises(ValueError):
        ConsensusStop(**kwargs)


# --- in the engine -------------------------------------------------------------------------

OUT = "```output"
MAJORITY = 42  # rollouts 0..5 answer 42, rollouts 6..15 answer 100 + r


@dataclass(frozen=True)
class WatchedStop(ConsensusStop):
    """The rule under test, telling the backend what it saw (to order the finishes)."""

    seen: Callable[[StopView], None] = field(default=lambda _view: None, compare=False)

    def __call__(self, view: StopView) -> bool:
        self.seen(view)
        return super().__call__(view)


class GatedBackend(ScriptedBackend):
    """Finishing order fixed by events, not sleeps: the 10 distractors give their answers
    first, then majority rollouts 0..3, and 4..5 only once the rule has seen those 14."""

    def __init__(self) -> None:
        super().__init__(self.answer_script)
        self.distractors_done = 0
        self.first_gate = asyncio.Event()
        self.second_gate = asyncio.Event()

    @staticmethod
    def answer_script(request: GenerationRequest) -> str:
        if OUT not in request.prompt:
            return f"Compute.\n```python\nprint(6 * 7)\n```\n{OUT}"
        answer = MAJORITY if request.rollout < 6 else 100 + request.rollout
        return f"\nSo the answer is $\\boxed{{{answer}}}$."

    def seen(self, view: StopView) -> None:
        if len(view.answers) >= 14:
            self.second_gate.set()

    async def generate(self, request: GenerationRequest) -> Completion:
        final = OUT in request.prompt
        if final and request.rollout < 4:
            await self.first_gate.wait()
        elif final and request.rollout < 6:
            await self.second_gate.wait()
        completion = await super().generate(request)
        if final and request.rollout >= 6:
            self.distractors_done += 1
            if self.distractors_done == 10:
                self.first_gate.set()
        return completion


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=2.0)) as box:
        yield box


def solve(sandbox, min_share: float):
    backend = GatedBackend()
    # a closure, not the bound method: the engine deep-copies its config into the trace
    rule = WatchedStop(
        agree=4, min_share=min_share, unbeatable_leader=False, seen=lambda v: backend.seen(v)
    )
    config = EngineConfig(num_rollouts=16, max_calls=2, early_stop=rule)
    return asyncio.run(
        solve_async(
            "What is 6*7?", backend=backend, sandbox=sandbox, config=config, deadline=deadline()
        )
    )


def deadline() -> float:
    """A failure ends at a deadline (stop_reason "deadline") instead of the engine's watchdog."""
    return time.monotonic() + 60.0


def test_engine_needs_a_majority_to_stop(sandbox):
    """42 reaches 4 votes only among 14 valid: the old rule (min_share 0) stopped there and
    cancelled the last two; with min_share 0.5 every rollout finishes."""
    old = solve(sandbox, min_share=0.0)
    assert old.stop_reason == "early_stop"
    assert (old.vote.n_valid, old.vote.counts[MAJORITY]) == (14, 4)
    new = solve(sandbox, min_share=0.5)
    assert new.stop_reason == "finished"
    assert (new.vote.n_valid, new.vote.counts[MAJORITY], new.answer) == (16, 6, MAJORITY)


def test_engine_stops_on_a_real_majority(sandbox):
    """Majority first: 4 of 4 valid agree (share 1), so the rule cancels the distractors."""
    backend = ScriptedBackend(GatedBackend.answer_script)
    rule = ConsensusStop(agree=4, unbeatable_leader=False)  # the default min_share
    config = EngineConfig(num_rollouts=16, max_calls=2, early_stop=rule)

    async def run():
        gate = asyncio.Event()

        async def generate(request: GenerationRequest) -> Completion:
            if OUT in request.prompt and request.rollout >= 6:
                await gate.wait()  # never set: distractors finish only if not cancelled
            return await ScriptedBackend.generate(backend, request)

        backend.generate = generate  # type: ignore[method-assign]
        return await solve_async(
            "What is 6*7?", backend=backend, sandbox=sandbox, config=config, deadline=deadline()
        )

    solution = asyncio.run(run())
    assert solution.stop_reason == "early_stop"
    assert solution.answer == MAJORITY
    assert solution.vote.n_valid < 16
    assert solution.vote.counts[MAJORITY] >= 4
