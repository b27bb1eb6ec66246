"""Build the Kaggle submission: one self-contained notebook, its kernel-metadata.json, and
(optionally) the offline wheels dataset.

    python build_kernel.py --preset aimo1-t4x2 --out dist/kernel --owner USER [--wheels]
    kaggle kernels push -p dist/kernel        # see docs/upload.md

Why a build: the competition notebook runs offline, so the kit's source travels inside the
notebook (one cell per module of the Kaggle path, written to disk at start-up; the offline tools
stay out) and its dependencies travel as a wheels dataset. The notebook is filled from
notebooks/kernel_template.py; the metadata attaches the competition, the preset's weights (from
weights_manifest.json) and the wheels, with internet off.

Everything is checked before anything is written: the notebook validates, every module of the
Kaggle path is embedded byte for byte, the config cell reproduces the preset, the metadata agrees
with the manifest, and a second render gives the same bytes (no timestamps, sorted keys, cell ids
derived from content), so a rebuild from the same inputs changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from kaggle_submission import manifest as mf  # noqa: E402
from kaggle_submission.competition import get_adapter  # noqa: E402
from kaggle_submission.hardware import MACHINE_SHAPES  # noqa: E402  # kernel-metadata shapes
from kaggle_submission.kaggle_paths import COMPETITION_SLUGS, MODEL_HANDLE_SHAPE  # noqa: E402
from kaggle_submission.offline import layers  # noqa: E402
from kaggle_submission.presets import (  # noqa: E402
    PRESETS,
    Preset,
    get_preset,
    parse_overrides,
    read_preset_file,
)

PACKAGE = "kaggle_submission"
TEMPLATE = REPO / "notebooks" / "kernel_template.py"
REQUIREMENTS = REPO / "requirements.txt"
KIT_EXTRA_FILES = ("weights_manifest.json", "requirements.txt")
"""Files the notebook writes beside the package: the manifest it checks weights against and the
requirements its install cell installs."""

DEFAULT_WHEELS_SLUG = "aimo-kit-wheels"
DEFAULT_OWNER = "OWNER"

# Kaggle's runtime: Python 3.12 on manylinux x86_64 (Ubuntu 22.04, glibc 2.35).
KAGGLE_PYTHON = "3.12"
KAGGLE_GLIBC_MINOR = 35
WHEEL_PLATFORMS: tuple[str, ...] = (
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(KAGGLE_GLIBC_MINOR, 4, -1)),
)
"""pip does not expand --platform to older glibc versions (only manylinux2014 -> 2010 -> 1), so
every manylinux_2_N tag Kaggle's glibc can run is listed."""

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class BuildError(RuntimeError):
    """The inputs cannot give a correct kernel (the message says which and why)."""


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class BuildOptions:
    """Attributes:
    preset: a preset name or a preset file (`{"base", "overrides", "name", "description"}`).
    overrides: dotted overrides on top (the config cell's JSON).
    manifest: the weights manifest the model entry comes from.
    owner: Kaggle user that owns the kernel (and, by default, the wheels dataset).
    slug, title: the kernel's URL slug and title (each derived from the other when not given).
    private: kernel visibility.
    competition_source: competition slug to attach (default: the preset's competition).
    wheels_dataset: owner/slug of the wheels dataset ("" for none; None: <owner>/aimo-kit-wheels).
    requirements: the requirements file the install cell installs.
    docker_pinning: docker_image_pinning_type ("original" keeps the image the wheels match).
    """

    preset: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    manifest: Path = mf.DEFAULT_MANIFEST
    owner: str = DEFAULT_OWNER
    slug: str | None = None
    title: str | None = None
    private: bool = True
    competition_source: str | None = None
    wheels_dataset: str | None = None
    requirements: Path = REQUIREMENTS
    docker_pinning: str | None = "original"


