"""GPTQ W8A16 of an existing model (e.g. OpenMath-Nemotron-7B), calibrated in its own protocol.

Usage::

    python -m training.quantize_existing --config training/configs/quantize_openmath7b.yaml \
        --set model_dir=/path/to/OpenMath-Nemotron-7B --set output_dir=runs/openmath7b-w8a16

Why a recipe of its own: the weights were not trained here, so the calibration samples must be
what that model sees at inference, rendered by the kernel's protocol for it (`protocol`, the
manifest entry's `prompt.format`: the model directory's chat template with the NeMo-Skills TIR
user turn for "openmath-tir"), each followed by a solution in the model's own form (the default
source, NVIDIA's OpenMathReasoning "tir" split, is what the model was trained on). Everything
else is `training.quantize`: GPTQModel, 8-bit, group 128, sym, desc_act false (vLLM's
gptq_marlin kernel takes it on compute 7.5; docs/vllm.md), fp16 for the weights left
unquantized (T4), a logit check against the original model, `quantize_info.json`.

Then it publishes into the manifest (`publish`, on by default): the entry `name` (one of the
kit's unfilled entries, e.g. openmath-nemotron-7b-gptq-w8a16) gets every file of `output_dir`
with its size and sha256 (`manifest.fill`), and the GPTQ settings written are checked against the
entry's. An entry that is not in the manifest is created (its `kaggle_handle` is required).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kaggle_submission import manifest as mf
from kaggle_submission.protocols import PROTOCOLS, Protocol, get_protocol

from .config import resolve_path
from .data import load_rows
from .quantize import CalibrationConfig, QuantizeConfig, gptq_main, quantize
from .stage_config import SourceSpec

OPENMATH_REASONING = SourceSpec(
    name="nvidia/OpenMathReasoning", split="tir", solution_field="generated_solution"
)


@dataclass(frozen=True)
class QuantizeExistingConfig:
    """Attributes:
    model_dir: the existing model (a downloaded hub directory with its chat template).
    output_dir: where the GPTQ checkpoint goes.
    protocol: the manifest's `prompt.format` for this model (kaggle_submission.protocols).
    max_calls: code calls the rendered prompt announces (the presets' 8).
    bits, group_size, desc_act, sym, damp_percent, true_sequential, dtype, device, batch_size,
        cpu_workers, verify, verify_samples: as in training.quantize.
    calibration: rows {problem, solution} whose solutions are in the model's own form.
    publish: fill (or create) the manifest entry `name` from `output_dir`.
    manifest, name: the manifest file and entry.
    kaggle_handle, kaggle_kind: only for an entry the manifest lacks.
    """

    model_dir: str = "models/OpenMath-Nemotron-7B"
    output_dir: str = "runs/openmath-nemotron-7b-gptq-w8a16"
    protocol: str = "openmath-tir"
    max_calls: int = 8
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
    calibration: CalibrationConfig = field(
        default_factory=lambda: CalibrationConfig(sources=(OPENMATH_REASONING,))
    )
    verify: bool = True
    verify_samples: int = 4
    publish: bool = True
    manifest: str = "weights_manifest.json"
    name: str = "openmath-nemotron-7b-gptq-w8a16"
    kaggle_handle: str | None = None
    kaggle_kind: str = "model"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, not {self.protocol!r}")
        if self.max_calls < 0:
            raise ValueError("max_calls must be >= 0")

    def quantize_config(self) -> QuantizeConfig:
        """The shared GPTQ settings (training.quantize validates them)."""
        shared = {k: getattr(self, k) for k in QuantizeConfig.__dataclass_fields__}
        return QuantizeConfig(**shared)


def calibration_texts(cfg: QuantizeExistingConfig, protocol: Protocol) -> list[str]:
    """`num_samples` rows: the protocol's prompt for the problem, then the solution as given."""
    rows = load_rows(cfg.calibration.sources)
    if not rows:
        raise ValueError("no calibration rows: check calibration.sources")
    if len(rows) > cfg.calibration.num_samples:
        rows = random.Random(cfg.calibration.seed).sample(rows, cfg.calibration.num_samples)
    return [protocol.render(r["problem"], cfg.max_calls) + r["solution"] for r in rows]


def publish_into_manifest(cfg: QuantizeExistingConfig, info: dict[str, Any]) -> mf.ModelEntry:
    """Fill (or create) the entry `cfg.name` from `cfg.output_dir`; the settings written must
    be the entry's (a W8A16 entry filled with other weights would load the wrong kernel)."""
    out = resolve_path(cfg.output_dir)
    path = resolve_path(cfg.manifest)
    manifest = mf.load_manifest(path) if path.exists() else mf.Manifest(models={})
    qc = info["quantization_config"]
    written = mf.Quantization(
        method="gptq",
        bits=qc.get("bits"),
        group_size=qc.get("group_size"),
        desc_act=qc.get("desc_act"),
        sym=qc.get("sym"),
        library="gptqmodel",
        library_version=info.get("library_version"),
    )
    if cfg.name in manifest.models:
        entry = manifest.get(cfg.name)
        declared = entry.quantization
        if declared is not None:
            for key in ("method", "bits", "group_size", "desc_act", "sym"):
                if getattr(declared, key) != getattr(written, key):
                    raise mf.ManifestError(
                        f"model '{cfg.name}': the manifest says quantization.{key}="
                        f"{getattr(declared, key)!r}, {out} has {getattr(written, key)!r}"
                    )
        if entry.prompt.format != cfg.protocol:
            raise mf.ManifestError(
                f"model '{cfg.name}': the manifest's prompt.format is {entry.prompt.format!r}, "
                f"the calibration used {cfg.protocol!r}"
            )
        manifest = mf.fill(manifest, cfg.name, out)
        entry = replace(manifest.get(cfg.name), quantization=written)
    else:
        if not cfg.kaggle_handle:
            raise mf.ManifestError(
                f"model '{cfg.name}' is not in {path}: set kaggle_handle to create it"
            )
        entry = mf.entry_from_directory(
            out,
            cfg.name,
            description=f"GPTQ W8A16 of {resolve_path(cfg.model_dir).name} (quantize_existing)",
            kaggle={"kind": cfg.kaggle_kind, "handle": cfg.kaggle_handle},
            quantization=written,
            prompt={"format": cfg.protocol},
        )
    manifest.with_entry(entry).save(path)
    return entry


def run(cfg: QuantizeExistingConfig) -> dict[str, Any]:
    """Render the calibration in the model's protocol, quantize, check, publish."""
    src = resolve_path(cfg.model_dir)
    protocol = get_protocol(cfg.protocol, src)  # a clear error when the template is missing
    texts = calibration_texts(cfg, protocol)
    info = quantize(
        cfg.quantize_config(),
        texts=texts,
        prompt_note=f"kaggle_submission.protocols {cfg.protocol!r} render(problem, "
        f"{cfg.max_calls}) + solution",
    )
    info["protocol"] = cfg.protocol
    out = resolve_path(cfg.output_dir)
    (out / "quantize_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if cfg.publish:
        entry = publish_into_manifest(cfg, info)
        info["manifest_entry"] = entry.name
    return info


def main(argv: Sequence[str] | None = None) -> int:
    def report(cfg: QuantizeExistingConfig, info: dict[str, Any]) -> None:
        if "manifest_entry" in info:
            print(f"filled {info['manifest_entry']} in {cfg.manifest}")

    return gptq_main(
        argv,
        "GPTQ W8A16 of an existing model, calibrated in its own protocol",
        QuantizeExistingConfig,
        run,
        report,
    )


if __name__ == "__main__":
    raise SystemExit(main())
