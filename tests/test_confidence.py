"""Confidence-weighted votes: top-k token entropy -> rollout weight -> vote, early stop, report.

The maths is checked on hand-computed values, the transformers backend on the tiny model (its
vectorised entropy must equal the pure one), and the engine with a scripted backend whose
completions carry chosen entropies: a confident minority must beat an unconfident majority
exactly when `confidence="entropy"`. The vLLM engine's logprobs are checked in
tests/test_vllm_backend.py (slow: it starts an engine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kaggle_submission.backends.base import (
    Completion,
    GenerationRequest,
    SamplingParams,
    topk_entropy,
)
from kaggle_submission.backends.scripted import ScriptedBackend
from kaggle_submission.config import EngineConfig
from kaggle_submission.engine import solve_async
from kaggle_submission.offline.report import summarize, write_report
from kaggle_submission.sandbox import Sandbox, SandboxConfig
from kaggle_submission.stopping import ConsensusStop, StopView
from kaggle_submission.traces import (
    GenerationSegment,
    RolloutTrace,
    SolveTrace,
    VoteTrace,
    confidence_weight,
    rollout_confidence,
)

PROBLEM = "What is 6 * 7?"

# ---------------------------------------------------------------------------- the maths


def test_topk_entropy_renormalises_the_top_k() -> None:
    k = 5
    uniform = [math.log(0.01)] * k  # five equal tokens: renormalised to 1/5 each
    assert topk_entropy(uniform, k) == pytest.approx(math.log(k))
    assert topk_entropy([0.0, -50.0, -60.0], k) == pytest.approx(0.0, abs=1e-12)
    # two tokens at 0.3 and 0.1 of the whole distribution: renormalised to 3/4 and 1/4
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert topk_entropy([math.log(0.3), math.log(0.1)], k) == pytest.approx(expected)
    # vLLM adds the sampled token when it is outside the top k: only the k largest count
    assert topk_entropy([math.log(0.3), math.log(0.1), math.log(0.001)], 2) == pytest.approx(
        expected
    )
    assert topk_entropy([], k) == 0.0 and topk_entropy([-1.0], k) == 0.0
    assert topk_entropy([0.0, float("-inf")], k) == 0.0


def test_confidence_weight_is_exp_minus_mean_entropy_in_0_1() -> None:
    assert confidence_weight(0.0, 0) is None  # nothing measured
    assert confidence_weight(0.0, 10) == 1.0
    assert confidence_weight(2.0, 4) == pytest.approx(math.exp(-0.5))
    worst = confidence_weight(math.log(5) * 7, 7)  # every token at top-5's maximum entropy
    assert worst == pytest.approx(1 / 5)


def _generation(attempt: int, entropy_sum: float, tokens: int) -> GenerationSegment:
    return GenerationSegment(
        0, attempt, "", "stop", None, 0, tokens, 0.0, 0.0, None, entropy_sum, tokens
    )


def test_rollout_confidence_uses_the_final_attempt_only() -> None:
    trace = RolloutTrace(0, segments=[_generation(0, 100.0, 10), _generation(1, 1.0, 4)])
    trace.segments.append(_generation(1, 1.0, 4))
    assert rollout_confidence(trace) == pytest.approx(math.exp(-2.0 / 8))
    assert rollout_confidence(RolloutTrace(1)) is None
    assert rollout_confidence(RolloutTrace(2, segments=[_generation(0, 0.0, 0)])) is None


def test_sampling_params_and_engine_config_validate() -> None:
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=0)
    with pytest.raises(ValueError, match="confidence"):
        EngineConfig(confidence="vibes")
    with pytest.raises(ValueError, match="confidence_top_k"):
        EngineConfig(confidence="entropy", confidence_top_k=1)


def test_traces_keep_entropy_confidence_and_plain_tally(tmp_path: Path) -> None:
    rollout = RolloutTrace(0, "answered", 7, segments=[_generation(0, 3.0, 6)], confidence=0.6)
    vote = VoteTrace({7: 0.6}, 1, 1, 0.6, False, plain_counts={7: 1.0}, plain_answer=7)
    trace = SolveTrace("p", "?", "?", 7, "finished", 0.0, 1.0, None, {}, {}, vote, [rollout])
    back = SolveTrace.from_dict(json.loads(trace.to_json()))
    assert back == trace
    old = json.loads(trace.to_json())  # a record written before these fields existed
    for key in ("plain_counts", "plain_answer"):
        del old["vote"][key]
    del old["rollouts"][0]["confidence"]
    for key in ("entropy_sum", "entropy_tokens"):
        del old["rollouts"][0]["segments"][0][key]
    again = SolveTrace.from_dict(old)
    assert again.vote.plain_counts == {} and again.rollouts[0].confidence is None


# ---------------------------------------------------------------------------- transformers


def test_transformers_vectorised_entropy_matches_the_pure_one() -> None:
    torch = pytest.importorskip("torch")
    from kaggle_submission.backends.transformers_backend import _topk_entropies

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=gen) * 3
    ks = [5, 2, 50]
    got = _topk_entropies(torch, logits, ks)
    for row, k, value in zip(logits.log_softmax(-1).tolist(), ks, got, strict=True):
        assert value == pytest.approx(topk_entropy(row, k), rel=1e-5)


def test_transformers_backend_fills_entropy_when_asked(tiny_model_dir: Path) -> None:
    from kaggle_submission.backends import create_backend

    backend = create_backend("transformers", model=str(tiny_model_dir), device="cpu")

    async def both() -> tuple[Completion, Completion]:
        asked = GenerationRequest("a", "2 + 3 =", SamplingParams(max_tokens=12, seed=1, logprobs=5))
        plain = GenerationRequest("b", "2 + 3 =", SamplingParams(max_tokens=12, seed=1))
        return await asyncio.gather(backend.generate(asked), backend.generate(plain))

    try:
        asked, plain = asyncio.run(both())
    finally:
        backend.close()
    assert asked.error is None and asked.text == plain.text  # measuring changes no sampling
    assert asked.entropy_tokens == asked.completion_tokens > 0
    assert 0.0 < asked.entropy_sum <= math.log(5) * asked.entropy_tokens + 1e-6
    assert plain.entropy_tokens == 0 and plain.entropy_sum == 0.0


# ---------------------------------------------------------------------------- the engine

CODE = "We compute it.\n```python\nprint(6 * 7)\n```\n```output"


class EntropyBackend(ScriptedBackend):
    """Rollouts 0-2 answer 7 unsure (high entropy), rollouts 3-4 answer 42 sure (low)."""

    def __init__(self) -> None:
        super().__init__(self._script)
        self.asked: list[int | None] = []

    @staticmethod
    def _script(request: GenerationRequest) -> str:
        if "```output" not in request.prompt:
            return CODE
        return f"\nSo $\\boxed{{{7 if request.rollout < 3 else 42}}}$."

    async def generate(self, request: GenerationRequest) -> Completion:
        completion = await super().generate(request)
        self.asked.append(request.params.logprobs)
        if request.params.logprobs is None:
            return completion
        per_token = 1.5 if request.rollout < 3 else 0.05  # nats per token
        return dataclasses.replace(completion, entropy_sum=per_token * 10, entropy_tokens=10)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=2.0)) as box:
        yield box


def _solve(sandbox: Sandbox, **changes: object):
    backend = EntropyBackend()
    settings: dict[str, object] = {"num_rollouts": 5, "max_calls": 3, "early_stop": None}
    config = EngineConfig(**{**settings, **changes})  # type: ignore[arg-type]
    solution = asyncio.run(solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config))
    return solution, backend


def test_confident_minority_wins_only_with_entropy_weights(sandbox) -> None:
    plain, plain_backend = _solve(sandbox)
    assert plain.answer == 7 and plain.vote.counts == {7: 3.0, 42: 2.0}
    assert set(plain_backend.asked) == {None}  # no logprobs asked: nothing measured
    assert all(r.confidence is None for r in plain.trace.rollouts)

    weighted, backend = _solve(sandbox, confidence="entropy", confidence_top_k=4)
    assert set(backend.asked) == {4}
    assert weighted.answer == 42
    unsure, sure = math.exp(-1.5), math.exp(-0.05)
    assert weighted.vote.counts[7] == pytest.approx(3 * unsure)
    assert weighted.vote.counts[42] == pytest.approx(2 * sure)
    # the trace keeps the plain tally beside the weighted one, and each rollout's weight
    assert weighted.trace.vote.plain_counts == {7: 3.0, 42: 2.0}
    assert weighted.trace.vote.plain_answer == 7
    confidences = [r.confidence for r in weighted.trace.rollouts]
    assert confidences == pytest.approx([unsure] * 3 + [sure] * 2)
    segment = weighted.trace.rollouts[0].segments[0]
    assert isinstance(segment, GenerationSegment)
    assert (segment.entropy_sum, segment.entropy_tokens) == pytest.approx((15.0, 10))


def test_error_code_weight_multiplies_the_confidence(sandbox) -> None:
    solution, _ = _solve(sandbox, confidence="entropy", error_code_weight=0.5)
    assert solution.vote.counts[42] == pytest.approx(2 * math.exp(-0.05))  # clean code: x1


@dataclass(frozen=True)
class RecordingStop(ConsensusStop):
    """The default rule, remembering every view it was shown."""

    seen: list[StopView] = field(default_factory=list)

    def __call__(self, view: StopView) -> bool:
        self.seen.append(view)
        return False


def test_early_stop_rule_sees_the_weights(sandbox) -> None:
    for confidence, expected in (("none", {1.0}), ("entropy", {math.exp(-1.5), math.exp(-0.05)})):
        rule = RecordingStop()
        _solve(sandbox, confidence=confidence, early_stop=rule)
        assert rule.seen, "the rule was never asked"
        weights = {round(w, 9) for view in rule.seen for w in view.weights}
        assert weights == {round(w, 9) for w in expected}


# ---------------------------------------------------------------------------- the report


def test_report_compares_plain_and_weighted_votes(sandbox, tmp_path: Path) -> None:
    solution, _ = _solve(sandbox, confidence="entropy")
    trace = solution.trace
    summary = summarize([trace], {trace.problem_id: 42}, {"banner": "test"})
    votes = summary["votes"]
    assert votes["confidence_measured"] == 1
    assert (votes["plain_correct"], votes["weighted_correct"]) == (0, 1)
    assert votes["differ"] == [trace.problem_id]
    row = summary["per_problem"][0]
    assert (row["plain_answer"], row["weighted_answer"]) == (7, 42)
    report = write_report(summary, tmp_path).read_text()
    assert "## Plain and confidence-weighted votes" in report
    assert "| plain | 0/1 |" in report and "| confidence-weighted | 1/1 |" in report
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["votes"]["maj_at_n_weighted"] == 1.0

    # the same rollouts without measured entropy: both votes are the plain one
    plain, _ = _solve(sandbox)
    summary = summarize([plain.trace], {plain.trace.problem_id: 42}, {})
    assert summary["votes"]["confidence_measured"] == 0
    assert summary["votes"]["differ"] == []
    assert "No token entropy was measured" in write_report(summary, tmp_path / "p").read_text()
