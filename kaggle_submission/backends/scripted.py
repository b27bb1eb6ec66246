"""A backend whose text and latency come from Python functions.

For scheduling tests and benchmarks only (barrier against no barrier, deadline margins, fault
injection): it never stands in for a real model in a test of the model path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .base import Backend, Completion, GenerationRequest, apply_stop

Script = Callable[[GenerationRequest], str]
Latency = Callable[[GenerationRequest], float]


def tir_script(expression: str = "6 * 7", answer: int = 42) -> Script:
    """A well-behaved TIR solution: one code block, then the boxed result."""

    def script(request: GenerationRequest) -> str:
        if "```output" not in request.prompt:
            return f"We compute it.\n```python\nprint({expression})\n```\n```output"
        return f"\nSo the answer is $\\boxed{{{answer}}}$."

    return script


class ScriptedBackend(Backend):
    """Answers each request with `script(request)` after `latency(request)` seconds."""

    name = "scripted"

    def __init__(
        self,
        script: Script | None = None,
        latency: float | Latency = 0.0,
    ) -> None:
        self.script = script or tir_script()
        self.latency: Latency = latency if callable(latency) else (lambda _r: float(latency))
        self.calls = 0
        self.cancelled = 0

    async def generate(self, request: GenerationRequest) -> Completion:
        start = time.monotonic()
        self.calls += 1
        try:
            delay = self.latency(request)
            if delay > 0:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        text, stop = apply_stop(self.script(request), request.params.stop)
        return Completion(
            request_id=request.request_id,
            text=text,
            finish_reason="stop" if stop else "eos",
            stop=stop,
            prompt_tokens=len(request.prompt.split()),
            completion_tokens=len(text.split()),
            seconds=time.monotonic() - start,
        )

    async def aclose(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "script": getattr(self.script, "__qualname__", "?")}
