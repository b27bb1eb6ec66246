"""The SC-TIR engine on replayed, scripted and real (tiny transformers) backends."""

from __future__ import annotations

import asyncio
import json
import random
import time

import psutil
import pytest

from kaggle_submission.answers import AIMO1_POLICY
from kaggle_submission.backends.base import Backend, Completion, GenerationRequest, apply_stop
from kaggle_submission.backends.replay import ReplayBackend
from kaggle_submission.backends.scripted import ScriptedBackend, tir_script
from kaggle_submission.config import EngineConfig, override
from kaggle_submission.engine import Solver, solve_async
from kaggle_submission.prompts import format_prompt
from kaggle_submission.protocols import NUMINA, ChatCoTProtocol, OpenMathTIRProtocol
from kaggle_submission.sandbox import Sandbox, SandboxConfig
from kaggle_submission.stopping import NEVER_STOP, ConsensusStop
from kaggle_submission.traces import (
    GenerationSegment,
    RolloutTrace,
    SolveTrace,
    TraceWriter,
    VoteTrace,
    read_traces,
)

PROBLEM = "What is six times seven?"
OUT = "```output"


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=2.0)) as box:
        yield box


def recorded(problem: str, rollouts: list[list[tuple[str, str] | str]], seconds=0.0) -> SolveTrace:
    """A hand-written trace: per rollout, its generation texts in call order.

    A bare string ending with the output fence finished on the stop string, any other bare
    string at end of sequence; a (text, finish_reason) pair says it explicitly.
    """
    traces = []
    for index, calls in enumerate(rollouts):
        segments = []
        for call, item in enumerate(calls):
            text, reason = item if isinstance(item, tuple) else (item, None)
            reason = reason or ("stop" if text.endswith(OUT) else "eos")
            segments.append(
                GenerationSegment(
                    call=call,
                    attempt=0,
                    text=text,
                    finish_reason=reason,
                    stop=OUT if reason == "stop" else None,
                    prompt_tokens=10,
                    completion_tokens=len(text.split()),
                    started=0.0,
                    seconds=seconds,
                )
            )
        traces.append(RolloutTrace(index=index, segments=segments))
    return SolveTrace(
        problem_id="p",
        problem=problem,
        prompt=format_prompt(problem),
        answer=0,
        stop_reason="finished",
        started_at=0.0,
        seconds=0.0,
        budget_s=None,
        config={},
        backend={},
        vote=VoteTrace(counts={}, n_valid=0, n_total=len(rollouts), margin=0.0, used_fallback=True),
        rollouts=traces,
    )


CODE_42 = f"Multiply.\n```python\nprint(6*7)\n```\n{OUT}"
CODE_ERR = f"Try.\n```python\nprint(1/0)\n```\n{OUT}"
CODE_STATE = f"Define.\n```python\nx = 6*7\n```\n{OUT}"
USE_STATE = f"\nUse it.\n```python\nprint(x)\n```\n{OUT}"

