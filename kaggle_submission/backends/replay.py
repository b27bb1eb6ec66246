"""Play back recorded completions from trace files.

Requests are matched by (problem, rollout, call): the same problem prompt, the same rollout index
and the same generation call as recorded. The engine still runs every code block for real, so
replay tests the whole rollout logic (rules, sandbox, vote, deadline) deterministically, and a
changed sandbox shows up as changed outputs in the new trace rather than as a miss.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..traces import GenerationSegment, SolveTrace, read_traces
from .base import Backend, Completion, GenerationRequest, problem_key


class ReplayBackend(Backend):
    """A backend that answers from recorded traces.

    Args:
        traces: trace files (JSONL) or records already read.
        latency: "none" answers at once; "recorded" sleeps each call's recorded seconds; a
            number scales the recorded seconds (0.1 = ten times faster).
        strict: a request with no recording raises KeyError instead of a finish_reason "error"
            completion.
    """

    name = "replay"

    def __init__(
        self,
        traces: Iterable[str | Path | SolveTrace],
        latency: str | float = "none",
        strict: bool = False,
    ) -> None:
        self.strict = strict
        self.scale = (
            {"none": 0.0, "recorded": 1.0}.get(latency)
            if isinstance(latency, str)
            else float(latency)
        )
        if self.scale is None:
            raise ValueError(f"latency must be 'none', 'recorded' or a number, not {latency!r}")
        self.recorded: dict[tuple[str, int, int], GenerationSegment] = {}
        self.sources: list[str] = []
        for item in traces:
            records = [item] if isinstance(item, SolveTrace) else list(read_traces(item))
            self.sources.append(str(item) if not isinstance(item, SolveTrace) else item.problem_id)
            for record in records:
                self.add(record)
        self.hits = 0
        self.misses = 0

    def add(self, record: SolveTrace) -> None:
        """Index one record's generations."""
        key = problem_key(record.prompt)
        for rollout in record.rollouts:
            for segment in rollout.segments:
                if isinstance(segment, GenerationSegment):
                    self.recorded[(key, rollout.index, segment.call)] = segment

    async def generate(self, request: GenerationRequest) -> Completion:
        start = time.monotonic()
        segment = self.recorded.get((request.problem_key, request.rollout, request.call))
        if segment is None:
            self.misses += 1
            message = (
                f"no recorded completion for rollout {request.rollout} call {request.call}"
                f" of problem {request.problem_key}"
            )
            if self.strict:
                raise KeyError(message)
            return Completion(request.request_id, "", "error", error=message)
        self.hits += 1
        if self.scale:
            await asyncio.sleep(segment.seconds * self.scale)
        return Completion(
            request_id=request.request_id,
            text=segment.text,
            finish_reason=segment.finish_reason,  # type: ignore[arg-type]
            stop=segment.stop,
            prompt_tokens=segment.prompt_tokens,
            completion_tokens=segment.completion_tokens,
            seconds=time.monotonic() - start,
            error=segment.error,
            entropy_sum=segment.entropy_sum,  # the recorded confidence replays with the text
            entropy_tokens=segment.entropy_tokens,
        )

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sources": self.sources, "recorded": len(self.recorded)}
