"""Supervised fine-tuning with TRL's SFTTrainer: the AIMO-1 winner's stage 1 (CoT) and 2 (TIR).

Usage (one GPU, or under ``accelerate launch`` for 8 GPUs with DeepSpeed ZeRO-3)::

    python -m training.sft --config training/configs/stage1_cot.yaml
    python -m training.sft --config training/configs/stage2_tir.yaml \
        --set model=runs/stage1_cot/final

The AIMO-1 winner's published recipe: packing into fixed blocks (2048 / 1024 tokens), no
loss masking, lr 2e-5 cosine, 3 / 4 epochs, warmup 0 / 0.1, bf16, gradient checkpointing,
global batch 32.
The global batch is kept whatever the hardware: gradient accumulation is derived from it as
global / (per-device batch x processes) unless given explicitly, in which case it must agree.

Outputs under ``output_dir``: ``final/`` (model + tokenizer, what quantize and publish read),
``checkpoints/`` (trainer state), ``training_info.json`` (config, data report, metrics, versions).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (
    dump_yaml,
    load_config,
    package_versions,
    resolve_path,
    stage_parser,
    to_dict,
)
from .data import PreparedData, prepare, render, summary_line
from .stage_config import SFTStageConfig

RECORDED_PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "deepspeed")
"""Whose versions a stage's run record keeps."""


def world_size() -> int:
    """Processes in this run (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def accumulation_steps(cfg: SFTStageConfig, processes: int | None = None) -> int:
    """Gradient accumulation that keeps the global batch: global / (per-device x processes)."""
    n = processes if processes is not None else world_size()
    per_step = cfg.per_device_train_batch_size * n
    if cfg.global_batch_size is None:
        return cfg.gradient_accumulation_steps or 1
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size {cfg.global_batch_size} is not a multiple of per-device batch "
            f"{cfg.per_device_train_batch_size} x {n} processes"
        )
    derived = cfg.global_batch_size // per_step
    if cfg.gradient_accumulation_steps is not None and cfg.gradient_accumulation_steps != derived:
        raise ValueError(
            f"gradient_accumulation_steps {cfg.gradient_accumulation_steps} x per-device batch "
            f"{cfg.per_device_train_batch_size} x {n} processes != global_batch_size "
            f"{cfg.global_batch_size}; drop one of them"
        )
    return derived


@dataclass(frozen=True)
class SFTResult:
    final_dir: Path
    metrics: dict[str, Any]
    seconds: float
    data_report: dict[str, Any]


def load_tokenizer(cfg: SFTStageConfig) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        str(_model_ref(cfg.tokenizer or cfg.model)), trust_remote_code=cfg.trust_remote_code
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _model_ref(ref: str) -> str | Path:
    """A local directory when one exists (relative to cwd or the repo), else a hub id."""
    if not ref:
        raise ValueError("the config's `model` is empty: give a base model directory or hub id")
    path = resolve_path(ref)
    return path if path.exists() else ref


def rendered_dataset(rows: Sequence[dict[str, Any]], chat_template: str | None) -> Any:
    """A `datasets.Dataset` with one `text` column: prompt (kernel format) + solution."""
    from datasets import Dataset

    return Dataset.from_list(
        [{"text": render(r["problem"], r["solution"], chat_template)} for r in rows]
    )


def build_trainer(
    cfg: SFTStageConfig, prepared: PreparedData | None = None
) -> tuple[Any, PreparedData]:
    """The SFTTrainer for `cfg` (data prepared unless given), ready to `train()`."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    out = resolve_path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg)
    if prepared is None:
        prepared = prepare(cfg.data)
    print(summary_line(prepared.report), file=sys.stderr)
    template = getattr(tokenizer, "chat_template", None) or None
    train_ds = rendered_dataset(prepared.train, template)
    eval_ds = rendered_dataset(prepared.eval, template) if prepared.eval else None

    cuda = torch.cuda.is_available()
    bf16 = cfg.bf16
    if bf16 and not cuda:
        print("sft: no CUDA device: training in float32 instead of bf16", file=sys.stderr)
        bf16 = False
    model = AutoModelForCausalLM.from_pretrained(
        str(_model_ref(cfg.model)),
        dtype=torch.bfloat16 if bf16 else torch.float32,
        trust_remote_code=cfg.trust_remote_code,
        **({"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}),
    )
    if cfg.gradient_checkpointing:
        model.config.use_cache = False

    eval_strategy = cfg.eval_strategy if eval_ds is not None else "no"
    args = SFTConfig(
        output_dir=str(out / "checkpoints"),
        max_length=cfg.block_size,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        dataset_text_field="text",
        completion_only_loss=False,  # the winner trained on the whole text, prompt included
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=accumulation_steps(cfg),
        bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        save_total_limit=cfg.save_total_limit,
        save_only_model=False,
        eval_strategy=eval_strategy,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=list(cfg.report_to),
        deepspeed=str(resolve_path(cfg.deepspeed)) if cfg.deepspeed else None,
        dataset_num_proc=cfg.dataset_num_proc,
        dataloader_num_workers=cfg.dataloader_num_workers,
        disable_tqdm=cfg.disable_tqdm,
        use_cpu=not cuda,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
    )
    return trainer, prepared


def train(cfg: SFTStageConfig, prepared: PreparedData | None = None) -> SFTResult:
    """Run the stage and save ``final/``; returns where and the metrics."""
    import torch

    t0 = time.monotonic()
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer, prepared = build_trainer(cfg, prepared)
    blocks = len(trainer.train_dataset)
    result = trainer.train()
    metrics: dict[str, Any] = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
        if "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    metrics["train_blocks"] = blocks
    final = out / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        # The pickled TrainingArguments belong to the run, not to the published weights.
        (final / "training_args.bin").unlink(missing_ok=True)
        trainer.processing_class.save_pretrained(str(final))
        model = trainer.model
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(final))
        seconds = time.monotonic() - t0
        info = {
            "stage": cfg.stage,
            "config": to_dict(cfg),
            "data": {k: v for k, v in prepared.report.items() if k != "removed"},
            "metrics": metrics,
            "seconds": seconds,
            "world_size": world_size(),
            "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
            "versions": package_versions(RECORDED_PACKAGES),
            "cuda": torch.cuda.is_available(),
        }
        (out / "training_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        (out / "decontamination.json").write_text(
            json.dumps(prepared.report, indent=2, default=str) + "\n"
        )
    return SFTResult(final, metrics, time.monotonic() - t0, prepared.report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("SFT stage (TRL SFTTrainer)")
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config is required (training/configs/stage1_cot.yaml or stage2_tir.yaml)")
    cfg = load_config(SFTStageConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    result = train(cfg)
    print(json.dumps({"final_dir": str(result.final_dir), **result.metrics}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
