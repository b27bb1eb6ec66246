"""Engine configuration: frozen dataclasses, overridable field by field.

Defaults are the AIMO-1 winner's SC-TIR settings (N=48, M=4, temperature 0.8, top_p 1, 2048 new
tokens per round). The stop strings and the four rollout rules default to the model protocol's
(`protocols`: the winner's for numina); each is still a switch, so dry runs can compare variants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .protocols import RULE_NAMES, Protocol, RolloutRules
from .stopping import ConsensusStop

T = TypeVar("T")

CONFIDENCE_MODES: tuple[str, ...] = ("none", "entropy")


@dataclass(frozen=True)
class EngineConfig:
    """How one problem is solved.

    Attributes:
        num_rollouts: N, sampled solutions per problem.
        max_calls: M, generation calls per rollout (the winner's rounds); restarts use them too.
        temperature, top_p, max_tokens_per_call: sampling per call.
        stop: stop strings where generation pauses for code (kept in the text); None: the
            protocol's ("```output" for numina, "</tool_call>" for openmath-tir, none for
            chat-cot).
        seed: base seed; rollout r's call c uses a seed derived from (seed, r, c).
        restart_without_code: an attempt that wrote no code starts over from the prompt (the
            winner's rule). None, like the three below: the protocol's default
            (`Protocol.rules`: all on for numina; off for openmath-tir and chat-cot).
        prune_unexecuted: an answer given before any code ran is dropped as hallucinated.
        answer_ends_rollout: a boxed answer retires the rollout even if it also asked to run
            code; off, the code runs and the rollout goes on.
        restart_unfinished: an attempt that ended neither at the stop string nor with an answer
            (ran out of tokens, or ended without a box) starts over.
        max_tokens_per_rollout: the tokens a rollout may generate across all its calls,
            restarts included (a long-reasoning budget, e.g. 16k-32k); each call asks for
            min(max_tokens_per_call, what is left), and a rollout that spends it all ends
            "unfinished": no error, and its answer never counts. None: no budget.
        stop_at_first_answer: the rollout's answer is the FIRST \\boxed{} of the protocol's
            answer region (after `</think>` when present) and the rollout ends there: it is
            retired at the end of the call that wrote that box, and whatever that call
            generated past the box is left out of the answer (a later box cannot replace it).
        execute_code: off, every code block gets an empty output without running: an ablation
            that measures what execution adds.
        round_barrier: make every rollout wait for the slowest at each call, as the winner's
            batched loop did; only for comparison, it wastes time.
        error_code_weight: vote weight of an answer whose rollout hit a code error (answers
            from rollouts whose code all ran cleanly weigh 1). In (0, 1], so that no answer
            outweighs 1 and the early-stop bound holds.
        confidence: "none" (each answer weighs 1 times error_code_weight) or "entropy": the
            backend returns each generated token's top-`confidence_top_k` log-probabilities,
            each token's entropy is taken over its renormalised top k, and an answer's weight
            is multiplied by exp(-mean entropy) over its final attempt's tokens, in [1/k, 1]
            (traces.confidence_weight), as AIMO-3's top kernels weighted votes. The vote and
            the early-stop rule use the weights; traces keep the plain tally beside them.
        confidence_top_k: k of the top-k log-probabilities asked for with confidence "entropy".
        early_stop: consensus rule (None: never stop early).
        drain_seconds: after cancelling at the deadline, how long to wait for in-flight work to
            acknowledge before returning.
        silence_timeout_s: requests in flight and no progress (tokens where the backend counts
            them, else completions) for this long means the engine is dead: the problem ends
            with what finished and the kernel rebuilds the engine. Without a token count it
            must exceed the slowest legitimate call (max_tokens_per_call at the slowest
            per-rollout rate: ~200 s for 2048 tokens at 10 tokens/s on 2xT4). None: off.
        hang_grace_s: the Solver's watchdog gives up this long after the deadline when the
            engine has not returned. Draining after cancellation takes under a second
            (bench/bench_drain.py, N=48 with live sandboxes, a loaded 2-core machine: median
            0.37 s, p95 0.55 s, max 0.88 s); the default is ~10x that max, since a false
            alarm costs a finished vote and a rebuild while a true hang costs only the grace. The
            kernel uses max(hang_grace_s, budget.margin_s): the budget's margin is how late the
            engine is expected to return, the grace how late it may be before it counts as hung.
    """

    num_rollouts: int = 48
    max_calls: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens_per_call: int = 2048
    stop: tuple[str, ...] | None = None
    seed: int = 0
    restart_without_code: bool | None = None
    prune_unexecuted: bool | None = None
    answer_ends_rollout: bool | None = None
    restart_unfinished: bool | None = None
    max_tokens_per_rollout: int | None = None
    stop_at_first_answer: bool = False
    execute_code: bool = True
    round_barrier: bool = False
    error_code_weight: float = 1.0
    confidence: str = "none"
    confidence_top_k: int = 5
    early_stop: ConsensusStop | None = field(default_factory=ConsensusStop)
    drain_seconds: float = 0.05
    silence_timeout_s: float | None = 300.0
    hang_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.num_rollouts < 1 or self.max_calls < 1 or self.max_tokens_per_call < 1:
            raise ValueError("num_rollouts, max_calls and max_tokens_per_call must be >= 1")
        if not 0 < self.error_code_weight <= 1:
            raise ValueError("error_code_weight must be in (0, 1]")
        if self.confidence not in CONFIDENCE_MODES:
            raise ValueError(
                f"confidence must be one of {CONFIDENCE_MODES}, not {self.confidence!r}"
            )
        if self.confidence_top_k < 2:
            raise ValueError("confidence_top_k must be >= 2 (one token's entropy is always 0)")
        if self.max_tokens_per_rollout is not None and self.max_tokens_per_rollout < 1:
            raise ValueError("max_tokens_per_rollout must be >= 1 (None: no budget)")
        if self.stop is not None and not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))  # from JSON: a list
        if self.silence_timeout_s is not None and self.silence_timeout_s <= 0:
            raise ValueError("silence_timeout_s must be positive (None turns it off)")
        if self.hang_grace_s < 0:
            raise ValueError("hang_grace_s must be >= 0")

    def rules_for(self, protocol: Protocol | RolloutRules) -> RolloutRules:
        """The rollout rules in force: each field set here, else the protocol's default."""
        default = protocol if isinstance(protocol, RolloutRules) else protocol.rules
        own = {name: getattr(self, name) for name in RULE_NAMES}
        return RolloutRules(
            **{
                name: getattr(default, name) if value is None else value
                for name, value in own.items()
            }
        )

    def stop_for(self, protocol: Protocol) -> tuple[str, ...]:
        """The stop strings in force: the ones set here, else the protocol's."""
        return protocol.stop if self.stop is None else self.stop


@dataclass(frozen=True)
class RecoveryConfig:
    """How the kernel recovers a dead engine, paid from the run's time budget.

    Attributes:
        min_share_s: a rebuild is paid only if afterwards every problem left (this one
            excluded) still gets this much on average; otherwise it is skipped and the rest
            are answered with the fallback at once (an engine that cannot be used is not
            worth its load time).
        build_estimate_s: what a rebuild costs; None: the measured build of the first engine.
        close_timeout_s: how long the old engine gets to shut down cleanly before its
            processes are killed (the new one is built only after that).
        max_rebuilds: rebuild attempts in a run, failed ones included: an engine that keeps
            dying is not cured by rebuilding it, and every attempt costs a model load.
    """

    min_share_s: float = 10.0
    build_estimate_s: float | None = None
    close_timeout_s: float = 30.0
    max_rebuilds: int = 3

    def __post_init__(self) -> None:
        if self.min_share_s < 0 or self.close_timeout_s <= 0:
            raise ValueError("min_share_s must be >= 0 and close_timeout_s positive")


def override(obj: T, **changes: Any) -> T:
    """A copy of a frozen config with fields replaced; unknown names raise a clear error."""
    names = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - names)
    if unknown:
        kind = type(obj).__name__
        raise ValueError(f"{kind} has no field(s) {unknown}; known: {sorted(names)}")
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return dataclasses.asdict(obj)
