"""How many rollouts the GPUs can hold: the numbers behind N and the engine layout per preset.

Decoding is bound by memory, and on 2xT4 the fp16 KV cache of a 7B model without grouped-query
attention (0.49 MB per token) is what runs out first. This module estimates, from the model's
config and the hardware: KV bytes per token, weight bytes per GPU, cache tokens per GPU and per
engine, and how many rollouts of a given context length fit at once, for tensor parallel (one
engine over all GPUs) against one engine per GPU. Estimates to check against the KV cache size
vLLM logs at start-up (see the first-run checklist in the README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hardware import GIB, GPUS, parse_hardware  # the hardware table (memory per GPU)

# deepseek-math-7b-base, the NuminaMath-7B-TIR architecture (config.json of the published model).
NUMINAMATH_7B = {
    "num_hidden_layers": 30,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "vocab_size": 102400,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class ModelShape:
    """The parts of a model config that decide memory."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        heads = config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelShape:
        return cls.from_config(json.loads((Path(path) / "config.json").read_text()))

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def weight_bytes(self, bits: int | None, group_size: int = 128) -> int:
        """Linear layers at `bits` (None: fp16) with fp16 scales per group; embeddings fp16."""
        per_layer = 4 * self.hidden * self.hidden * self.kv_heads // self.heads
        per_layer += 2 * self.hidden * self.hidden * (self.heads - self.kv_heads) // self.heads
        per_layer += 3 * self.hidden * self.intermediate
        linear = self.layers * per_layer
        if bits is None:
            linear_bytes = linear * 2
        else:
            linear_bytes = linear * bits // 8 + (linear // group_size) * 2 * 2
        embeddings = self.vocab * self.hidden * 2 * (1 if self.tied else 2)
        return linear_bytes + embeddings


@dataclass(frozen=True)
class Capacity:
    """The estimate for one layout."""

    layout: str
    engines: int
    gpus_per_engine: int
    weights_per_gpu: float
    cache_bytes_per_gpu: float
    cache_tokens_per_engine: int
    rollouts_at: dict[int, int]


def estimate(
    shape: ModelShape,
    hardware: str,
    *,
    bits: int | None = 8,
    memory_fraction: float = 0.92,
    overhead_bytes: float = 1.2 * GIB,
    kv_dtype_bytes: int = 2,
    lengths: tuple[int, ...] = (1024, 2048, 4096),
) -> list[Capacity]:
    """Tensor parallel over all GPUs against one engine per GPU.

    overhead_bytes: per GPU, what is neither weights nor cache (activations, CUDA context,
    sampler buffers); about 1-1.5 GiB with eager mode on a 7B model.
    """
    gpu, count = parse_hardware(hardware)
    total = GPUS[gpu].memory_bytes
    weights = shape.weight_bytes(bits)
    kv = shape.kv_bytes_per_token(kv_dtype_bytes)
    layouts = [("tensor_parallel", 1, count)]
    if count > 1:
        layouts.append(("per_gpu", count, 1))
    results = []
    for layout, engines, per_engine in layouts:
        weights_per_gpu = weights / per_engine
        cache_per_gpu = max(0.0, total * memory_fraction - weights_per_gpu - overhead_bytes)
        tokens_per_engine = int(cache_per_gpu * per_engine / kv)
        results.append(
            Capacity(
                layout=layout,
                engines=engines,
                gpus_per_engine=per_engine,
                weights_per_gpu=weights_per_gpu,
                cache_bytes_per_gpu=cache_per_gpu,
                cache_tokens_per_engine=tokens_per_engine,
                rollouts_at={n: engines * (tokens_per_engine // n) for n in lengths},
            )
        )
    return results


def report(preset_name: str, shape: ModelShape | None = None, bits: int | None = None) -> str:
    """A table for one preset (the model's shape from its manifest entry when not given)."""
    from ..presets import get_preset

    preset = get_preset(preset_name)
    if preset.hardware == "cpu":
        return f"{preset.name}: runs on CPU; no GPU capacity to estimate"
    shape = shape or ModelShape.from_config(NUMINAMATH_7B)
    quant = preset.backend_options.get("quantization")
    bits = bits if bits is not None else (8 if quant == "gptq" else None)
    fraction = float(preset.backend_options.get("gpu_memory_utilization", 0.9))
    rows = estimate(shape, preset.hardware, bits=bits, memory_fraction=fraction)
    n = preset.engine.num_rollouts
    weights = f"{bits}-bit" if bits else "fp16"
    lines = [
        f"{preset.name} ({preset.hardware}, weights {weights}, "
        f"memory fraction {fraction}): KV cache {shape.kv_bytes_per_token() / 1e6:.3f} MB/token, "
        f"weights {shape.weight_bytes(bits) / GIB:.2f} GiB, N={n}",
        f"{'layout':16s} {'engines':>7s} {'weights/GPU':>12s} {'cache/GPU':>10s} "
        f"{'tokens/engine':>14s}  rollouts that fit at 1k / 2k / 4k tokens",
    ]
    for c in rows:
        fits = " / ".join(str(c.rollouts_at[k]) for k in sorted(c.rollouts_at))
        lines.append(
            f"{c.layout:16s} {c.engines:7d} {c.weights_per_gpu / GIB:10.2f} G "
            f"{c.cache_bytes_per_gpu / GIB:8.2f} G {c.cache_tokens_per_engine:14d}  {fits}"
        )
    return "\n".join(lines)
