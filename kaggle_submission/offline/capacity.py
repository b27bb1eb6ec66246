"""How many rollouts the GPUs can hold: the numbers behind N and the engine layout per preset.

Decoding is bound by memory, and on 2xT4 the fp16 KV cache of a 7B model without grouped-query
attention (0.49 MB per token) is what runs out first. This module estimates, from any model's
config.json (layers, KV heads, head size) and the hardware: KV bytes per token, weight bytes per
GPU, cache tokens per GPU and per engine, and how many rollouts of a given context length fit at
once, for tensor parallel (one engine over all GPUs) against one engine per GPU. The manifest's
models have their shapes here (`MODEL_CONFIGS`), so a preset's table needs no weights at hand.
Estimates to check against the KV cache size vLLM logs at start-up (see the first-run checklist
in the README).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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

# OpenMath-Nemotron-7B is Qwen2.5-Math-7B fine-tuned (same config.json shape): 28 layers, 28 query
# and 4 KV heads of 128 (GQA), hidden 3584, intermediate 18944, untied embeddings. Qwen2.5-Math-7B
# and Qwen2.5-7B config.json; the k_proj/v_proj weights are [512, 3584] = 4 heads x 128.
QWEN25_MATH_7B = {
    "num_hidden_layers": 28,
    "hidden_size": 3584,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}

# OpenMath-Nemotron-14B is Qwen2.5-14B fine-tuned: 48 layers, 40 query and 8 KV heads of 128,
# hidden 5120, intermediate 13824 (Qwen/Qwen2.5-14B(-Instruct) config.json).
QWEN25_14B = {
    "num_hidden_layers": 48,
    "hidden_size": 5120,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "intermediate_size": 13824,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}

# The config.json shape of each weights_manifest.json entry that runs on a GPU preset.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "numinamath-7b-tir-gptq": NUMINAMATH_7B,
    "openmath-nemotron-7b-gptq-w8a16": QWEN25_MATH_7B,
    "openmath-nemotron-14b-gptq-w8a16": QWEN25_14B,
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
    head_size: int | None = None  # config.json's head_dim when given, else hidden // heads

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a config.json's fields; a multimodal or wrapped config's `text_config` is read
        when the top level lacks the layer count."""
        if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
            config = config["text_config"]
        try:
            heads = config["num_attention_heads"]
            return cls(
                layers=config["num_hidden_layers"],
                hidden=config["hidden_size"],
                heads=heads,
                kv_heads=config.get("num_key_value_heads") or heads,
                intermediate=config["intermediate_size"],
                vocab=config["vocab_size"],
                tied=bool(config.get("tie_word_embeddings", False)),
                head_size=config.get("head_dim") or None,
            )
        except KeyError as exc:
            raise ValueError(f"config.json lacks {exc.args[0]!r}: cannot size the model") from None

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelShape:
        return cls.from_config(json.loads((Path(path) / "config.json").read_text()))

    @classmethod
    def for_model(cls, name: str) -> ModelShape:
        """The shape of a manifest entry (`MODEL_CONFIGS`); ValueError naming the known ones."""
        if name not in MODEL_CONFIGS:
            raise ValueError(
                f"no config.json shape for model {name!r} (known: {sorted(MODEL_CONFIGS)}); "
                "pass the model directory (`capacity --model DIR`)"
            )
        return cls.from_config(MODEL_CONFIGS[name])

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def weight_bytes(self, bits: int | None, group_size: int = 128) -> int:
        """Linear layers at `bits` (None: fp16) with fp16 scales per group; embeddings fp16."""
        q_width = self.heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        per_layer = 2 * self.hidden * q_width + 2 * self.hidden * kv_width  # q, o; k, v
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


def preset_shape(preset: Any) -> ModelShape:
    """The shape of the preset's model (`MODEL_CONFIGS`); NuminaMath-7B for a model it lacks,
    as before shapes were known per model."""
    if preset.model in MODEL_CONFIGS:
        return ModelShape.for_model(preset.model)
    return ModelShape.from_config(NUMINAMATH_7B)


def preset_bits(preset: Any) -> int | None:
    """8 for a GPTQ preset (the kit's weights are 8-bit), else None (fp16)."""
    return 8 if preset.backend_options.get("quantization") in ("gptq", "gptq_marlin") else None