@dataclass(frozen=True)
class Build:
    """A rendered kernel: the exact bytes to write and what they were made from."""

    slug: str
    notebook_text: str
    metadata_text: str
    metadata: dict[str, Any]
    preset: Preset
    base: str
    overrides: dict[str, Any]
    entry: mf.ModelEntry | None
    files: dict[str, str]
    warnings: tuple[str, ...] = ()

    @property
    def notebook_name(self) -> str:
        return f"{self.slug}.ipynb"


# ------------------------------------------------------------------------------ inputs


def slugify(text: str) -> str:
    """Kaggle's slug of a title: lower case, runs of other characters become one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def package_files(root: Path = REPO) -> dict[str, str]:
    """The Kaggle path's modules (POSIX paths from the repo root, sorted): what the notebook's
    entry (`notebook_main`) imports, at any depth, with the backends' registry's Kaggle backends
    and the sandbox's worker, read from the syntax trees by `offline/layers.py`. The offline
    tools, the CLI and the test-double backends never run on Kaggle, so they are not embedded."""
    base = root / PACKAGE
    if not (base / "__init__.py").is_file():
        raise BuildError(f"{base} is not the kit's package (no __init__.py)")
    graph = layers.scan(root, packages=(PACKAGE,))
    files = {}
    for name in layers.kaggle_closure(graph):
        path = graph.modules[name]
        files[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
    return dict(sorted(files.items()))


def resolve_preset_input(
    name_or_path: str, extra: Mapping[str, Any]
) -> tuple[str, dict[str, Any], Preset]:
    """(base preset name, overrides, effective preset): a preset file becomes its base plus its
    overrides (name and description included), so the config cell can rebuild it by name."""
    if name_or_path in PRESETS:
        base, overrides = name_or_path, {}
    else:
        try:
            spec = read_preset_file(name_or_path)
        except ValueError as exc:
            raise BuildError(
                f"unknown preset {name_or_path!r}: choose one of {sorted(PRESETS)} or a preset "
                f"file ({exc})"
            ) from exc
        base, overrides = spec.base, dict(spec.overrides)
        overrides["name"] = spec.name
        if spec.description is not None:
            overrides["description"] = spec.description
    overrides.update(extra)
    try:
        preset = get_preset(base).with_overrides(overrides)
    except (ValueError, TypeError) as exc:
        raise BuildError(f"preset {base!r} with overrides {overrides}: {exc}") from exc
    # the budget clamps every share to the per-call limit anyway; a cap above it is a mistake
    limit = get_adapter(preset.competition).PER_CALL_LIMIT_S
    problem = preset.budget.with_per_call_limit(limit).per_call_problem()
    if problem:
        raise BuildError(f"preset {preset.name} ({preset.competition}): {problem}")
    return base, dict(sorted(overrides.items())), preset


def model_entry(preset: Preset, manifest_path: Path) -> tuple[mf.ModelEntry | None, str]:
    """The manifest entry of the preset's model and the manifest text the notebook embeds (that
    entry alone). The demo model needs none: it is built offline (`python -m training.demo`)."""
    if preset.model == "demo":
        return None, mf.Manifest(models={}).dumps()
    if not manifest_path.is_file():
        raise BuildError(
            f"preset {preset.name} loads model {preset.model!r} but {manifest_path} does not "
            "exist: publish the weights (training/publish.py) or pass --manifest"
        )
    try:
        entry = mf.load_manifest(manifest_path).get(preset.model)
    except mf.ManifestError as exc:
        raise BuildError(str(exc)) from exc
    return entry, mf.Manifest(models={entry.name: entry}).dumps()


# ------------------------------------------------------------------------------ rendering


def parse_template(text: str) -> list[tuple[str, str]]:
    """[(kind, source)] from a percent-format template; kind is "markdown", "code" or the
    marker of a generated section ("kit-files")."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = re.match(r"^# %%(?: (.*))?$", line)
        if match:
            marker = (match.group(1) or "").strip()
            kind = "markdown" if marker == "[markdown]" else (marker or "code")
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        if kind == "markdown":
            lines = [re.sub(r"^# ?", "", line) for line in lines]
        out.append((kind, "\n".join(lines).strip("\n")))
    return out


