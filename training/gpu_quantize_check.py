"""Quantize a tiny Llama to GPTQ 8-bit on a CUDA GPU and print what ran (no downloads).

Usage (on a GPU machine with torch+CUDA, transformers and gptqmodel installed)::

    python -m training.gpu_quantize_check [--desc-act both|true|false] [--out DIR]

It builds a random 2-layer Llama (hidden 256, so group size 128 makes two groups per row) with
the demo tokenizer, quantizes it through `training.quantize` (the same code as the real stage)
on cuda:0 with desc_act false and true, reloads each result with GPTQModel on the GPU, compares
logits against the fp32 original, and prints one JSON report: GPU, CUDA, library versions, the
kernel GPTQModel picked, timings, the written quantization_config, and the logit agreement.
Exit status 0 when every run produced a gptq/gptq checkpoint that loads on the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def build_tiny(out: Path) -> Path:
    """A random tiny Llama + the demo tokenizer, and a JSONL of demo rows for calibration."""
    from .data import render, write_jsonl
    from .demo import TinyModelSpec, init_model, train_tokenizer
    from .synthetic import make_rows

    rows = make_rows(64, seed=1)
    tokenizer = train_tokenizer([render(r["problem"], r["solution"]) for r in rows], 1600, 512)
    spec = TinyModelSpec(layers=2, hidden=256, heads=4, intermediate=512, tie_embeddings=False)
    init_model(spec, tokenizer, out / "tiny")
    write_jsonl(out / "calibration.jsonl", rows)
    return out / "tiny"


def run(desc_act: bool, base: Path, work: Path) -> dict[str, Any]:
    import torch

    from .config import from_dict
    from .quantize import QuantizeConfig, quantize

    cfg = from_dict(
        QuantizeConfig,
        {
            "model_dir": str(base),
            "output_dir": str(work / f"gptq-desc_act-{str(desc_act).lower()}"),
            "bits": 8,
            "group_size": 128,
            "desc_act": desc_act,
            "dtype": "float16",
            "device": "cuda:0",
            "calibration": {
                "sources": [{"path": str(work / "calibration.jsonl")}],
                "num_samples": 64,
                "max_length": 512,
            },
            "verify": True,
        },
    )
    t0 = time.monotonic()
    info = quantize(cfg)
    out = Path(cfg.output_dir)
    from gptqmodel import GPTQModel

    loaded = GPTQModel.load(str(out), device="cuda:0")
    kernels = sorted(
        {type(m).__name__ for m in loaded.model.modules() if "Quant" in type(m).__name__}
    )
    ids = torch.tensor([[1, 5, 9, 13, 17]], device="cuda:0")
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
    return {
        "desc_act": desc_act,
        "seconds": round(time.monotonic() - t0, 2),
        "quantization_config": info["quantization_config"],
        "dtype": info["dtype"],
        "check": info.get("check"),
        "quant_linear_classes": kernels,
        "forward_ok": bool(torch.isfinite(logits).all().item()),
        "files": sorted(p.name for p in out.iterdir()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--desc-act", choices=("both", "true", "false"), default="both")
    parser.add_argument("--out", help="keep the outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine", file=sys.stderr)
        return 2
    from importlib.metadata import version

    report: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": version("transformers"),
        "gptqmodel": version("gptqmodel"),
        "runs": [],
    }
    flags = {"both": (False, True), "true": (True,), "false": (False,)}[args.desc_act]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = build_tiny(work)
        ok = True
        for flag in flags:
            try:
                result = run(flag, base, work)
                qc = result["quantization_config"]
                ok &= qc.get("quant_method") == "gptq" and qc.get("checkpoint_format") == "gptq"
                ok &= result["forward_ok"]
            except Exception as exc:  # report every failure, not just the first
                result = {"desc_act": flag, "error": f"{type(exc).__name__}: {exc}"}
                ok = False
            report["runs"].append(result)
    report["ok"] = ok
    print(json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
