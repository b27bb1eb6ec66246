"""Decoding throughput as a function of concurrent rollouts: time on hardware not recorded on.

A table maps concurrency c (generation calls in flight) to aggregate tokens per second tps(c);
each rollout then decodes at tps(c) / c. Between table points the table is interpolated linearly;
below its first point a rollout is assumed no faster than there (per-rollout speed constant);
above its last point the aggregate is assumed saturated (tps constant), both conservative.

Where a table comes from, best first:
1. `fit_table`: measured from traces recorded on the target GPU (tokens / seconds of each call
   against the calls in flight meanwhile). Record a dry run there with a few N values.
2. `roofline_table`: an ASSUMPTION for hardware nobody has measured yet (the 2xT4 default).
   Decoding reads the weights and every in-flight KV cache once per step, so a step takes
   (weights + c x context x KV bytes per token) / (bandwidth x efficiency) + fixed overhead,
   split over the GPUs of a tensor-parallel engine. Weight and KV sizes come from capacity.py
   (NuminaMath-7B, 8-bit GPTQ: ~4 GB weights and 0.245 MB KV per token per T4 with TP=2);
   bandwidth is the data sheet's, efficiency 0.5 and 10 ms per step are guesses. Replace it with
   a measured table (README first-run checklist: tokens per second at N = 16, 32, 48).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...hardware import GPUS, parse_hardware
from ..capacity import NUMINAMATH_7B, ModelShape
from .recorded import Recorded


@dataclass(frozen=True)
class ThroughputTable:
    """Attributes:
    concurrency, tokens_per_s: the table (aggregate decode tokens/s at c calls in flight).
    call_overhead_s: fixed latency per generation call (scheduling, first token).
    prefill_tokens_per_s: speed of prefilling the new prompt tokens of a call (the appended
        code output; the shared problem prompt is cached); None ignores prefill.
    source: where the numbers come from ("roofline assumption ...", "fit from ...").
    """

    concurrency: tuple[float, ...]
    tokens_per_s: tuple[float, ...]
    call_overhead_s: float = 0.0
    prefill_tokens_per_s: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.concurrency) != len(self.tokens_per_s) or not self.concurrency:
            raise ValueError("throughput table: concurrency and tokens_per_s need equal lengths")
        if list(self.concurrency) != sorted(self.concurrency) or min(self.concurrency) < 1:
            raise ValueError("throughput table: concurrency must be increasing and >= 1")
        if min(self.tokens_per_s) <= 0:
            raise ValueError("throughput table: tokens_per_s must be positive")

    def tps(self, c: np.ndarray | float) -> np.ndarray:
        """Aggregate tokens/s at concurrency c (see the module docstring for extrapolation)."""
        c = np.maximum(np.asarray(c, float), 1.0)
        xs, ys = np.asarray(self.concurrency), np.asarray(self.tokens_per_s)
        inside = np.interp(c, xs, ys)
        below = ys[0] * c / xs[0]
        return np.where(c < xs[0], below, inside)

    def per_rollout(self, c: np.ndarray | float) -> np.ndarray:
        """Tokens/s of one rollout when c decode together."""
        c = np.maximum(np.asarray(c, float), 1.0)
        return self.tps(c) / c

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ThroughputTable:
        data = json.loads(Path(path).read_text())
        try:
            return cls(
                concurrency=tuple(float(c) for c in data["concurrency"]),
                tokens_per_s=tuple(float(t) for t in data["tokens_per_s"]),
                call_overhead_s=float(data.get("call_overhead_s", 0.0)),
                prefill_tokens_per_s=data.get("prefill_tokens_per_s"),
                source=str(data.get("source", path)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a throughput table ({exc})") from exc


def roofline_table(
    hardware: str,
    shape: ModelShape | None = None,
    bits: int | None = 8,
    tensor_parallel: bool = True,
    efficiency: float = 0.5,
    mean_context: int = 1024,
    step_overhead_s: float = 0.010,
    concurrency: Sequence[int] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96),
) -> ThroughputTable:
    """The bandwidth-bound estimate described in the module docstring (an assumption)."""
    gpu, count = parse_hardware(hardware)
    bandwidth = GPUS[gpu].bandwidth
    shape = shape or ModelShape.from_config(NUMINAMATH_7B)
    per_engine = count if tensor_parallel else 1
    engines = 1 if tensor_parallel else count
    weights = shape.weight_bytes(bits) / per_engine
    kv = shape.kv_bytes_per_token() / per_engine
    rates = []
    for c in concurrency:
        in_engine = max(1.0, c / engines)
        step = (weights + in_engine * mean_context * kv) / (
            bandwidth * efficiency
        ) + step_overhead_s
        rates.append(engines * in_engine / step)
    return ThroughputTable(
        concurrency=tuple(float(c) for c in concurrency),
        tokens_per_s=tuple(rates),
        call_overhead_s=0.05,
        prefill_tokens_per_s=2000.0 * bandwidth / GPUS["t4"].bandwidth,
        source=(
            f"roofline ASSUMPTION for {hardware}: {bandwidth / 1e9:.0f} GB/s x {efficiency}"
            f" efficiency, {mean_context}-token contexts, {step_overhead_s * 1e3:.0f} ms/step, "
            f"weights {shape.weight_bytes(bits) / 1e9:.1f} GB and KV "
            f"{shape.kv_bytes_per_token() / 1e6:.2f} MB/token from capacity.py; replace with a "
            "table measured on the target GPU"
        ),
    )


def fit_table(recorded: Recorded, min_calls: int = 3) -> ThroughputTable:
    """tps(c) measured from recorded calls: each call's tokens/s against the time-averaged
    number of calls of its problem in flight meanwhile, binned to the nearest integer; a bin's
    aggregate rate is c x (its tokens / its seconds). Only meaningful for traces recorded on
    the hardware being tuned for, with several N values to cover the concurrencies used."""
    bins: dict[int, list[float]] = {}
    for p in range(recorded.num_problems):
        mask = recorded.has_call[p] & (recorded.gen_seconds[p] > 0)
        start = recorded.gen_start[p][mask]
        seconds = recorded.gen_seconds[p][mask]
        tokens = recorded.tokens[p][mask]
        if start.size == 0:
            continue
        stop = start + seconds
        overlap = np.clip(
            np.minimum(stop[:, None], stop[None, :]) - np.maximum(start[:, None], start[None, :]),
            0.0,
            None,
        )
        in_flight = overlap.sum(axis=1) / seconds
        for c, tok, sec in zip(np.rint(in_flight).astype(int), tokens, seconds, strict=True):
            acc = bins.setdefault(max(1, int(c)), [0.0, 0.0, 0])
            acc[0] += tok
            acc[1] += sec
            acc[2] += 1
    rows = sorted((c, c * tok / sec) for c, (tok, sec, n) in bins.items() if n >= min_calls and tok)
    if not rows:
        raise ValueError("too few recorded calls with tokens to fit a throughput table")
    return ThroughputTable(
        concurrency=tuple(float(c) for c, _ in rows),
        tokens_per_s=tuple(t for _, t in rows),
        source=f"fit from {recorded.num_problems} recorded problems",
    )
