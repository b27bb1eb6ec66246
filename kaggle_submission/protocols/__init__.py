"""Model protocols: one module per protocol behind `base.Protocol`, named by the manifest.

The manifest entry's `prompt.format` names the protocol (`PROTOCOLS`, validated there), and
`decide_protocol` builds it from the model directory once, before the engine is built: the
engine renders, finds code, feeds output and reads answers through it; backends see text only.

- "numina": the kit's `### Problem:` format, ```python fences, the AIMO-1 winner's rules;
- "chat_template": the same protocol rendered by the model directory's own template;
- "openmath-tir": OpenMath-Nemotron's TIR (NeMo-Skills) prompt and `<tool_call>` code;
- "chat-cot": a reasoning model without tools (answer after `</think>`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .base import (
    RULE_NAMES,
    THINK_END,
    Protocol,
    RolloutRules,
    read_chat_template,
    render_chat,
    require_chat_template,
)
from .chat_cot import NAME as CHAT_COT
from .chat_cot import ChatCoTProtocol
from .chat_cot import build as _chat_cot
from .numina import NUMINA, NuminaProtocol, format_prompt
from .openmath_tir import NAME as OPENMATH_TIR
from .openmath_tir import OpenMathTIRProtocol
from .openmath_tir import build as _openmath_tir

log = logging.getLogger(__name__)

__all__ = [
    "NUMINA",
    "PROTOCOLS",
    "PROTOCOL_RULES",
    "RULE_NAMES",
    "THINK_END",
    "ChatCoTProtocol",
    "NuminaProtocol",
    "OpenMathTIRProtocol",
    "Protocol",
    "RolloutRules",
    "decide_protocol",
    "get_protocol",
    "read_chat_template",
    "render_chat",
]

_PROBE_PROBLEM = "What is $1 + 1$?"


def _numina(model_dir: Path | None) -> Protocol:
    template = read_chat_template(model_dir) if model_dir is not None else None
    if template and format_prompt(_PROBE_PROBLEM, template) != format_prompt(_PROBE_PROBLEM):
        log.warning(
            "the manifest says prompt format numina, but %s has a chat template that renders "
            "differently; using the numina format",
            model_dir,
        )
    return NUMINA


def _chat_template(model_dir: Path | None) -> Protocol:
    return NuminaProtocol("chat_template", require_chat_template("chat_template", model_dir))


PROTOCOLS: dict[str, Callable[[Path | None], Protocol]] = {
    "numina": _numina,
    "chat_template": _chat_template,
    OPENMATH_TIR: _openmath_tir,
    CHAT_COT: _chat_cot,
}
"""Every protocol the manifest may name (`prompt.format`), each with the function that builds
it from the model directory: a new protocol is one more module and one more entry here."""

PROTOCOL_RULES: dict[str, RolloutRules] = {
    "numina": NuminaProtocol.rules,
    "chat_template": NuminaProtocol.rules,
    OPENMATH_TIR: OpenMathTIRProtocol.rules,
    CHAT_COT: ChatCoTProtocol.rules,
}
"""Each protocol's default rollout rules, by name, for tools that know the manifest's
`prompt.format` but hold no model directory (budget tuning)."""


def decide_protocol(format_name: str | None, model_dir: str | os.PathLike[str] | None) -> Protocol:
    """The one protocol decision: the manifest entry's `prompt.format` applied to `model_dir`.

    No format (a directory outside the manifest) takes the numina protocol rendered by the
    directory's own chat template when it has one, else the kit's format: what a model without
    a manifest entry always got.
    """
    directory = Path(model_dir) if model_dir is not None else None
    if format_name is None:
        template = read_chat_template(directory) if directory is not None else None
        return NuminaProtocol("chat_template", template) if template else NUMINA
    return get_protocol(format_name, directory)


def get_protocol(name: str, model_dir: str | os.PathLike[str] | None = None) -> Protocol:
    """The protocol `name` built for `model_dir` (a clear error for an unknown name)."""
    try:
        build = PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r} (known: {sorted(PROTOCOLS)})") from None
    return build(Path(model_dir) if model_dir is not None else None)