# Each case: rollouts' recorded generations, config changes, and the expected
# (statuses, answers, restarts, executed) per rollout and the voted answer.
RULE_CASES = [
    pytest.param(
        [[CODE_42, "\nSo $\\boxed{42}$."]],
        {},
        [("answered", 42, 0, 1)],
        42,
        id="code-then-answer",
    ),
    pytest.param(
        [["It is \\boxed{41}.", CODE_42, "\n\\boxed{42}"]],
        {},
        [("answered", 42, 1, 1)],
        42,
        id="no-code-restarts",
    ),
    pytest.param(
        [["It is \\boxed{41}."]],
        {"restart_without_code": False},
        [("pruned", None, 0, 0)],
        0,
        id="no-code-kept-then-pruned",
    ),
    pytest.param(
        [["It is \\boxed{41}."]],
        {"restart_without_code": False, "prune_unexecuted": False},
        [("answered", 41, 0, 0)],
        41,
        id="unexecuted-answer-kept",
    ),
    pytest.param(
        [["```python\nprint(2)\n```\nThe answer is \\boxed{7}."]],
        {},
        [("pruned", None, 0, 0)],
        0,
        id="answer-before-execution-pruned",
    ),
    pytest.param(
        [[("```python\nwhile True:", "length"), CODE_42, "\n\\boxed{42}"]],
        {},
        [("answered", 42, 1, 1)],
        42,
        id="length-restarts",
    ),
    pytest.param(
        [[("```python\nwhile True:", "length")]],
        {"restart_unfinished": False},
        [("no_answer", None, 0, 0)],
        0,
        id="length-ends-without-restart",
    ),
    pytest.param(
        [[CODE_42, "\nNo box here.", CODE_42, "\n\\boxed{42}"]],
        {"max_calls": 3},
        [("exhausted", None, 1, 2)],
        0,
        id="calls-exhausted",
    ),
    pytest.param(
        [[CODE_STATE, USE_STATE, "\n\\boxed{42}"]],
        {},
        [("answered", 42, 0, 2)],
        42,
        id="state-persists",
    ),
    pytest.param(
        [[f"\\boxed{{5}} but check:\n```python\nprint(5)\n```\n{OUT}", "\n\\boxed{6}"]],
        {"answer_ends_rollout": False, "prune_unexecuted": False},
        [("answered", 6, 0, 1)],
        6,
        id="answer-with-code-continues",
    ),
    pytest.param(
        [
            [CODE_ERR, "\n\\boxed{7}"],
            [CODE_ERR, "\n\\boxed{7}"],
            [CODE_42, "\n\\boxed{42}"],
        ],
        {"error_code_weight": 0.4},
        [("answered", 7, 0, 1), ("answered", 7, 0, 1), ("answered", 42, 0, 1)],
        42,
        id="error-weight-flips-vote",
    ),
    pytest.param(
        [[CODE_42, "\n\\boxed{1042}"]],
        {},
        [("answered", 42, 0, 1)],
        42,
        id="aimo1-reduces-mod-1000",
    ),
    pytest.param(
        [[CODE_42, "\n\\boxed{-42}"]],
        {},
        [("no_answer", None, 0, 1)],
        0,
        id="negative-is-no-answer",
    ),
]


@pytest.mark.parametrize(("rollouts", "changes", "expected", "answer"), RULE_CASES)
def test_rollout_rules_on_replay(sandbox, rollouts, changes, expected, answer):
    config = override(EngineConfig(num_rollouts=len(rollouts), early_stop=NEVER_STOP), **changes)
    backend = ReplayBackend([recorded(PROBLEM, rollouts)], strict=True)
    solution = asyncio.run(
        solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config, policy=AIMO1_POLICY)
    )
    got = [(r.status, r.answer, r.restarts, r.executed) for r in solution.trace.rollouts]
    assert got == expected
    assert solution.answer == answer
    assert solution.stop_reason == "finished"


def test_vote_counts_and_output_blocks_exact(sandbox):
    rollouts = [[CODE_42, "\n\\boxed{42}"]] * 3 + [[CODE_ERR, "\n\\boxed{7}"]] * 2
    backend = ReplayBackend([recorded(PROBLEM, rollouts)], strict=True)
    config = EngineConfig(num_rollouts=5, early_stop=NEVER_STOP)
    solution = asyncio.run(solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config))
    assert solution.answer == 42
    assert solution.vote.counts == {42: 3.0, 7: 2.0}
    execution = solution.trace.rollouts[0].segments[1]
    assert execution.kind == "execution"
    assert execution.appended == "\n42\n```"
    error = solution.trace.rollouts[3].segments[1]
    assert not error.ok
    assert error.output == (
        "Traceback (most recent call last):\n"
        '  File "<code>", line 1, in <module>\n'
        "    print(1/0)\n"
        "ZeroDivisionError: division by zero\n"
    )
    assert solution.trace.rollouts[3].code_errors == 1


