"""GPTQ 8-bit quantization with GPTQModel, in the format vLLM reads on a T4.

Usage::

    python -m training.quantize --config training/configs/quantize.yaml \
        --set model_dir=runs/stage2_tir/final --set output_dir=runs/quantized

What it writes (``output_dir``): the GPTQ checkpoint (config.json ``quantization_config`` with
quant_method gptq, checkpoint_format gptq, bits, group_size, desc_act, sym), the tokenizer,
float16 non-quantized weights (a T4 has no bf16), and ``quantize_info.json`` recording the
library, its version, every setting, the calibration data and a logit check against the
unquantized model.

desc_act: the published NuminaMath-7B-TIR-GPTQ used desc_act=True with group size 128 (AutoGPTQ
0.7.1). The kit's pinned vLLM (0.19.1) accepts that; vLLM 0.30+ rejects desc_act with a group
size. The default here is False (GPTQModel then orders columns by activation statically), which
every vLLM loads; set ``desc_act=true`` to reproduce the published weights exactly.

Calibration: 256 NuminaMath-TIR rows rendered with the kernel's prompt format (the text the
model sees at inference), as the winner did.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from .data import SourceSpec, load_rows, render


@dataclass(frozen=True)
class CalibrationConfig:
    """Attributes:
    sources: rows {problem, solution} (NuminaMath-TIR by default).
    num_samples: rows used (the winner: 256).
    max_length: tokens per sample (longer samples are cut).
    seed: which rows are drawn.
    """

    sources: tuple[SourceSpec, ...] = (SourceSpec(name="AI-MO/NuminaMath-TIR"),)
    num_samples: int = 256
    max_length: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class QuantizeConfig:
    """Attributes:
    model_dir: the unquantized model (SFT stage 2's ``final``).
    output_dir: where the GPTQ checkpoint goes.
    bits, group_size, desc_act, sym, damp_percent, true_sequential: GPTQ settings.
    dtype: dtype of the weights left unquantized (float16 for T4).
    device: "cuda:0", "cpu", or None (CUDA when present).
    batch_size: calibration batch size.
    cpu_workers: GPTQMODEL_CPU_WORKERS when quantizing on CPU (None: the CPU count).
    verify: reload the result and compare its logits with the unquantized model's.
    verify_samples: calibration samples used for that check.
    """

    model_dir: str = "runs/stage2_tir/final"
    output_dir: str = "runs/quantized"
    bits: int = 8
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    damp_percent: float = 0.01
    true_sequential: bool = True
    dtype: str = "float16"
    device: str | None = None
    batch_size: int = 1
    cpu_workers: int | None = None
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    verify: bool = True
    verify_samples: int = 4

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise ValueError("bits must be 2, 3, 4 or 8")
        if self.group_size != -1 and self.group_size < 1:
            raise ValueError("group_size must be -1 or positive")
        if self.dtype not in ("float16", "bfloat16"):
            raise ValueError("dtype must be float16 (T4) or bfloat16")


def calibration_texts(cfg: QuantizeConfig, chat_template: str | None) -> list[str]:
    """`num_samples` rows, rendered exactly as the kernel prompts plus the solution."""
    import random

    rows = load_rows(cfg.calibration.sources)
    if not rows:
        raise ValueError("no calibration rows: check calibration.sources")
    rng = random.Random(cfg.calibration.seed)
    if len(rows) > cfg.calibration.num_samples:
        rows = rng.sample(rows, cfg.calibration.num_samples)
    return [render(r["problem"], r["solution"], chat_template) for r in rows]


def _library_version() -> str:
    from importlib.metadata import version

    return version("gptqmodel")


def quantize(
    cfg: QuantizeConfig,
    texts: Sequence[str] | None = None,
    prompt_note: str = "kaggle_submission.prompts.format_prompt + solution",
) -> dict[str, Any]:
    """Quantize `model_dir` into `output_dir`; returns (and writes) quantize_info.json.

    `texts`: calibration texts already rendered (training.quantize_existing renders them in
    the model's own protocol); None renders `cfg.calibration` in the kernel's numina format.
    `prompt_note` records how they were rendered."""
    import torch

    device = cfg.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(cfg.cpu_workers or os.cpu_count() or 1))
    from gptqmodel import GPTQModel
    from gptqmodel import QuantizeConfig as GPTQConfig
    from transformers import AutoTokenizer

    src = resolve_path(cfg.model_dir)
    out = resolve_path(cfg.output_dir)
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    template = getattr(tokenizer, "chat_template", None) or None
    if texts is None:
        texts = calibration_texts(cfg, template)
    calibration = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=cfg.calibration.max_length)
        calibration.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})

    dtype = torch.float16 if cfg.dtype == "float16" else torch.bfloat16
    gptq_config = GPTQConfig(
        bits=cfg.bits,
        group_size=cfg.group_size,
        desc_act=cfg.desc_act,
        sym=cfg.sym,
        damp_percent=cfg.damp_percent,
        true_sequential=cfg.true_sequential,
    )
    model = GPTQModel.load(str(src), gptq_config, dtype=dtype, device=device)
    model.quantize(calibration, batch_size=cfg.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    tokenizer.save_pretrained(str(out))
    del model
    seconds = time.monotonic() - t0

    config = json.loads((out / "config.json").read_text())
    qc = config.get("quantization_config", {})
    info: dict[str, Any] = {
        "library": "gptqmodel",
        "library_version": _library_version(),
        "source_model": str(src),
        "device": device,
        "seconds": round(seconds, 2),
        "settings": {k: v for k, v in to_dict(cfg).items() if k != "calibration"},
        "calibration": {
            **to_dict(cfg.calibration),
            "used": len(calibration),
            "tokens": sum(len(c["input_ids"]) for c in calibration),
            "prompt": prompt_note,
        },
        "quantization_config": {k: v for k, v in qc.items() if k != "meta"},
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "vllm_note": (
            "desc_act=true with a group size loads on vLLM <= 0.29 (the kit pins 0.19.1); "
            "vLLM 0.30+ needs desc_act=false"
        ),
        "versions": package_versions(("gptqmodel", "torch", "transformers")),
    }
    for key, want in (("quant_method", "gptq"), ("checkpoint_format", "gptq")):
        if qc.get(key) != want:
            raise RuntimeError(f"quantized config.json has {key}={qc.get(key)!r}, expected {want}")
    if cfg.verify:
        info["check"] = compare_logits(src, out, calibration[: cfg.verify_samples], device)
    (out / "quantize_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def compare_logits(
    reference_dir: Path, quantized_dir: Path, samples: Sequence[dict[str, Any]], device: str
) -> dict[str, float]:
    """How far the quantized model's next-token logits are from the original's.

    top1_agreement is the share of positions where both pick the same token; for 8-bit GPTQ of a
    trained model it should be close to 1.
    """
    import torch
    from gptqmodel import GPTQModel
    from transformers import AutoModelForCausalLM

    quantized = GPTQModel.load(str(quantized_dir), device=device)
    reference = AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32)
    reference = reference.to(device).eval()
    agree = total = 0
    max_diff = 0.0
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample["input_ids"]], device=device)
            a = quantized.model(input_ids=ids).logits.float()
            b = reference(input_ids=ids).logits.float()
            max_diff = max(max_diff, (a - b).abs().max().item())
            agree += (a.argmax(-1) == b.argmax(-1)).sum().item()
            total += ids.numel()
    return {
        "samples": len(samples),
        "positions": total,
        "top1_agreement": agree / max(total, 1),
        "max_abs_logit_diff": max_diff,
    }


def gptq_main(
    argv: Sequence[str] | None,
    description: str,
    config_type: Any,
    run: Any,
    report: Any = None,
) -> int:
    """The command line of a GPTQ stage: config, `--print-config`, a clear exit when gptqmodel
    is missing, then `run(cfg)`'s figures; `report(cfg, info)` prints what the stage adds."""
    parser = stage_parser(description)
    args = parser.parse_args(argv)
    cfg = load_config(config_type, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    try:
        import gptqmodel  # noqa: F401
    except ImportError:
        command = Path(parser.prog).stem
        print(
            f"{command} needs gptqmodel: pip install -r training/requirements-quantize.txt",
            file=sys.stderr,
        )
        return 2
    info = run(cfg)
    print(json.dumps({k: info[k] for k in ("quantization_config", "seconds", "device")}))
    if "check" in info:
        print(json.dumps({"check": info["check"]}))
    if report is not None:
        report(cfg, info)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return gptq_main(argv, "GPTQ quantization (GPTQModel)", QuantizeConfig, quantize)


if __name__ == "__main__":
    raise SystemExit(main())