def preset_layout(preset: Any, rows: list[Capacity]) -> Capacity:
    """The layout the preset runs: its backend `layout` when set, else tensor parallel when its
    tensor_parallel_size > 1 or on one GPU, else one engine per GPU."""
    layout = preset.backend_options.get("layout")
    if layout is not None:
        return next((r for r in rows if r.layout == layout), rows[0])
    tp = int(preset.backend_options.get("tensor_parallel_size", 1))
    return rows[0] if tp > 1 or len(rows) == 1 else rows[-1]


REPORT_LENGTHS = (2048, 4096, 16384, 32768)


def report(preset_name: str, shape: ModelShape | None = None, bits: int | None = None) -> str:
    """A table for one preset: the model's shape from `MODEL_CONFIGS` (or `shape`, e.g. read
    from a model directory), rollouts that fit at common lengths and at the preset's own
    (its backend max_model_len), and whether its N fits in the layout it runs."""
    from ..presets import get_preset

    preset = get_preset(preset_name)
    if preset.hardware == "cpu":
        return f"{preset.name}: runs on CPU; no GPU capacity to estimate"
    shape = shape or preset_shape(preset)
    bits = bits if bits is not None else preset_bits(preset)
    fraction = float(preset.backend_options.get("gpu_memory_utilization", 0.9))
    length = int(preset.backend_options.get("max_model_len") or 4096)
    lengths = tuple(sorted({*REPORT_LENGTHS, length}))
    rows = estimate(shape, preset.hardware, bits=bits, memory_fraction=fraction, lengths=lengths)
    n = preset.engine.num_rollouts
    weights = f"{bits}-bit" if bits else "fp16"
    header = " / ".join(f"{k // 1024}k" if k % 1024 == 0 else str(k) for k in lengths)
    lines = [
        f"{preset.name} ({preset.model}, {preset.hardware}, weights {weights}, "
        f"memory fraction {fraction}): KV cache {shape.kv_bytes_per_token() / 1024:.0f} KiB/token "
        f"({shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim}), "
        f"weights {shape.weight_bytes(bits) / GIB:.2f} GiB, N={n}, "
        f"rollout length {length} tokens",
        f"{'layout':16s} {'engines':>7s} {'weights/GPU':>12s} {'cache/GPU':>10s} "
        f"{'tokens/engine':>14s}  rollouts that fit at {header} tokens",
    ]
    for c in rows:
        fits = " / ".join(str(c.rollouts_at[k]) for k in lengths)
        lines.append(
            f"{c.layout:16s} {c.engines:7d} {c.weights_per_gpu / GIB:10.2f} G "
            f"{c.cache_bytes_per_gpu / GIB:8.2f} G {c.cache_tokens_per_engine:14d}  {fits}"
        )
    run = preset_layout(preset, rows)
    held = run.rollouts_at[length]
    verdict = "all at full length at once" if held >= n else "vLLM queues or preempts the rest"
    lines.append(f"runs {run.layout}: {held} rollouts of {length} tokens fit, N={n} ({verdict})")
    return "\n".join(lines)


def compare(
    models: Sequence[str],
    hardware: str,
    length: int,
    *,
    bits: int | None = 8,
    memory_fraction: float = 0.92,
) -> str:
    """Several models on one machine: cache tokens and rollouts of `length` tokens that fit,
    per layout (the table behind choosing a model with grouped-query attention)."""
    lines = [
        f"{hardware}, {f'{bits}-bit' if bits else 'fp16'} weights, memory fraction "
        f"{memory_fraction}, rollouts of {length} tokens",
        f"{'model':34s} {'KV KiB/token':>12s} {'weights GiB':>11s} {'layout':>16s} "
        f"{'cache tokens':>13s} {'rollouts':>8s}",
    ]
    for name in models:
        shape = ModelShape.for_model(name) if name in MODEL_CONFIGS else ModelShape.from_dir(name)
        for c in estimate(
            shape, hardware, bits=bits, memory_fraction=memory_fraction, lengths=(length,)
        ):
            lines.append(
                f"{name:34s} {shape.kv_bytes_per_token() / 1024:12.0f} "
                f"{shape.weight_bytes(bits) / GIB:11.2f} {c.layout:>16s} "
                f"{c.engines * c.cache_tokens_per_engine:13d} {c.rollouts_at[length]:8d}"
            )
    return "\n".join(lines)
