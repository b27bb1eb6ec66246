"""The trace schema: one JSONL record per solved problem, written by the engine.

Dry-run reports, the replay backend and the budget tuner all read these records, so the schema
lives here only. A record (schema version 1) is a `SolveTrace` as JSON:

- problem_id, problem, prompt (the first prompt of every rollout), answer (int, always set),
  stop_reason ("finished" | "early_stop" | "deadline" | "error" | "prompt_too_long"),
  error (str | None)
- started_at (UNIX time), budget_s (deadline minus start, None without deadline), seconds (wall)
- config (the engine config as a dict), backend (what the backend says of itself)
- t_serving_s, t_engine_ready_s: the run's start-up, the same on every record of a run (None
  outside a served run): seconds from the run cell's start to "server accepting calls" and to
  "engine ready" (`kernel.BackgroundStart`; `TraceWriter.startup` stamps them on each record)
- vote: counts (answer -> weight, keys as strings in JSON), n_valid, n_total, margin,
  used_fallback, plain_counts (answer -> number of votes: the same answers unweighted),
  plain_answer (the plain majority's winner; None in records written before it existed)
- rollouts: list of RolloutTrace:
  index, status ("answered" | "pruned" | "no_answer" | "exhausted" | "unfinished" |
  "cancelled" | "error": "exhausted" used every call, "unfinished" spent its token budget,
  max_tokens_per_rollout; only "answered" counts in the vote),
  answer (int | None), restarts, executed (blocks run), code_errors, seconds, segments,
  error (what the backend raised, when status is "error"), confidence (exp(-mean top-k
  token entropy) over the final attempt's generations, in (0, 1]; None when no entropy was
  measured: `rollout_confidence`)
- segments: in order, each either a generation
  {"kind": "generation", "call", "attempt", "text", "finish_reason", "stop", "prompt_tokens",
  "completion_tokens", "started", "seconds", "error", "entropy_sum", "entropy_tokens"}
  or an execution
  {"kind": "execution", "call", "attempt", "code", "output", "appended", "ok", "timed_out",
  "reset", "started", "seconds", "queued_seconds"}
  where `started` is seconds since the solve began and `appended` is the exact text added to the
  context after the kept stop string.

A rollout's context is its prompt followed by, for the current attempt, each generation's text
and each execution's `appended` text; a restart begins a new attempt from the prompt.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1

RolloutStatus = Literal[
    "answered", "pruned", "no_answer", "exhausted", "unfinished", "cancelled", "error"
]
StopReason = Literal["finished", "early_stop", "deadline", "error", "prompt_too_long"]


@dataclass
class GenerationSegment:
    """One backend call of a rollout."""

    call: int
    attempt: int
    text: str
    finish_reason: str
    stop: str | None
    prompt_tokens: int
    completion_tokens: int
    started: float
    seconds: float
    error: str | None = None
    entropy_sum: float = 0.0  # summed top-k entropy of its tokens (backends/base.topk_entropy)
    entropy_tokens: int = 0  # tokens that sum covers (0: not measured)
    kind: Literal["generation"] = "generation"


@dataclass
class ExecutionSegment:
    """One code block run in the rollout's sandbox session."""

    call: int
    attempt: int
    code: str
    output: str
    appended: str
    ok: bool
    timed_out: bool
    reset: bool
    started: float
    seconds: float
    queued_seconds: float
    kind: Literal["execution"] = "execution"


Segment = GenerationSegment | ExecutionSegment


@dataclass
class RolloutTrace:
    """Everything one rollout did, in order."""

    index: int
    status: RolloutStatus = "cancelled"
    answer: int | None = None
    restarts: int = 0
    executed: int = 0
    code_errors: int = 0
    seconds: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    error: str | None = None
    confidence: float | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.segments if isinstance(s, GenerationSegment))


def confidence_weight(entropy_sum: float, entropy_tokens: int) -> float | None:
    """exp(-mean entropy): 1 for a model sure of every token, down to 1/k at top-k's maximum
    entropy log k; in (0, 1], so no answer outweighs 1 and the early-stop bound holds. None
    when no token was measured."""
    if entropy_tokens <= 0:
        return None
    return math.exp(-max(0.0, entropy_sum) / entropy_tokens)


def rollout_confidence(trace: RolloutTrace) -> float | None:
    """The rollout's confidence from the generations of its final attempt, the one its answer
    comes from (a restarted attempt's tokens say nothing about the answer); None when they
    carry no entropy."""
    generations = [s for s in trace.segments if isinstance(s, GenerationSegment)]
    if not generations:
        return None
    last = max(s.attempt for s in generations)
    final = [s for s in generations if s.attempt == last]
    return confidence_weight(
        math.fsum(s.entropy_sum for s in final), sum(s.entropy_tokens for s in final)
    )


@dataclass
class VoteTrace:
    """The vote as recorded (counts keyed by answer)."""

    counts: dict[int, float]
    n_valid: int
    n_total: int
    margin: float
    used_fallback: bool
    plain_counts: dict[int, float] = field(default_factory=dict)
    plain_answer: int | None = None


@dataclass
class SolveTrace:
    """One problem's record."""

    problem_id: str
    problem: str
    prompt: str
    answer: int
    stop_reason: StopReason
    started_at: float
    seconds: float
    budget_s: float | None
    config: dict[str, Any]
    backend: dict[str, Any]
    vote: VoteTrace
    rollouts: list[RolloutTrace]
    error: str | None = None
    t_serving_s: float | None = None
    t_engine_ready_s: float | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SolveTrace:
        """Rebuild a record; raises ValueError naming what is wrong."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"trace schema_version {version!r}, this kit reads {SCHEMA_VERSION}")
        try:
            vote = data["vote"]
            rollouts = [
                RolloutTrace(
                    **{k: v for k, v in r.items() if k != "segments"},
                    segments=[_segment(s) for s in r["segments"]],
                )
                for r in data["rollouts"]
            ]
            return cls(
                **{k: v for k, v in data.items() if k not in ("vote", "rollouts")},
                vote=VoteTrace(
                    **{
                        **vote,
                        "counts": {int(k): v for k, v in vote["counts"].items()},
                        "plain_counts": {
                            int(k): v for k, v in vote.get("plain_counts", {}).items()
                        },
                    }
                ),
                rollouts=rollouts,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed trace record: {exc}") from exc


def _segment(data: dict[str, Any]) -> Segment:
    kind = data.get("kind")
    if kind == "generation":
        return GenerationSegment(**data)
    if kind == "execution":
        return ExecutionSegment(**data)
    raise ValueError(f"unknown segment kind {kind!r}")


class TraceWriter:
    """Appends records to a JSONL file; safe from several threads, flushed per record.

    `startup` holds run-level fields (t_serving_s, t_engine_ready_s) set on every record
    written: the engine that writes a record does not know how the run started.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.startup: dict[str, float | None] = {}

    def write(self, trace: SolveTrace) -> None:
        for name, value in self.startup.items():
            setattr(trace, name, value)
        line = trace.to_json() + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)


def read_traces(path: str | Path) -> Iterator[SolveTrace]:
    """Yield the records of a JSONL trace file; errors name the file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield SolveTrace.from_dict(json.loads(line))
            except (ValueError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from exc
