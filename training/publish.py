"""Publish a model directory: manifest entry (sizes, sha256) and Kaggle upload metadata.

Usage::

    python -m training.publish --config training/configs/publish.yaml \
        --set model_dir=runs/quantized --set kaggle.handle=me/my-model/transformers/gptq-8bit/1

What it writes:
- the entry in ``weights_manifest.json`` (through `kaggle_submission.manifest`, the one schema):
  every file with size and sha256, quantization read from the directory's config.json /
  quantize_info.json, the prompt format checked against the kernel's `format_prompt`;
- Kaggle metadata next to the files: ``model-metadata.json`` + ``model-instance-metadata.json``
  for a Kaggle model, ``dataset-metadata.json`` for a dataset (the manifest ignores these files).

Then upload (``kaggle models instances create -p DIR`` for the first version,
``kaggle models instances versions create OWNER/MODEL/FRAMEWORK/VARIATION -p DIR`` later, or
``kaggle datasets create -p DIR``), attach it to the notebook, and the kernel finds and checks it
with no hand edits. The version number in the handle must be the one Kaggle assigns.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_submission import manifest as mf
from kaggle_submission.prompts import format_prompt

from .config import dump_yaml, load_config, resolve_path, stage_parser

_PROBE_PROBLEM = "What is $1 + 1$?"


@dataclass(frozen=True)
class KaggleSpec:
    kind: str = "model"
    handle: str = "OWNER/numinamath-7b-tir-gptq/transformers/8bit-g128/1"


@dataclass(frozen=True)
class PublishConfig:
    """Attributes:
    model_dir: the directory to publish (quantize's output, or SFT's ``final``).
    name: manifest entry name (the preset's `model`).
    description: one line for people.
    manifest: the manifest file to update.
    kaggle: kind ("model" | "dataset") and handle.
    hf_repo, revision: provenance (optional).
    presets: preset names meant to load this entry.
    demo: a demo model (never a competition model).
    title, license, private: Kaggle metadata.
    write_kaggle_metadata: write model-/dataset-metadata.json next to the files.
    """

    model_dir: str = "runs/quantized"
    name: str = "numinamath-7b-tir-gptq-requant"
    description: str = ""
    manifest: str = "weights_manifest.json"
    kaggle: KaggleSpec = field(default_factory=KaggleSpec)
    hf_repo: str | None = None
    revision: str | None = None
    presets: tuple[str, ...] = ()
    demo: bool = False
    title: str = ""
    license: str = "Apache 2.0"
    private: bool = True
    write_kaggle_metadata: bool = True


def detect_quantization(model_dir: Path) -> dict[str, Any] | None:
    """The manifest's quantization block from config.json (+ quantize_info.json), or None."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    q = config.get("quantization_config")
    if not q:
        return None
    method = str(q.get("quant_method", "")).lower()
    if method != "gptq":
        raise ValueError(f"{config_path}: unsupported quantization method {method!r}")
    library, library_version = "unknown", None
    info_path = model_dir / "quantize_info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        library = info.get("library", library)
        library_version = info.get("library_version")
    else:
        quantizer = (q.get("meta") or {}).get("quantizer") or []
        if quantizer:
            library, _, library_version = str(quantizer[0]).partition(":")
    return {
        "method": "gptq",
        "bits": q.get("bits"),
        "group_size": q.get("group_size"),
        "desc_act": q.get("desc_act"),
        "sym": q.get("sym"),
        "library": library,
        "library_version": library_version or None,
    }


def detect_prompt_format(model_dir: Path) -> str:
    """The manifest's prompt format: numina when the kernel's prompt for this tokenizer is the
    default one, else chat_template (the tokenizer renders a format of its own)."""
    template = None
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        template = json.loads(cfg_path.read_text()).get("chat_template")
    jinja = model_dir / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text()
    if isinstance(template, list):  # several named templates
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template or format_prompt(_PROBE_PROBLEM, template) == format_prompt(_PROBE_PROBLEM):
        return "numina"
    return "chat_template"


def kaggle_metadata(
    kind: str, handle: str, title: str, description: str, license_name: str, private: bool
) -> dict[str, dict[str, Any]]:
    """{file name: content} of the Kaggle CLI metadata for this upload."""
    parts = handle.split("/")
    if kind == "dataset":
        return {
            "dataset-metadata.json": {
                "title": title or parts[1],
                "id": handle,
                "licenses": [
                    {"name": "apache-2.0" if license_name == "Apache 2.0" else license_name}
                ],
                "isPrivate": private,
                "description": description,
            }
        }
    owner, model, framework, variation, _version = parts
    return {
        "model-metadata.json": {
            "ownerSlug": owner,
            "title": title or model,
            "slug": model,
            "subtitle": "",
            "isPrivate": private,
            "description": description,
            "publishTime": "",
            "provenanceSources": "",
        },
        "model-instance-metadata.json": {
            "ownerSlug": owner,
            "modelSlug": model,
            "instanceSlug": variation,
            "framework": framework,
            "overview": description,
            "usage": "Attach to the notebook; the kit's weights_manifest.json entry locates it.",
            "licenseName": license_name,
            "fineTunable": False,
            "trainingData": [],
            "modelInstanceType": "Unspecified",
            "baseModelInstance": "",
            "externalBaseModelUrl": "",
        },
    }


def publish_directory(
    model_dir: str | os.PathLike[str],
    *,
    name: str,
    manifest_path: str | os.PathLike[str],
    description: str,
    kaggle: Mapping[str, str],
    quantization: Mapping[str, Any] | str | None = "detect",
    presets: Sequence[str] = (),
    demo: bool = False,
    hf_repo: str | None = None,
    revision: str | None = None,
    title: str = "",
    license_name: str = "Apache 2.0",
    private: bool = True,
    write_kaggle_metadata: bool = True,
) -> mf.ModelEntry:
    """Hash every file of `model_dir`, write its entry into `manifest_path`, return the entry."""
    base = Path(model_dir)
    quant = detect_quantization(base) if quantization == "detect" else quantization
    entry = mf.entry_from_directory(
        base,
        name,
        description=description,
        source={"hf_repo": hf_repo, "revision": revision},
        kaggle=dict(kaggle),
        quantization=dict(quant) if quant is not None else None,
        prompt={"format": detect_prompt_format(base)},
        presets=list(presets),
        demo=demo,
    )
    path = Path(manifest_path)
    manifest = mf.load_manifest(path) if path.exists() else mf.Manifest(models={})
    manifest.with_entry(entry).save(path)
    if write_kaggle_metadata:
        for file_name, content in kaggle_metadata(
            entry.kaggle.kind, entry.kaggle.handle, title, description, license_name, private
        ).items():
            (base / file_name).write_text(json.dumps(content, indent=2) + "\n")
    return entry


def publish(cfg: PublishConfig) -> mf.ModelEntry:
    return publish_directory(
        resolve_path(cfg.model_dir),
        name=cfg.name,
        manifest_path=resolve_path(cfg.manifest),
        description=cfg.description,
        kaggle={"kind": cfg.kaggle.kind, "handle": cfg.kaggle.handle},
        presets=cfg.presets,
        demo=cfg.demo,
        hf_repo=cfg.hf_repo,
        revision=cfg.revision,
        title=cfg.title,
        license_name=cfg.license,
        private=cfg.private,
        write_kaggle_metadata=cfg.write_kaggle_metadata,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("Publish a model directory into the manifest and Kaggle metadata")
    args = parser.parse_args(argv)
    cfg = load_config(PublishConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    entry = publish(cfg)
    total = sum(f.size or 0 for f in entry.files)
    print(
        f"published {entry.name}: {len(entry.files)} files, {total / 1e6:.1f} MB, "
        f"{entry.kaggle.kind} {entry.kaggle.handle} -> {cfg.manifest}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