def python_literal(text: str) -> str:
    """A Python expression equal to `text`, as readable as possible: a raw triple-quoted string
    when that round-trips, else one repr() per line."""
    safe = "'''" not in text and not text.endswith(("'", "\\")) and "\r" not in text
    if safe:
        return f"r'''\n{text}'''.removeprefix(\"\\n\")"
    parts = [f"    {line!r}" for line in text.splitlines(keepends=True)] or ["    ''"]
    return "(\n" + "\n".join(parts) + "\n)"


def file_cell(path: str, text: str, note: str = "") -> str:
    """The cell that adds one embedded file to KIT_FILES."""
    head = f"# {path}" + (f": {note}" if note else "")
    return f"{head}\nKIT_FILES[{json.dumps(path)}] = {python_literal(text)}"


_PLACEHOLDER = re.compile(r"__[A-Z][A-Z_]*[A-Z]__")


def _fill(name: str, values: Mapping[str, str]) -> str:
    if name not in values:
        raise BuildError(f"{TEMPLATE}: unknown placeholder {name}")
    return values[name]


def _cell_id(kind: str, source: str, seen: set[str]) -> str:
    """Stable across rebuilds and moves: a hash of the cell's kind and text (+ a counter for
    identical cells)."""
    digest = hashlib.sha256(f"{kind}\n{source}".encode()).hexdigest()[:12]
    cid, n = digest, 1
    while cid in seen:
        n += 1
        cid = f"{digest}-{n}"
    seen.add(cid)
    return cid


def _model_text(entry: mf.ModelEntry | None) -> str:
    if entry is None:
        return (
            "the DEMO model (a tiny Llama from `python -m training.demo`; not a competition model)"
        )
    text = f"`{entry.name}`: Kaggle {entry.kaggle.kind} `{entry.kaggle.handle}`"
    q = entry.quantization
    if q is not None and q.method != "none":
        text += f", {q.method.upper()} {q.bits}-bit group {q.group_size} desc_act={q.desc_act}"
    return text


def kernel_metadata(
    options: BuildOptions, preset: Preset, entry: mf.ModelEntry | None, slug: str, title: str
) -> dict[str, Any]:
    """kernel-metadata.json as `kaggle kernels push` reads it (booleans as JSON booleans).

    enable_internet is always written: the CLI defaults it to true and code competitions
    reject kernels with internet on.
    """
    competition = options.competition_source or COMPETITION_SLUGS[preset.competition]
    datasets = []
    models = []
    if entry is not None:
        (models if entry.kaggle.kind == "model" else datasets).append(entry.kaggle.handle)
    wheels = _wheels_dataset(options)
    if wheels:
        datasets.append(wheels)
    gpu = preset.hardware != "cpu"
    metadata: dict[str, Any] = {
        "id": f"{options.owner}/{slug}",
        "title": title,
        "code_file": f"{slug}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": options.private,
        "enable_gpu": gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "competition_sources": [competition],
        "dataset_sources": sorted(set(datasets)),
        "model_sources": sorted(set(models)),
        "kernel_sources": [],
    }
    if gpu:
        if preset.hardware not in MACHINE_SHAPES:
            raise BuildError(
                f"preset {preset.name}: no Kaggle machine_shape known for hardware "
                f"{preset.hardware!r} (known: {sorted(MACHINE_SHAPES)})"
            )
        metadata["machine_shape"] = MACHINE_SHAPES[preset.hardware]
    if options.docker_pinning:
        metadata["docker_image_pinning_type"] = options.docker_pinning
    return metadata


def _wheels_dataset(options: BuildOptions) -> str:
    if options.wheels_dataset is None:
        return f"{options.owner}/{DEFAULT_WHEELS_SLUG}"
    return options.wheels_dataset