def segment_texts(solution) -> list[list[str]]:
    return [
        [getattr(s, "text", None) or getattr(s, "output", "") for s in r.segments]
        for r in solution.trace.rollouts
    ]


def test_replay_reproduces_a_recorded_run(sandbox, tmp_path):
    """A run recorded from one backend replays to the same texts, answers and vote."""
    rng = random.Random(0)

    def script(request: GenerationRequest) -> str:
        value = rng.choice([6, 7])
        if OUT not in request.prompt:
            return f"Go.\n```python\nprint({value} * 6)\n```\n{OUT}"
        return f"\n\\boxed{{{request.prompt.rsplit(OUT, 1)[1].split()[0]}}}"

    config = EngineConfig(num_rollouts=8, max_calls=3, early_stop=NEVER_STOP)
    path = tmp_path / "traces.jsonl"
    with Solver(ScriptedBackend(script), sandbox, config, trace_writer=TraceWriter(path)) as s:
        first = s.solve(PROBLEM, problem_id="q1")
    with Solver(ReplayBackend([path], strict=True), sandbox, config) as s:
        second = s.solve(PROBLEM, problem_id="q1")
    assert second.answer == first.answer
    assert second.vote.counts == first.vote.counts
    assert segment_texts(second) == segment_texts(first)
    (record,) = list(read_traces(path))
    assert record.to_json() == first.trace.to_json()
    assert json.loads(record.to_json())["schema_version"] == 1


def test_deadline_cancels_in_flight_work(sandbox):
    """Slow recorded calls past the deadline are cancelled; the fast rollouts' vote stands."""
    fast = recorded(PROBLEM, [[CODE_42, "\n\\boxed{42}"]] * 2)
    slow = recorded(PROBLEM, [[CODE_42, "\n\\boxed{7}"]] * 4, seconds=30.0)
    for r in slow.rollouts:
        r.index += 2
    backend = ReplayBackend([fast, slow], latency="recorded", strict=True)
    config = EngineConfig(num_rollouts=6, early_stop=NEVER_STOP)
    start = time.monotonic()
    solution = asyncio.run(
        solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config, deadline=start + 1.0)
    )
    overrun = time.monotonic() - (start + 1.0)
    assert solution.stop_reason == "deadline"
    assert solution.answer == 42
    statuses = [r.status for r in solution.trace.rollouts]
    assert statuses == ["answered"] * 2 + ["cancelled"] * 4
    # The bound it means: the vote did not wait for the 30 s calls. How late the return is (the
    # drain) is a timing: `python bench/bench_drain.py`.
    assert overrun < 15.0, f"returned {overrun:.3f} s after the deadline"


def test_deadline_during_code_execution(sandbox):
    """A rollout stuck in its code block does not hold the answer past the deadline."""
    hang = f"Loop.\n```python\nimport time\ntime.sleep(60)\n```\n{OUT}"
    backend = ReplayBackend([recorded(PROBLEM, [[hang, "\\boxed{1}"], [CODE_42, "\\boxed{42}"]])])
    config = EngineConfig(num_rollouts=2, early_stop=NEVER_STOP)
    start = time.monotonic()
    solution = asyncio.run(
        solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config, deadline=start + 1.0)
    )
    assert solution.answer == 42
    assert time.monotonic() - start < 30.0  # did not wait for the 60 s block (drain: bench/)


def test_early_stop_on_consensus(sandbox):
    latency = lambda r: 0.01 * (r.rollout + 1)  # noqa: E731
    backend = ScriptedBackend(tir_script(), latency=latency)
    config = EngineConfig(
        num_rollouts=16, early_stop=ConsensusStop(agree=4, unbeatable_leader=False)
    )
    solution = asyncio.run(solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config))
    assert solution.stop_reason == "early_stop"
    assert solution.answer == 42
    answered = [r for r in solution.trace.rollouts if r.status == "answered"]
    assert 4 <= len(answered) < 16
    assert solution.vote.counts[42] == len(answered)


