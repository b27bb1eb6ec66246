"""The NuminaMath prompt format's names, kept for the training side and older callers.

The protocols (`kaggle_submission.protocols`) now decide prompts, code calls, output feeding
and rollout rules per model; this module re-exports the numina protocol's pieces that
`training/` imports (`format_prompt`, the fences, `format_output_block`) and the old names of
the decision (`PromptFormat` = `NuminaProtocol`, `decide_prompt` = `decide_protocol`), so code
written before the protocols keeps working unchanged.
"""

from __future__ import annotations

from .protocols import NUMINA, PROTOCOLS, decide_protocol, read_chat_template
from .protocols.numina import (
    CODE_FENCE,
    DEFAULT_TEMPLATE,
    OUTPUT_FENCE,
    PROBLEM_HEADER,
    SOLUTION_HEADER,
    STOP_STRINGS,
    NuminaProtocol,
    format_output_block,
    format_prompt,
    has_code_block,
    last_code_block,
)

PromptFormat = NuminaProtocol
"""The numina protocol ("numina", or "chat_template" with the model's template)."""
PROMPT_FORMATS = PROTOCOLS
decide_prompt = decide_protocol

__all__ = [
    "CODE_FENCE",
    "DEFAULT_TEMPLATE",
    "NUMINA",
    "OUTPUT_FENCE",
    "PROBLEM_HEADER",
    "PROMPT_FORMATS",
    "SOLUTION_HEADER",
    "STOP_STRINGS",
    "PromptFormat",
    "decide_prompt",
    "format_output_block",
    "format_prompt",
    "has_code_block",
    "last_code_block",
    "read_chat_template",
]