def render(options: BuildOptions, root: Path = REPO) -> Build:
    """Render the notebook and metadata in memory (nothing is written)."""
    import nbformat

    base, overrides, preset = resolve_preset_input(options.preset, options.overrides)
    entry, manifest_text = model_entry(preset, Path(options.manifest))
    title = options.title or f"AIMO kit {preset.name}"
    slug = options.slug or slugify(title)
    package = package_files(root)
    requirements = Path(options.requirements).read_text(encoding="utf-8")
    files = {**package, "weights_manifest.json": manifest_text, "requirements.txt": requirements}
    kit_hash = hashlib.sha256(
        json.dumps(files, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    metadata = kernel_metadata(options, preset, entry, slug, title)
    hardware = preset.hardware
    if hardware in MACHINE_SHAPES:
        hardware += f" (`machine_shape` {MACHINE_SHAPES[hardware]})"
    competition = metadata["competition_sources"][0]
    values = {
        "__TITLE__": title,
        "__PRESET_NAME__": preset.name,
        "__PRESET__": base,
        "__DESCRIPTION__": preset.description,
        "__COMPETITION__": f"{preset.competition} (`{competition}`)",
        "__MODEL__": _model_text(entry),
        "__HARDWARE__": hardware,
        "__KIT__": f"{len(package)} modules, sha256 `{kit_hash[:16]}`",
        "__WHEELS_DATASET__": _wheels_dataset(options),
        "__OVERRIDES_JSON__": json.dumps(overrides, indent=2, sort_keys=True, ensure_ascii=False),
    }
    if overrides:
        values["__DESCRIPTION__"] += f" (preset `{base}` with the config cell's overrides)"

    cells = []
    seen: set[str] = set()
    notes = {
        "weights_manifest.json": "the entry the run cell checks the attached weights against",
        "requirements.txt": "what the install cell installs from the wheels dataset",
    }
    for kind, source in parse_template(TEMPLATE.read_text(encoding="utf-8")):
        if kind == "kit-files":
            for path in [*package, *KIT_EXTRA_FILES]:
                text = file_cell(path, files[path], notes.get(path, ""))
                cells.append(nbformat.v4.new_code_cell(text, id=_cell_id("code", text, seen)))
            continue
        source = _PLACEHOLDER.sub(lambda m: _fill(m.group(0), values), source)
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(source, id=_cell_id(kind, source, seen)))
        elif kind == "code":
            cells.append(nbformat.v4.new_code_cell(source, id=_cell_id(kind, source, seen)))
        else:
            raise BuildError(f"{TEMPLATE}: unknown cell marker {kind!r}")
    nb = nbformat.v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "aimo_kit": {
                "preset": preset.name,
                "base_preset": base,
                "competition": preset.competition,
                "model": preset.model,
                "kit_sha256": kit_hash,
                "kit_files": len(files),
            },
        },
    )
    return Build(
        slug=slug,
        notebook_text=nbformat.writes(nb),
        metadata_text=json.dumps(metadata, indent=2, sort_keys=True) + "\n",
        metadata=metadata,
        preset=preset,
        base=base,
        overrides=overrides,
        entry=entry,
        files=files,
    )


# ------------------------------------------------------------------------------ validation


def _exec_cell(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(source, "<cell>", "exec"), namespace)  # our own generated cells only
    return namespace