class FailingBackend(ScriptedBackend):
    async def generate(self, request):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_backend_failure_still_answers(sandbox):
    config = EngineConfig(num_rollouts=4, early_stop=NEVER_STOP)
    solution = asyncio.run(
        solve_async(PROBLEM, backend=FailingBackend(), sandbox=sandbox, config=config)
    )
    assert solution.answer == AIMO1_POLICY.fallback
    assert solution.vote.used_fallback
    assert solution.stop_reason == "error"
    # a dead engine (a CUDA error escaping the backend) ends the problem at once
    assert solution.failure == "engine_dead"
    assert solution.error == "RuntimeError: CUDA error: an illegal memory access was encountered"
    statuses = {r.status for r in solution.trace.rollouts}
    assert "error" in statuses and statuses <= {"error", "cancelled"}


def test_no_round_barrier_follows_the_slowest_chain(sandbox):
    """Without a barrier the wall time is near the slowest rollout's own chain of calls."""

    # rollout 0 is slow on call 0, rollout 1 on call 1: a barrier pays both, no barrier one.
    def latency(request: GenerationRequest) -> float:
        return 0.6 if (request.rollout, request.call) in {(0, 0), (1, 1)} else 0.02

    walls = {}
    for barrier in (False, True):
        config = EngineConfig(num_rollouts=2, early_stop=NEVER_STOP, round_barrier=barrier)
        start = time.monotonic()
        solution = asyncio.run(
            solve_async(
                PROBLEM,
                backend=ScriptedBackend(tir_script(), latency=latency),
                sandbox=sandbox,
                config=config,
            )
        )
        walls[barrier] = time.monotonic() - start
        assert solution.answer == 42
    assert walls[False] < 1.0 <= walls[True]


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.mark.slow
def test_end_to_end_with_a_tiny_llama(tiny_model_dir, tmp_path):
    """The real model path: a random tiny Llama loaded from disk, N=4, M=2, a full trace."""
    from kaggle_submission.backends import create_backend

    before = _descendants()
    path = tmp_path / "t.jsonl"
    config = EngineConfig(
        num_rollouts=4, max_calls=2, max_tokens_per_call=24, temperature=1.0, early_stop=None
    )
    with Sandbox(SandboxConfig(timeout_s=2.0)) as box:
        backend = create_backend("transformers", model=str(tiny_model_dir))
        with Solver(backend, box, config, trace_writer=TraceWriter(path)) as solver:
            solution = solver.solve(PROBLEM, problem_id="tiny")
    assert 0 <= solution.answer <= 999
    (record,) = list(read_traces(path))
    assert record.backend["name"] == "transformers"
    assert len(record.rollouts) == 4
    generations = [s for r in record.rollouts for s in r.segments if s.kind == "generation"]
    assert len(generations) == 8  # the random model never boxes: every rollout uses both calls
    assert all(g.completion_tokens <= 24 for g in generations)
    assert record.prompt == format_prompt(PROBLEM)  # the kit's format: no prompt_format given
    deadline = time.monotonic() + 5
    while _descendants() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _descendants() - before == set()


class StallingBackend(ScriptedBackend):
    """Rollouts 0-1 answer at once (no code: no sandbox time for the silence watchdog to count);
    the others' requests stay in flight with no token."""

    def __init__(self) -> None:
        super().__init__(lambda request: "So the answer is $\\boxed{42}$.")

    async def generate(self, request):
        if request.rollout >= 2:
            await asyncio.Event().wait()
        return await super().generate(request)


