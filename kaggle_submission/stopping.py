"""Early-stop rules: end a problem as soon as its answer is settled.

The engine calls a rule each time a rollout finishes; returning True cancels the rest. Rules see
only the finished answers and how many rollouts are still running, so they are pure and cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StopView:
    """What a rule may look at: valid answers in finishing order, their weights, and the rest."""

    answers: tuple[int, ...]
    weights: tuple[float, ...]
    finished: int
    running: int
    total: int

    def tallies(self) -> list[tuple[int, float]]:
        """(answer, weight) from the highest weight down; ties in first-finished order."""
        totals: dict[int, float] = {}
        for answer, weight in zip(self.answers, self.weights, strict=True):
            totals[answer] = totals.get(answer, 0.0) + weight
        return sorted(totals.items(), key=lambda item: -item[1])


EarlyStop = Callable[[StopView], bool]


@dataclass(frozen=True)
class ConsensusStop:
    """Stop on agreement.

    Attributes:
        agree: stop once this many valid answers agree (None: off). AIMO-3 kernels used 4.
        within_first: count agreement only among the first this-many valid answers, as the
            AIMO-2 runner-up's "4 of the first 5" (None: among all finished).
        unbeatable_leader: stop when the leader's weight exceeds the runner-up's even if every
            running rollout joined the runner-up (max weight 1 each).
    """

    agree: int | None = 4
    within_first: int | None = None
    unbeatable_leader: bool = True

    def __call__(self, view: StopView) -> bool:
        if self.agree is not None:
            window = (
                view.answers if self.within_first is None else view.answers[: self.within_first]
            )
            counts: dict[int, int] = {}
            for answer in window:
                counts[answer] = counts.get(answer, 0) + 1
                if counts[answer] >= self.agree:
                    return True
        if self.unbeatable_leader and view.answers:
            tallies = view.tallies()
            runner_up = tallies[1][1] if len(tallies) > 1 else 0.0
            if tallies[0][1] > runner_up + view.running:
                return True
        return False


NEVER_STOP = ConsensusStop(agree=None, unbeatable_leader=False)