def validate(build: Build, options: BuildOptions, root: Path = REPO) -> list[str]:
    """Raise BuildError on anything that would make a wrong kernel; return warnings."""
    import nbformat

    errors: list[str] = []
    warnings: list[str] = []
    nb = nbformat.reads(build.notebook_text, as_version=4)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        errors.append(f"notebook does not validate: {exc.message}")

    # The embedded files, read back by running the cells that define them.
    embedded: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            compile(cell.source, f"<cell {cell.id}>", "exec")
        except SyntaxError as exc:
            errors.append(f"cell {cell.id} is not valid Python: {exc}")
            continue
        if re.search(r"^KIT_FILES\[", cell.source, re.MULTILINE):
            embedded.update(_exec_cell(cell.source, {"KIT_FILES": {}})["KIT_FILES"])
    expected = package_files(root)
    missing = sorted(set(expected) - set(embedded))
    if missing:
        errors.append(f"modules not embedded: {missing}")
    extra = sorted(set(embedded) - set(expected) - set(KIT_EXTRA_FILES))
    if extra:
        errors.append(f"files embedded that are not package modules: {extra}")
    for path, text in expected.items():
        if path in embedded and embedded[path] != text:
            errors.append(f"{path}: embedded text differs from the file")
    for path in KIT_EXTRA_FILES:
        if embedded.get(path) != build.files[path]:
            errors.append(f"{path}: embedded text differs from what the build used")

    # The config cell rebuilds the same preset.
    config = [
        c for c in nb.cells if c.cell_type == "code" and re.search(r"^PRESET = ", c.source, re.M)
    ]
    if len(config) != 1:
        errors.append("expected exactly one config cell")
    else:
        ns = _exec_cell(config[0].source, {})
        try:
            rebuilt = get_preset(ns["PRESET"]).with_overrides(ns["OVERRIDES"])
            if rebuilt.to_dict() != build.preset.to_dict():
                errors.append("the config cell does not rebuild the preset")
        except (KeyError, ValueError, TypeError) as exc:
            errors.append(f"the config cell does not give a preset: {exc}")
    if not any("notebook_main.main(" in c.source for c in nb.cells if c.cell_type == "code"):
        errors.append("no run cell calls notebook_main.main")

    # The metadata, against the preset and the manifest.
    meta = build.metadata
    required = {
        "id": str,
        "title": str,
        "code_file": str,
        "language": str,
        "kernel_type": str,
        "is_private": bool,
        "enable_gpu": bool,
        "enable_internet": bool,
        "competition_sources": list,
        "dataset_sources": list,
        "model_sources": list,
    }
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            errors.append(f"kernel-metadata.json: {key} missing or not a {kind.__name__}")
    owner, _, slug = str(meta.get("id", "")).partition("/")
    if not _OWNER.match(owner) or not _SLUG.match(slug):
        errors.append(f"kernel-metadata.json: id {meta.get('id')!r} is not owner/slug")
    if len(str(meta.get("title", ""))) < 5:
        errors.append("kernel-metadata.json: title must have at least 5 characters (Kaggle CLI)")
    if slugify(str(meta.get("title", ""))) != slug:
        warnings.append(f"title {meta.get('title')!r} does not resolve to the slug {slug!r}")
    if meta.get("code_file") != build.notebook_name:
        errors.append("kernel-metadata.json: code_file is not the notebook")
    if meta.get("enable_internet") is not False:
        errors.append("kernel-metadata.json: enable_internet must be false")
    if meta.get("enable_gpu") != (build.preset.hardware != "cpu"):
        errors.append("kernel-metadata.json: enable_gpu disagrees with the preset's hardware")
    known = COMPETITION_SLUGS[build.preset.competition]
    if meta.get("competition_sources") != [options.competition_source or known]:
        errors.append("kernel-metadata.json: competition_sources disagree with the preset")
    if options.competition_source and options.competition_source != known:
        warnings.append(
            f"competition source {options.competition_source!r} is not {known!r}, the data "
            f"mount the notebook looks for"
        )
    entry = build.entry
    handles = list(meta.get("model_sources", [])) + [
        d for d in meta.get("dataset_sources", []) if d != _wheels_dataset(options)
    ]
    if entry is None:
        if meta.get("model_sources"):
            errors.append("a demo preset attaches no model")
    else:
        if handles != [entry.kaggle.handle]:
            errors.append(
                f"weights sources {handles} do not match the manifest entry {entry.name}: "
                f"{entry.kaggle.kind} {entry.kaggle.handle}"
            )
        for handle in meta.get("model_sources", []):
            parts = handle.split("/")
            if len(parts) != 5 or not parts[4].isdigit():
                errors.append(f"model source {handle!r} is not {MODEL_HANDLE_SHAPE}")
        if entry.kaggle.handle.split("/")[0] == DEFAULT_OWNER:
            warnings.append(
                f"manifest entry {entry.name}: kaggle handle {entry.kaggle.handle} still says "
                f"{DEFAULT_OWNER}: upload the weights and set the handle Kaggle gives them"
            )
        unsized = [f.path for f in entry.files if f.size is None]
        if entry.unfilled:
            warnings.append(
                f"manifest entry {entry.name} is unfilled (no files listed): the kernel will "
                f"refuse to start until the weights are made and filled in "
                f"(`python -m kaggle_submission manifest fill DIR --name {entry.name}`)"
            )
        elif unsized:
            warnings.append(
                f"manifest entry {entry.name}: {len(unsized)} files have no size, so the kernel "
                f"cannot check them (run `python -m kaggle_submission manifest fill`)"
            )
        if (
            entry.presets
            and build.preset.name not in entry.presets
            and build.base not in (entry.presets)
        ):
            warnings.append(
                f"manifest entry {entry.name} lists presets {list(entry.presets)}, "
                f"not {build.preset.name}"
            )
    if owner == DEFAULT_OWNER:
        warnings.append("no --owner given: kernel-metadata.json id says OWNER")

    # Reproducible: the same inputs render the same bytes.
    again = render(options, root)
    if (again.notebook_text, again.metadata_text) != (build.notebook_text, build.metadata_text):
        errors.append("two renders of the same inputs differ: the build is not reproducible")
    if errors:
        raise BuildError("the kernel failed its checks:\n  " + "\n  ".join(errors))
    return warnings