def test_silent_engine_ends_the_solve_keeping_finished_votes(sandbox):
    config = EngineConfig(
        num_rollouts=4,
        early_stop=NEVER_STOP,
        silence_timeout_s=0.3,
        restart_without_code=False,
        prune_unexecuted=False,
    )
    deadline = time.monotonic() + 60.0
    solution = asyncio.run(
        solve_async(
            PROBLEM, backend=StallingBackend(), sandbox=sandbox, config=config, deadline=deadline
        )
    )
    assert solution.stop_reason == "error" and solution.failure == "engine_dead"
    assert "produced nothing" in (solution.error or "")
    assert solution.answer == 42 and solution.vote.counts == {42: 2.0}
    statuses = [r.status for r in solution.trace.rollouts]
    assert statuses == ["answered", "answered", "cancelled", "cancelled"]


class ContextFullBackend(ScriptedBackend):
    """The first attempt's second call finds the context full; the restart succeeds."""

    async def generate(self, request):
        if request.call == 1:
            return Completion.failed(
                request.request_id,
                "The decoder prompt (length 4097) is longer than the maximum model length of 4096.",
                time.perf_counter(),
                "context",
            )
        return await super().generate(request)


@pytest.mark.parametrize("restart", [True, False])
def test_full_context_ends_the_rollout_unfinished_not_as_an_error(sandbox, restart):
    config = EngineConfig(num_rollouts=2, early_stop=NEVER_STOP, restart_unfinished=restart)
    solution = asyncio.run(
        solve_async(PROBLEM, backend=ContextFullBackend(), sandbox=sandbox, config=config)
    )
    assert solution.stop_reason == "finished" and solution.failure is None
    for rollout in solution.trace.rollouts:
        full = rollout.segments[2]
        assert full.kind == "generation" and full.finish_reason == "length"
        if restart:  # call 2 restarts from the prompt, call 3 answers
            assert (rollout.status, rollout.restarts, rollout.answer) == ("answered", 1, 42)
        else:
            assert rollout.status == "no_answer"


def test_solver_hang_grace_comes_from_the_config(sandbox):
    config = EngineConfig(num_rollouts=1, hang_grace_s=7.5)
    with Solver(ScriptedBackend(), sandbox, config) as solver:
        assert solver.hang_grace_s == 7.5


# ------------------------------------------------------------------ protocols and long reasoning

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class WordBackend(Backend):
    """Generates `script(request)` word by word, honouring max_tokens (one word, one token) and
    the stop strings, so token budgets are exercised the way a real backend meets them."""

    name = "words"

    def __init__(self, script) -> None:
        self.script = script
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> Completion:
        self.requests.append(request)
        text, stop = apply_stop(self.script(request), request.params.stop)
        words = text.split(" ")
        reason = "stop" if stop else "eos"
        if len(words) > request.params.max_tokens:
            words, reason, stop = words[: request.params.max_tokens], "length", None
        return Completion(
            request.request_id,
            " ".join(words),
            reason,
            stop=stop,
            prompt_tokens=len(request.prompt.split(" ")),
            completion_tokens=len(words),
        )

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict:
        return {}


def _solve(sandbox, backend, config, protocol=NUMINA):
    return asyncio.run(
        solve_async(PROBLEM, backend=backend, sandbox=sandbox, config=config, protocol=protocol)
    )


LONG_ANSWER = "\nLet me think " + "hmm " * 30 + "so \\boxed{42}."


def _code_then_long_answer(request: GenerationRequest) -> str:
    return CODE_42 if OUT not in request.prompt else LONG_ANSWER


def test_token_budget_ends_the_rollout_unfinished_and_uncounted(sandbox):
    config = EngineConfig(num_rollouts=1, early_stop=NEVER_STOP, max_tokens_per_rollout=20)
    backend = WordBackend(_code_then_long_answer)
    solution = _solve(sandbox, backend, config)
    (rollout,) = solution.trace.rollouts
    first = rollout.segments[0]
    assert [r.params.max_tokens for r in backend.requests] == [20, 20 - first.completion_tokens]
    assert rollout.status == "unfinished" and rollout.answer is None and rollout.error is None
    assert rollout.restarts == 0  # numina restarts unfinished attempts, but the budget is spent
    assert solution.vote.used_fallback and solution.error is None
    assert solution.stop_reason == "finished"
    # the same rollout with room to finish answers
    roomy = _solve(
        sandbox, WordBackend(_code_then_long_answer), override(config, max_tokens_per_rollout=200)
    )
    assert roomy.trace.rollouts[0].status == "answered" and roomy.answer == 42


