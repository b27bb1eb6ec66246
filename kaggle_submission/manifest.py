"""The weights manifest: which model directories the kit knows, and how to find and check them.

One schema for the kernel (find the weights under /kaggle/input, check them before the engine
starts, decide the prompt format from the entry: `find_weights`), build_kernel.py (what to
attach) and training/ (publish writes entries). Where Kaggle mounts an entry is `kaggle_paths`'
business. Standard library only, so the kernel can import it before anything heavy.

File format (``weights_manifest.json``, schema version 1)::

    {"schema_version": 1,
     "models": {
       "<name>": {
         "name": "<name>",                       # equals the key
         "description": "...",
         "source": {"hf_repo": "org/repo" | null, "revision": "<commit>" | null},
         "kaggle": {"kind": "model" | "dataset",
                    "handle": "owner/model/framework/variation/version" | "owner/dataset-slug"},
         "quantization": null | {"method": "gptq" | "none", "bits": 8, "group_size": 128,
                                 "desc_act": true, "sym": true, "library": "auto-gptq",
                                 "library_version": "0.7.1" | null},
         "files": [{"path": "config.json", "size": 1040, "sha256": "<64 hex>"}],
         "prompt": {"format": "numina" | "chat_template"},
         "presets": ["aimo1-t4x2"],
         "demo": false}}}

``size`` and ``sha256`` may be absent while unknown (a published model's entry written before
its files were at hand); ``fill`` adds them from a directory holding the files.

An entry may be *unfilled*: ``"files": []``, for weights a user makes (quantizes) before they
exist anywhere, whose file names (shards) are not known in advance. It validates, build_kernel.py
builds its presets with a warning, and the kernel refuses it at start-up (`find_weights` raises
ManifestError saying how to fill it). ``manifest fill DIR --name NAME`` lists every file of DIR
with its size and sha256 into it. Errors name the
model entry and the field (``model 'x': field 'files[2].sha256': ...``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .kaggle_paths import input_roots, mount_dirs
from .protocols import PROTOCOLS, Protocol, decide_protocol

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MANIFEST",
    "IGNORED_FILES",
    "SCHEMA_VERSION",
    "FileEntry",
    "KaggleRef",
    "Manifest",
    "ManifestError",
    "ModelEntry",
    "ModelNotFoundError",
    "PromptSpec",
    "Quantization",
    "SourceRef",
    "Weights",
    "entry_from_directory",
    "fill",
    "find_weights",
    "hash_file",
    "load_manifest",
    "locate",
    "main",
    "parse_manifest",
    "verify_directory",
]

SCHEMA_VERSION = 1
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "weights_manifest.json"

# Upload metadata and local bookkeeping that sit beside the weights but are not part of them.
IGNORED_FILES = frozenset(
    {
        "model-metadata.json",
        "model-instance-metadata.json",
        "dataset-metadata.json",
        ".lock",
    }
)

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("model", "dataset")
_PROMPT_FORMATS = tuple(PROTOCOLS)  # the protocols protocols.decide_protocol knows
_QUANT_METHODS = ("gptq", "none")
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest that does not follow the schema, or a directory that does not match it."""


class ModelNotFoundError(FileNotFoundError):
    """`locate` found no directory holding the entry's files; the message lists where it looked."""


# ------------------------------------------------------------------------------ dataclasses


@dataclass(frozen=True)
class SourceRef:
    """Where the weights came from (for people and for re-downloads), not used to load."""

    hf_repo: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class KaggleRef:
    """The Kaggle model instance version or dataset the kernel attaches."""

    kind: str
    handle: str

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.handle.split("/"))


@dataclass(frozen=True)
class Quantization:
    """How the weights were quantized; `desc_act` decides which vLLM versions load them."""

    method: str
    bits: int | None = None
    group_size: int | None = None
    desc_act: bool | None = None
    sym: bool | None = None
    library: str | None = None
    library_version: str | None = None


@dataclass(frozen=True)
class FileEntry:
    """One file of the model directory, relative path in POSIX form."""

    path: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """ "numina": the kit's `### Problem:` format; "chat_template": the tokenizer's own template."""

    format: str = "numina"


