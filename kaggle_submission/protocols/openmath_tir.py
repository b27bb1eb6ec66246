"""OpenMath-Nemotron's TIR protocol (NeMo-Skills `prompt/config/openmath/tir.yaml`).

The user turn names how many code calls the model may make and is rendered by the model's own
chat template (required). The model writes its code between `<tool_call>` and `</tool_call>`
(usually with a ```python fence inside, stripped here); generation pauses at `</tool_call>`
(kept) and the output goes back as "\\n```output\\n" + output + "```\\n", then, when
`remaining_note` is on (NeMo-Skills' default), a ```system note with the calls left. Rules: a
reasoning model may answer without code, so no restart and no pruning for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .base import Protocol, RolloutRules, render_chat, require_chat_template

NAME = "openmath-tir"
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"

USER_TEMPLATE = (
    "Solve the following math problem, integrating natural language reasoning with Python code"
    " executions.\n"
    "You may perform up to {max_calls} Python code calls to assist your reasoning.\n"
    "Make sure to put the answer (and only answer) inside \\boxed{{}}.\n"
    "\n"
    "{problem}"
)
OUTPUT_OPEN = "\n```output\n"
OUTPUT_CLOSE = "```\n"
REMAINING_NOTE = (
    "```system\nRemaining code executions: {left}. You will not be able to call code when you"
    " run out of executions, so use it wisely. Note that you can still continue solving the"
    " problem without code after that.\n```\n"
)
RUN_OUT_NOTE = (
    "```system\nYou have run out of code executions! You can no longer write or execute code."
    " Now you should continue solving the problem by relying on your mathematical reasoning and"
    " analytical skills.\n```\n"
)

TIR_RULES = RolloutRules(
    restart_without_code=False,
    prune_unexecuted=False,
    answer_ends_rollout=True,
    restart_unfinished=False,
)


def user_turn(problem: str, max_calls: int) -> str:
    """The TIR user message (before the chat template)."""
    return USER_TEMPLATE.format(max_calls=max_calls, problem=problem)


def tool_code(text: str) -> str | None:
    """The code between the last `<tool_call>` and the following `</tool_call>` (or the end:
    the stop string may be cut off), a ```python fence inside stripped; None when empty."""
    start = text.rfind(TOOL_OPEN)
    if start < 0:
        return None
    body = text[start + len(TOOL_OPEN) :]
    end = body.find(TOOL_CLOSE)
    if end >= 0:
        body = body[:end]
    code = _strip_fence(body)
    return code if code.strip() else None


def _strip_fence(body: str) -> str:
    stripped = body.strip()
    if not stripped.startswith("```"):
        return body.strip("\n")
    first_newline = stripped.find("\n")
    if first_newline < 0:  # "```python" and nothing else
        return ""
    inner = stripped[first_newline + 1 :]
    close = inner.rfind("```")
    if close >= 0:
        inner = inner[:close]
    return inner.rstrip() + "\n" if inner.strip() else ""


def format_output(output: str, calls_left: int, remaining_note: bool = True) -> str:
    """What goes after the kept `</tool_call>`: the output block and, optionally, the note."""
    fed = OUTPUT_OPEN + output + OUTPUT_CLOSE
    if remaining_note:
        fed += REMAINING_NOTE.format(left=calls_left) if calls_left > 0 else RUN_OUT_NOTE
    return fed


@dataclass(frozen=True)
class OpenMathTIRProtocol(Protocol):
    """The NeMo-Skills TIR user turn in the model's template, `<tool_call>` code, output fed
    back with the remaining-calls note (`remaining_note`)."""

    name: str = NAME
    chat_template: str | None = None
    remaining_note: bool = True

    stop: ClassVar[tuple[str, ...]] = (TOOL_CLOSE,)
    rules: ClassVar[RolloutRules] = TIR_RULES
    uses_code: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.chat_template:
            raise ValueError(f"prompt format {NAME} needs the model's chat template")

    def render(self, problem: str, max_calls: int) -> str:
        return render_chat(self.chat_template or "", user_turn(problem, max_calls))

    def wrote_code(self, text: str) -> bool:
        return TOOL_OPEN in text

    def find_code(self, text: str) -> str | None:
        return tool_code(text)

    def feed(self, output: str, calls_left: int) -> str:
        return format_output(output, calls_left, self.remaining_note)


def build(model_dir: Path | None) -> OpenMathTIRProtocol:
    """The protocol for a model directory (its chat template is required)."""
    return OpenMathTIRProtocol(chat_template=require_chat_template(NAME, model_dir))