def test_token_budget_counts_restarts(sandbox):
    # numina restarts an attempt without code; the budget runs across attempts
    config = EngineConfig(num_rollouts=1, early_stop=NEVER_STOP, max_tokens_per_rollout=25)
    backend = WordBackend(lambda r: "I guess" + " so" * 9)  # 11 words, never code
    solution = _solve(sandbox, backend, config)
    (rollout,) = solution.trace.rollouts
    assert [r.params.max_tokens for r in backend.requests] == [25, 14, 3]
    assert (rollout.status, rollout.restarts) == ("unfinished", 2)


def test_stop_at_first_answer_takes_the_first_box_after_the_reasoning(sandbox):
    cot = ChatCoTProtocol(chat_template=CHATML)
    text = "<think>maybe \\boxed{7}</think>So \\boxed{42}, or rather \\boxed{43}."
    config = EngineConfig(num_rollouts=1, early_stop=NEVER_STOP)
    last = _solve(sandbox, WordBackend(lambda r: text), config, cot)
    first = _solve(
        sandbox, WordBackend(lambda r: text), override(config, stop_at_first_answer=True), cot
    )
    assert (last.answer, first.answer) == (43, 42)
    assert first.trace.rollouts[0].status == "answered"
    assert last.trace.prompt == cot.render(PROBLEM, 3)


def test_openmath_tir_rules_and_feed(sandbox):
    tir = OpenMathTIRProtocol(chat_template=CHATML)
    tool = "Compute.\n<tool_call>\n```python\nprint(6*7)\n```\n</tool_call>"

    def script(request: GenerationRequest) -> str:
        return tool if "```output" not in request.prompt else "\nSo \\boxed{42}."

    config = EngineConfig(num_rollouts=1, early_stop=NEVER_STOP, max_calls=4)
    backend = WordBackend(script)
    solution = _solve(sandbox, backend, config, tir)
    (rollout,) = solution.trace.rollouts
    assert (rollout.status, rollout.answer, rollout.executed) == ("answered", 42, 1)
    assert backend.requests[0].params.stop == ("</tool_call>",)
    prompt = tir.render(PROBLEM, 3)  # 4 generation calls: 3 code calls announced
    assert "up to 3 Python code calls" in prompt
    assert backend.requests[1].prompt == prompt + tool + tir.feed("42\n", 2)
    assert "Remaining code executions: 2." in backend.requests[1].prompt

    # an answer without any code counts under openmath-tir; numina restarts, then prunes
    plain = WordBackend(lambda r: "It is \\boxed{41}.")
    solo = _solve(sandbox, plain, EngineConfig(num_rollouts=1, early_stop=NEVER_STOP), tir)
    assert (solo.trace.rollouts[0].status, solo.answer, len(plain.requests)) == ("answered", 41, 1)
    numina = _solve(
        sandbox,
        WordBackend(lambda r: "It is \\boxed{41}."),
        EngineConfig(num_rollouts=1, early_stop=NEVER_STOP),
    )
    assert numina.trace.rollouts[0].status == "exhausted" and numina.trace.rollouts[0].restarts == 4
    # an explicit config switch still overrides the protocol's default
    strict = override(EngineConfig(num_rollouts=1, early_stop=NEVER_STOP), prune_unexecuted=True)
    pruned = _solve(sandbox, WordBackend(lambda r: "It is \\boxed{41}."), strict, tir)
    assert pruned.trace.rollouts[0].status == "pruned"
