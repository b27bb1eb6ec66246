"""Where Kaggle mounts things: the one place that knows the /kaggle/input layout.

Models attached to a notebook appear under ``<root>/models/<owner>/<model>/<framework>/
<variation>/<version>`` (newer sessions) or ``<root>/<model>/<framework>/<variation>/<version>``
(classic); datasets under ``<root>/datasets/<owner>/<slug>`` or ``<root>/<slug>``; the
competition's data under ``<root>/competitions/<slug>`` or ``<root>/<slug>``. Every list below
gives the newer layout first, per root. The weights lookup (`manifest`), the notebook's run
(`notebook_main`) and the build (`build_kernel.py`) all read it from here.

Standard library only: the install cell imports it before the wheels are in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COMPETITION_SLUGS",
    "INPUT_ROOT_ENV",
    "KAGGLE_INPUT",
    "competition_dirs",
    "dataset_dirs",
    "input_roots",
    "model_dirs",
    "mount_dirs",
    "on_kaggle",
]

KAGGLE_INPUT = Path("/kaggle/input")
"""Its presence is what "on Kaggle" means (the input mount exists in every Kaggle session)."""

INPUT_ROOT_ENV = "KAGGLE_INPUT_ROOT"
"""Input root(s) to search instead of /kaggle/input (os.pathsep-separated): how tests and local
runs point the kit at a fake input tree."""

COMPETITION_SLUGS: dict[str, str] = {
    "aimo1": "ai-mathematical-olympiad-prize",
    "aimo2": "ai-mathematical-olympiad-progress-prize-2",
    "aimo3": "ai-mathematical-olympiad-progress-prize-3",
}
"""Kaggle competition slugs: kernel-metadata.json's competition_sources and the data mount."""

MODEL_HANDLE_SHAPE = "owner/model/framework/variation/version"
DATASET_HANDLE_SHAPE = "owner/dataset-slug"


def on_kaggle() -> bool:
    """True inside a Kaggle session (interactive, batch or the hidden competition rerun)."""
    return KAGGLE_INPUT.is_dir()


def input_roots(explicit: str | os.PathLike[str] | Sequence[Any] | None = None) -> tuple[Path, ...]:
    """Where attached models and datasets are mounted: the argument, $KAGGLE_INPUT_ROOT, or
    /kaggle/input. A string may hold several roots separated by os.pathsep."""
    value: Any = explicit if explicit is not None else os.environ.get(INPUT_ROOT_ENV)
    if value is None or value == "":
        return (KAGGLE_INPUT,)
    if isinstance(value, (str, os.PathLike)):
        value = [p for p in os.fspath(value).split(os.pathsep) if p]
    return tuple(Path(p) for p in value)


def _parts(handle: str, n: int, shape: str, what: str) -> list[str]:
    parts = handle.strip("/").split("/")
    if len(parts) != n or not all(parts):
        raise ValueError(f"a {what} is named {shape}, got {handle!r}")
    return parts


def model_dirs(handle: str, roots: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Where Kaggle mounts model instance version `owner/model/framework/variation/version`:
    the newer and the classic layout per root, then both again with the framework lower-cased
    (some mounts write "PyTorch" as "pytorch")."""
    owner, model, framework, variation, version = _parts(handle, 5, MODEL_HANDLE_SHAPE, "model")
    out: list[Path] = []
    for root in roots:
        r = Path(root)
        out.append(r / "models" / owner / model / framework / variation / version)
        out.append(r / model / framework / variation / version)
        if framework != framework.lower():
            out.append(r / "models" / owner / model / framework.lower() / variation / version)
            out.append(r / model / framework.lower() / variation / version)
    return out


def dataset_dirs(handle: str, roots: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Where Kaggle mounts dataset `owner/slug`: the newer ``<root>/datasets/<owner>/<slug>``
    and the classic ``<root>/<slug>``, per root, in that order."""
    owner, slug = _parts(handle, 2, DATASET_HANDLE_SHAPE, "dataset")
    out: list[Path] = []
    for root in roots:
        r = Path(root)
        out += [r / "datasets" / owner / slug, r / slug]
    return out


def mount_dirs(kind: str, handle: str, roots: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """`model_dirs` or `dataset_dirs` by kind ("model" | "dataset"), as a manifest entry says."""
    if kind == "model":
        return model_dirs(handle, roots)
    if kind == "dataset":
        return dataset_dirs(handle, roots)
    raise ValueError(f"a Kaggle input is a model or a dataset, got {kind!r}")


def competition_dirs(competition: str, roots: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Where the competition's data (test.csv, `aimo` or `kaggle_evaluation`) is mounted."""
    slug = COMPETITION_SLUGS[competition]
    out: list[Path] = []
    for root in roots:
        r = Path(root)
        out += [r / "competitions" / slug, r / slug]
    return out