def build(options: BuildOptions, out: Path | None = None, root: Path = REPO) -> Build:
    """Render, validate, then write `<out>/<slug>.ipynb` and `<out>/kernel-metadata.json`."""
    rendered = render(options, root)
    warnings = validate(rendered, options, root)
    rendered = Build(**{**rendered.__dict__, "warnings": tuple(warnings)})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / rendered.notebook_name, rendered.notebook_text)
        _write(out / "kernel-metadata.json", rendered.metadata_text)
    return rendered


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ wheels


def wheels_command(
    requirements: Path,
    dest: Path,
    python_version: str = KAGGLE_PYTHON,
    platforms: Sequence[str] = WHEEL_PLATFORMS,
    no_deps: bool = True,
    python: str = sys.executable,
) -> list[str]:
    """`pip download` of binary wheels for Kaggle's interpreter, whatever this machine runs.
    `--no-deps` by default: requirements.txt is the exact set the image lacks (their
    dependencies are the image's own; `check_downloaded` proves it)."""
    abi = "cp" + python_version.replace(".", "")
    command = [
        python,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in platforms:
        command += ["--platform", platform]
    if no_deps:
        command.append("--no-deps")
    command += ["--dest", str(dest), "-r", str(requirements)]
    return command


def dataset_metadata(handle: str, title: str = "AIMO kit wheels") -> dict[str, Any]:
    """dataset-metadata.json for `kaggle datasets create -p <dir>`."""
    return {
        "id": handle,
        "title": title,
        "licenses": [{"name": "other"}],
        "description": (
            f"Offline wheels for the AIMO submission kit (Python {KAGGLE_PYTHON}, manylinux "
            "x86_64), installed by the notebook with pip --no-index --find-links. Each wheel "
            "keeps its own license."
        ),
    }


def check_downloaded(requirements: Path, dest: Path) -> Any:
    """The offline resolver check (kaggle_submission.wheelset) on the downloaded wheels."""
    from kaggle_submission import wheelset

    return wheelset.check_files(requirements, dest)


def download_wheels(
    requirements: Path, dest: Path, handle: str, no_deps: bool = True
) -> list[Path]:
    """Download the wheels and write the dataset's metadata beside them."""
    dest.mkdir(parents=True, exist_ok=True)
    command = wheels_command(requirements, dest, no_deps=no_deps)
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    shutil.copyfile(requirements, dest / "requirements.txt")
    meta = json.dumps(dataset_metadata(handle), indent=2, sort_keys=True) + "\n"
    _write(dest / "dataset-metadata.json", meta)
    return sorted(dest.glob("*.whl"))


# ------------------------------------------------------------------------------ CLI


def _pairs(pairs: Sequence[str]) -> dict[str, Any]:
    try:
        return parse_overrides(pairs)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python build_kernel.py",
        description="Build the Kaggle submission notebook, its metadata and the wheels dataset.",
    )
    parser.add_argument("--preset", required=True, help="preset name or preset file")
    parser.add_argument("--out", default="dist/kernel", help="output folder (dist/kernel)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset override written into the config cell, e.g. engine.num_rollouts=32",
    )
    parser.add_argument("--manifest", default=str(mf.DEFAULT_MANIFEST), help="weights manifest")
    parser.add_argument(
        "--owner",
        default=os.environ.get("KAGGLE_USERNAME", DEFAULT_OWNER),
        help="Kaggle user owning the kernel (default $KAGGLE_USERNAME)",
    )
    parser.add_argument("--title", help="kernel title (default 'AIMO kit <preset>')")
    parser.add_argument("--slug", help="kernel slug (default: the title's slug)")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True)
    visibility.add_argument("--public", dest="private", action="store_false")
    parser.add_argument(
        "--data-source",
        "--competition-source",
        dest="competition_source",
        help="competition slug to attach (default: the preset's competition)",
    )
    parser.add_argument(
        "--wheels-dataset",
        help=f"owner/slug of the wheels dataset (default <owner>/{DEFAULT_WHEELS_SLUG})",
    )
    parser.add_argument("--no-wheels-dataset", action="store_true", help="attach no wheels dataset")
    parser.add_argument("--requirements", default=str(REQUIREMENTS), help="runtime requirements")
    parser.add_argument(
        "--docker-pinning",
        default="original",
        choices=["original", "latest", "none"],
        help="docker_image_pinning_type (default original: the image the wheels were built for)",
    )
    parser.add_argument(
        "--wheels", action="store_true", help="also download the wheels into --wheels-dir"
    )
    parser.add_argument("--wheels-dir", default="dist/wheels", help="wheels dataset folder")
    parser.add_argument(
        "--wheels-no-deps",
        action="store_true",
        help="(the default now: requirements.txt is the exact, curated set; kept for scripts)",
    )
    parser.add_argument(
        "--wheels-closure",
        action="store_true",
        help="download every dependency too (the whole closure, ~4.9 GB; no resolver check)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = BuildOptions(
        preset=args.preset,
        overrides=_pairs(args.set),
        manifest=Path(args.manifest),
        owner=args.owner,
        slug=args.slug,
        title=args.title,
        private=args.private,
        competition_source=args.competition_source,
        wheels_dataset="" if args.no_wheels_dataset else args.wheels_dataset,
        requirements=Path(args.requirements),
        docker_pinning=None if args.docker_pinning == "none" else args.docker_pinning,
    )
    try:
        result = build(options, Path(args.out))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out = Path(args.out)
    meta = result.metadata
    print(f"wrote {out / result.notebook_name} ({len(result.files)} kit files)")
    print(f"wrote {out / 'kernel-metadata.json'}: {meta['id']}")
    print(f"  competition {meta['competition_sources']}, models {meta['model_sources']}, ")
    print(f"  datasets {meta['dataset_sources']}, machine {meta.get('machine_shape', 'CPU')}")
    if args.wheels:
        handle = _wheels_dataset(options) or f"{options.owner}/{DEFAULT_WHEELS_SLUG}"
        wheels = download_wheels(
            options.requirements, Path(args.wheels_dir), handle, not args.wheels_closure
        )
        print(
            f"wrote {len(wheels)} wheels and dataset-metadata.json ({handle}) to {args.wheels_dir}"
        )
        if not args.wheels_closure:
            result = check_downloaded(options.requirements, Path(args.wheels_dir))
            print(result.render())
            if not result.ok:
                print(
                    "error: the wheel set does not resolve against Kaggle's image: do not "
                    "upload it",
                    file=sys.stderr,
                )
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