@dataclass(frozen=True)
class ModelEntry:
    """One model the kit can load."""

    name: str
    description: str
    source: SourceRef
    kaggle: KaggleRef
    quantization: Quantization | None
    files: tuple[FileEntry, ...]
    prompt: PromptSpec = field(default_factory=PromptSpec)
    presets: tuple[str, ...] = ()
    demo: bool = False

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(f"model {self.name!r} lists no file {path!r}")

    @property
    def unfilled(self) -> bool:
        """No files listed yet: weights still to be made, then `fill`ed (module docstring)."""
        return not self.files

    @property
    def complete(self) -> bool:
        """Every file has its size and hash (nothing left for `fill`)."""
        return bool(self.files) and all(
            f.size is not None and f.sha256 is not None for f in self.files
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, fields in schema order (what `Manifest.save` writes)."""
        quant = None
        if self.quantization is not None:
            q = self.quantization
            quant = {
                "method": q.method,
                "bits": q.bits,
                "group_size": q.group_size,
                "desc_act": q.desc_act,
                "sym": q.sym,
                "library": q.library,
                "library_version": q.library_version,
            }
        files = []
        for f in self.files:
            item: dict[str, Any] = {"path": f.path}
            if f.size is not None:
                item["size"] = f.size
            if f.sha256 is not None:
                item["sha256"] = f.sha256
            files.append(item)
        return {
            "name": self.name,
            "description": self.description,
            "source": {"hf_repo": self.source.hf_repo, "revision": self.source.revision},
            "kaggle": {"kind": self.kaggle.kind, "handle": self.kaggle.handle},
            "quantization": quant,
            "files": files,
            "prompt": {"format": self.prompt.format},
            "presets": list(self.presets),
            "demo": self.demo,
        }


@dataclass(frozen=True)
class Manifest:
    """All entries, by name."""

    models: Mapping[str, ModelEntry]
    schema_version: int = SCHEMA_VERSION

    def get(self, name: str) -> ModelEntry:
        """The entry named `name`; the error lists the names there are."""
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ManifestError(f"no model {name!r} in the manifest (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self.models)

    def with_entry(self, entry: ModelEntry) -> Manifest:
        """A copy with `entry` added or replaced (validated first)."""
        _validate_entry(entry.name, entry.to_dict())
        return replace(self, models={**self.models, entry.name: entry})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "models": {name: self.models[name].to_dict() for name in sorted(self.models)},
        }

    def dumps(self) -> str:
        """The exact file text: fixed key order, 2-space indent, trailing newline."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically; the same manifest always gives the same bytes."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(self.dumps(), encoding="utf-8")
        os.replace(tmp, out)
        return out


# ------------------------------------------------------------------------------ validation


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Checker:
    """Field checks that raise ManifestError naming the entry and the dotted field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> ManifestError:
        return ManifestError(f"{self.where}: field '{path}': {message}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected an object, got {_type_name(value)}")
        return value

    def require(self, obj: Mapping[str, Any], key: str, prefix: str = "") -> Any:
        if key not in obj:
            raise self.fail(prefix + key, "missing")
        return obj[key]

    def string(self, value: Any, path: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {_type_name(value)}")
        return value

    def integer(self, value: Any, path: str, *, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {_type_name(value)}")
        return value

    def boolean(self, value: Any, path: str, *, optional: bool = False) -> bool | None:
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_type_name(value)}")
        return value

    def choice(self, value: Any, path: str, choices: Sequence[str]) -> str:
        if value not in choices:
            raise self.fail(path, f"expected one of {list(choices)}, got {value!r}")
        return value

    def unknown(self, obj: Mapping[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
        extra = sorted(set(obj) - set(allowed))
        if extra:
            raise self.fail(prefix + extra[0], f"unknown field (allowed: {sorted(allowed)})")


_ENTRY_FIELDS = (
    "name",
    "description",
    "source",
    "kaggle",
    "quantization",
    "files",
    "prompt",
    "presets",
    "demo",
)


def _validate_entry(key: str, data: Any) -> ModelEntry:
    c = _Checker(f"model '{key}'")
    if not isinstance(data, Mapping):
        raise ManifestError(f"model '{key}': expected an object, got {_type_name(data)}")
    c.unknown(data, _ENTRY_FIELDS)
    name = c.string(c.require(data, "name"), "name")
    if name != key:
        raise c.fail("name", f"{name!r} differs from its key {key!r}")
    description = c.require(data, "description")
    if not isinstance(description, str):
        raise c.fail("description", f"expected a string, got {_type_name(description)}")

    src = c.mapping(c.require(data, "source"), "source")
    c.unknown(src, ("hf_repo", "revision"), "source.")
    source = SourceRef(
        hf_repo=c.string(src.get("hf_repo"), "source.hf_repo", optional=True),
        revision=c.string(src.get("revision"), "source.revision", optional=True),
    )

    kg = c.mapping(c.require(data, "kaggle"), "kaggle")
    c.unknown(kg, ("kind", "handle"), "kaggle.")
    kind = c.choice(c.require(kg, "kind", "kaggle."), "kaggle.kind", _KINDS)
    handle = c.string(c.require(kg, "handle", "kaggle."), "kaggle.handle")
    assert handle is not None
    parts = handle.split("/")
    want = 5 if kind == "model" else 2
    shape = "owner/model/framework/variation/version" if kind == "model" else "owner/dataset-slug"
    if len(parts) != want or not all(_SLUG.match(p) for p in parts):
        raise c.fail("kaggle.handle", f"expected {shape} for a {kind}, got {handle!r}")
    if kind == "model" and not parts[-1].isdigit():
        raise c.fail("kaggle.handle", f"the version (last part) must be a number, got {handle!r}")

    quantization = None
    q = c.require(data, "quantization")
    if q is not None:
        q = c.mapping(q, "quantization")
        c.unknown(
            q,
            ("method", "bits", "group_size", "desc_act", "sym", "library", "library_version"),
            "quantization.",
        )
        method = c.choice(
            c.require(q, "method", "quantization."), "quantization.method", _QUANT_METHODS
        )
        gptq = method == "gptq"
        bits = c.integer(q.get("bits"), "quantization.bits", optional=not gptq)
        if gptq and bits not in (2, 3, 4, 8):
            raise c.fail("quantization.bits", f"GPTQ bits must be 2, 3, 4 or 8, got {bits}")
        group = c.integer(q.get("group_size"), "quantization.group_size", optional=not gptq)
        if group is not None and group != -1 and group < 1:
            raise c.fail("quantization.group_size", f"expected -1 or a positive size, got {group}")
        quantization = Quantization(
            method=method,
            bits=bits,
            group_size=group,
            desc_act=c.boolean(q.get("desc_act"), "quantization.desc_act", optional=not gptq),
            sym=c.boolean(q.get("sym"), "quantization.sym", optional=not gptq),
            library=c.string(q.get("library"), "quantization.library", optional=not gptq),
            library_version=c.string(
                q.get("library_version"), "quantization.library_version", optional=True
            ),
        )

    raw_files = c.require(data, "files")
    if not isinstance(raw_files, list):  # [] is the unfilled state (module docstring)
        raise c.fail("files", f"expected a list, got {_type_name(raw_files)}")
    files = []
    seen: set[str] = set()
    for i, item in enumerate(raw_files):
        at = f"files[{i}]"
        item = c.mapping(item, at)
        c.unknown(item, ("path", "size", "sha256"), at + ".")
        path = c.string(c.require(item, "path", at + "."), at + ".path")
        assert path is not None
        pure = Path(path)
        if pure.is_absolute() or ".." in pure.parts or "\\" in path or path != pure.as_posix():
            raise c.fail(at + ".path", f"expected a relative POSIX path, got {path!r}")
        if path in seen:
            raise c.fail(at + ".path", f"{path!r} is listed twice")
        seen.add(path)
        size = c.integer(item.get("size"), at + ".size", optional=True)
        if size is not None and size < 0:
            raise c.fail(at + ".size", f"expected a size >= 0, got {size}")
        digest = item.get("sha256")
        if digest is not None and (not isinstance(digest, str) or not _SHA256.match(digest)):
            raise c.fail(at + ".sha256", f"expected 64 lowercase hex digits, got {digest!r}")
        files.append(FileEntry(path=path, size=size, sha256=digest))

    pr = c.mapping(c.require(data, "prompt"), "prompt")
    c.unknown(pr, ("format",), "prompt.")
    prompt = PromptSpec(
        format=c.choice(c.require(pr, "format", "prompt."), "prompt.format", _PROMPT_FORMATS)
    )

    presets = c.require(data, "presets")
    if not isinstance(presets, list):
        raise c.fail("presets", f"expected a list of preset names, got {_type_name(presets)}")
    for i, p in enumerate(presets):
        c.string(p, f"presets[{i}]")
    demo = c.boolean(c.require(data, "demo"), "demo")

    return ModelEntry(
        name=name,
        description=description,
        source=source,
        kaggle=KaggleRef(kind=kind, handle=handle),
        quantization=quantization,
        files=tuple(files),
        prompt=prompt,
        presets=tuple(presets),
        demo=bool(demo),
    )


def parse_manifest(data: Any, origin: str = "manifest") -> Manifest:
    """Validate a decoded manifest; errors start with `origin` and name entry and field."""
    if not isinstance(data, Mapping):
        raise ManifestError(f"{origin}: expected a JSON object, got {_type_name(data)}")
    extra = sorted(set(data) - {"schema_version", "models"})
    if extra:
        raise ManifestError(f"{origin}: field '{extra[0]}': unknown top-level field")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{origin}: field 'schema_version': expected {SCHEMA_VERSION}, got {version!r}"
        )
    models = data.get("models")
    if not isinstance(models, Mapping):
        raise ManifestError(
            f"{origin}: field 'models': expected an object, got {_type_name(models)}"
        )
    entries = {}
    for key, value in models.items():
        try:
            entries[key] = _validate_entry(key, value)
        except ManifestError as exc:
            raise ManifestError(f"{origin}: {exc}") from None
    return Manifest(models=entries, schema_version=version)


def load_manifest(path: str | os.PathLike[str] = DEFAULT_MANIFEST) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read the manifest: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{p}: not valid JSON: {exc}") from None
    return parse_manifest(data, str(p))


# ------------------------------------------------------------------------------ directories


def hash_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, read in 1 MiB chunks (weights are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[str]:
    """Every regular file under `directory` (POSIX relative paths, sorted), minus bookkeeping."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in names:
            if name.startswith(".") or name in IGNORED_FILES:
                continue
            full = Path(root) / name
            if full.is_file():
                found.append(full.relative_to(directory).as_posix())
    return sorted(found)


def entry_from_directory(directory: str | os.PathLike[str], name: str, **fields: Any) -> ModelEntry:
    """An entry listing every file of `directory` with its size and sha256.

    `fields` gives the rest (description, source, kaggle, quantization, prompt, presets, demo) as
    dataclasses or plain dicts; the result is validated like a loaded entry.
    """
    base = Path(directory)
    if not base.is_dir():
        raise ManifestError(f"model '{name}': {base} is not a directory")
    paths = _listed_files(base)
    if not paths:
        raise ManifestError(f"model '{name}': {base} holds no files")
    files = [
        {"path": p, "size": (base / p).stat().st_size, "sha256": hash_file(base / p)} for p in paths
    ]
    data: dict[str, Any] = {
        "name": name,
        "description": "",
        "source": {"hf_repo": None, "revision": None},
        "quantization": None,
        "prompt": {"format": "numina"},
        "presets": [],
        "demo": False,
    }
    for key, value in fields.items():
        if key not in _ENTRY_FIELDS or key in ("name", "files"):
            raise ManifestError(f"model '{name}': field '{key}': cannot be given here")
        data[key] = _plain(value)
    data["files"] = files
    if "kaggle" not in data:
        raise ManifestError(f"model '{name}': field 'kaggle': missing")
    return _validate_entry(name, data)


def _plain(value: Any) -> Any:
    """Dataclasses and tuples to what the JSON validator expects."""
    if isinstance(value, ModelEntry):
        return value.to_dict()
    if isinstance(value, (SourceRef, KaggleRef, Quantization, PromptSpec)):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def fill(manifest: Manifest, name: str, directory: str | os.PathLike[str]) -> Manifest:
    """A copy of `manifest` whose entry `name` has every missing size and sha256 added.

    Raises ManifestError naming the file when one is missing from `directory`, or when a size or
    hash already recorded disagrees with the file there (wrong download, wrong version).
    """
    entry = manifest.get(name)
    base = Path(directory)
    if entry.unfilled:  # list what the directory holds: the weights the user made
        if not base.is_dir():
            raise ManifestError(f"model '{name}': {base} is not a directory")
        listed = [FileEntry(path=p) for p in _listed_files(base)]
        if not listed:
            raise ManifestError(f"model '{name}': {base} holds no files")
        entry = replace(entry, files=tuple(listed))
    files = []
    for f in entry.files:
        full = base / f.path
        if not full.is_file():
            raise ManifestError(f"model '{name}': file '{f.path}' is missing from {base}")
        size = full.stat().st_size
        if f.size is not None and f.size != size:
            raise ManifestError(
                f"model '{name}': file '{f.path}' is {size} bytes in {base}, "
                f"the manifest says {f.size}"
            )
        digest = hash_file(full)
        if f.sha256 is not None and f.sha256 != digest:
            raise ManifestError(
                f"model '{name}': file '{f.path}' has sha256 {digest} in {base}, "
                f"the manifest says {f.sha256}"
            )
        files.append(FileEntry(path=f.path, size=size, sha256=digest))
    return manifest.with_entry(replace(entry, files=tuple(files)))


def verify_directory(
    entry: ModelEntry, directory: str | os.PathLike[str], check_hashes: bool = False
) -> list[str]:
    """Problems with `directory` as the weights of `entry` (empty when it matches).

    Sizes are always compared (cheap); hashes only with `check_hashes` (minutes for 8 GB).
    """
    base = Path(directory)
    if not base.is_dir():
        return [f"{base} is not a directory"]
    problems = []
    for f in entry.files:
        full = base / f.path
        if not full.is_file():
            problems.append(f"missing file {f.path}")
            continue
        size = full.stat().st_size
        if f.size is not None and size != f.size:
            problems.append(f"wrong size for {f.path}: {size} bytes, expected {f.size}")
            continue
        if check_hashes and f.sha256 is not None:
            digest = hash_file(full)
            if digest != f.sha256:
                problems.append(f"wrong sha256 for {f.path}: {digest}, expected {f.sha256}")
    return problems


def candidate_directories(
    entry: ModelEntry, roots: Sequence[str | os.PathLike[str]] | None = None
) -> list[Path]:
    """Where Kaggle mounts the entry's model or dataset (`kaggle_paths.mount_dirs`), in the
    order `locate` tries them; `roots` defaults to `kaggle_paths.input_roots()`."""
    return mount_dirs(entry.kaggle.kind, entry.kaggle.handle, _roots(roots))


def _roots(roots: Sequence[str | os.PathLike[str]] | None) -> Sequence[str | os.PathLike[str]]:
    return input_roots() if roots is None else roots


def _holds(entry: ModelEntry, directory: Path) -> bool:
    return directory.is_dir() and all((directory / f.path).is_file() for f in entry.files)


def locate(
    entry: ModelEntry,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    override: str | os.PathLike[str] | None = None,
) -> Path:
    """The directory holding the entry's files under the Kaggle input mounts.

    `override` (an explicit directory) wins when given. A mount whose files sit one folder deeper
    (an upload of the folder itself) is found too. Raises ModelNotFoundError listing every place
    looked at and what was wrong there.
    """
    looked: list[str] = []
    candidates = [Path(override)] if override is not None else candidate_directories(entry, roots)
    for cand in candidates:
        if not cand.is_dir():
            looked.append(f"{cand} (absent)")
            continue
        if _holds(entry, cand):
            return cand
        subdirs = sorted(p for p in cand.iterdir() if p.is_dir())
        nested = [p for p in subdirs if _holds(entry, p)]
        if len(nested) == 1:
            return nested[0]
        missing = [f.path for f in entry.files if not (cand / f.path).is_file()]
        looked.append(f"{cand} (present, lacks {', '.join(missing[:3])})")
    where = "\n  ".join(looked)
    raise ModelNotFoundError(
        f"model '{entry.name}' ({entry.kaggle.kind} {entry.kaggle.handle}) not found; "
        f"attach it to the notebook or pass its directory. Looked in:\n  {where}"
    )


@dataclass(frozen=True)
class Weights:
    """A weights directory found and checked, with the model protocol decided for it."""

    path: Path
    protocol: Protocol
    entry: ModelEntry | None = None  # None: a directory given outside the manifest


def find_weights(
    entry_or_name: ModelEntry | str | None,
    manifest_path: str | os.PathLike[str] | None = None,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    explicit_dir: str | os.PathLike[str] | None = None,
    check_hashes: bool = False,
    prompt_format: str | None = None,
) -> Weights:
    """The one way to find weights: locate, check, and decide the model protocol.

    `entry_or_name`: a manifest entry, or its name in `manifest_path` (default: the kit's
    manifest), located under `roots` (default: `kaggle_paths.input_roots()`, both layouts) or
    in `explicit_dir`, then checked file by file (sizes; sha256 with `check_hashes`). None: a
    model outside the manifest in `explicit_dir`, which is only checked to exist, spoken in
    `prompt_format` (None: decided from the directory alone). The protocol comes from the
    entry's `prompt.format` and the directory (`protocols.decide_protocol`).
    Raises FileNotFoundError (ModelNotFoundError when nothing was found), ManifestError.
    """
    if entry_or_name is None:
        if explicit_dir is None:
            raise ValueError("find_weights needs a manifest entry or an explicit directory")
        path = Path(explicit_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path} does not exist")
        return Weights(path, decide_protocol(prompt_format, path))
    if isinstance(entry_or_name, ModelEntry):
        entry, source = entry_or_name, "its manifest entry"
    else:
        path = Path(manifest_path) if manifest_path else DEFAULT_MANIFEST
        entry, source = load_manifest(path).get(entry_or_name), str(path)
    if entry.unfilled:  # nothing to check a directory against: refuse, never guess
        raise ManifestError(
            f"model '{entry.name}' is unfilled in {source}: it lists no files yet. Make the "
            f"weights (training/README.md, 'Quantizing an existing model'), then run "
            f"`python -m kaggle_submission manifest fill DIR --name {entry.name}`, set "
            f"kaggle.handle, upload and attach them"
        )
    found = locate(entry, roots, override=explicit_dir)
    problems = verify_directory(entry, found, check_hashes=check_hashes)
    if problems:
        raise FileNotFoundError(
            f"weights for {entry.name} ({entry.kaggle.handle}) in {found} do not match "
            f"{source}: " + "; ".join(problems)
        )
    log.info(
        "weights: %s (%s %s) at %s: %d files match the manifest (%s)",
        entry.name,
        entry.kaggle.kind,
        entry.kaggle.handle,
        found,
        len(entry.files),
        "sizes and sha256" if check_hashes else "sizes",
    )
    return Weights(found, decide_protocol(entry.prompt.format, found), entry)


# ------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``manifest {fill,verify,show}``: the lead wires this into ``python -m kaggle_submission``."""
    parser = argparse.ArgumentParser(
        prog="python -m kaggle_submission manifest", description="weights manifest tools"
    )
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="manifest file")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fill = sub.add_parser("fill", help="add missing sizes and sha256 from a directory")
    p_fill.add_argument("directory")
    p_fill.add_argument("--name", help="entry name (default: the one entry the directory holds)")
    p_verify = sub.add_parser("verify", help="check a directory against an entry")
    p_verify.add_argument("directory")
    p_verify.add_argument("--name")
    p_verify.add_argument("--no-hashes", action="store_true", help="compare sizes only")
    sub.add_parser("show", help="list entries")
    args = parser.parse_args(argv)

    try:
        manifest = load_manifest(args.manifest)
        if args.command == "show":
            for name in manifest.names():
                e = manifest.get(name)
                state = (
                    "unfilled: no files listed"
                    if e.unfilled
                    else "complete"
                    if e.complete
                    else "sizes/hashes missing"
                )
                print(f"{name}: {e.kaggle.kind} {e.kaggle.handle} ({len(e.files)} files, {state})")
            return 0
        name = args.name or _guess_entry(manifest, Path(args.directory))
        if args.command == "fill":
            fill(manifest, name, args.directory).save(args.manifest)
            print(f"filled {name} from {args.directory} into {args.manifest}")
            return 0
        problems = verify_directory(
            manifest.get(name), args.directory, check_hashes=not args.no_hashes
        )
        for problem in problems:
            print(f"{name}: {problem}", file=sys.stderr)
        if not problems:
            print(f"{name}: {args.directory} matches")
        return 1 if problems else 0
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _guess_entry(manifest: Manifest, directory: Path) -> str:
    # an unfilled entry holds any directory: it is only ever named (--name)
    matches = [
        n
        for n in manifest.names()
        if not manifest.get(n).unfilled and _holds(manifest.get(n), directory)
    ]
    if len(matches) != 1:
        found = ", ".join(matches) or "none"
        raise ManifestError(
            f"{directory}: pass --name (entries whose files are all there: {found})"
        )
    return matches[0]


if __name__ == "__main__":
    raise SystemExit(main())
