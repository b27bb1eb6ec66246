"""Stage configurations: frozen dataclasses filled from a YAML file plus ``--set key=value``.

Why one loader: every stage is a command with a config file, and every value must be overridable
from the command line without editing the file (``--set data.eval_fraction=0.05``). Values given
with ``--set`` follow the kit's one rule (``kaggle_submission.presets.parse_set_value``: JSON such
as ``true``, ``2e-5``, ``null``; else a YAML flow collection such as ``[a, b]``; else the bare
string) and are then checked against the field's type (``yes``/``off`` read as booleans, ``.5``
as a number), so a typo fails before any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


_WORD_BOOLS = {"yes": True, "no": False, "on": True, "off": False, "true": True, "false": False}


class ConfigError(ValueError):
    """A config file or override that does not fit the stage's dataclass."""


def _yaml() -> Any:
    import yaml  # PyYAML: a dependency of transformers, datasets and accelerate

    return yaml


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping from `path` (an empty file is an empty mapping)."""
    p = Path(path)
    try:
        data = _yaml().safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value): the kit's one ``--set`` rule
    (`kaggle_submission.presets.parse_set`: JSON, else a YAML flow collection, else the string)."""
    from kaggle_submission.presets import parse_set

    try:
        key, value = parse_set(item)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each dotted override set (intermediate mappings created)."""
    out = _deep_copy(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a mapping, recursively, checking names and types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits no type of {tp}"
        )
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list, Sequence):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, f"{where}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in _WORD_BOOLS:
            return _WORD_BOOLS[value.lower()]
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads `no` as false: save_strategy: no
            return "yes" if value else "no"
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """A YAML/JSON-ready dict of a config (tuples as lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(obj)


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> T:
    """`cls` from a YAML file (optional) with dotted overrides applied on top."""
    data = read_yaml(path) if path is not None else {}
    where = f"{path}: " if path is not None else ""
    try:
        return from_dict(cls, apply_overrides(data, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def stage_parser(description: str, default_config: str | None = None) -> argparse.ArgumentParser:
    """The argument parser every stage command shares: --config FILE and --set KEY=VALUE."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        default=default_config,
        help="YAML config file" + (f" (default {default_config})" if default_config else ""),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (dotted keys for sections); repeatable",
    )
    parser.add_argument("--print-config", action="store_true", help="print the config and exit")
    return parser


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """A config path: absolute as is, else relative to the working directory if it exists there,
    else to the repository root (so configs work from any directory)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of `names` (absent ones left out), for a stage's run record."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def dump_yaml(obj: Any) -> str:
    return _yaml().safe_dump(to_dict(obj), sort_keys=False)
