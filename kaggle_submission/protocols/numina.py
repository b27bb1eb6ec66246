"""NuminaMath-7B-TIR's protocol (the AIMO-1 winner): today's behaviour, byte for byte.

The model was fine-tuned on `### Problem: {problem}\\n### Solution: ` with no system prompt, on
solutions that write ```python blocks; generation pauses at "```output" (kept), the output is
fed as "\\n{output}\\n```" (NuminaMath-TIR's training text), and the winner's four rollout rules
hold. The "chat_template" variant keeps those rules but renders the user turn with the model
directory's own template (a fine-tune of the kit's format with a template of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Protocol, RolloutRules, render_chat

PROBLEM_HEADER = "### Problem: "
SOLUTION_HEADER = "### Solution: "
DEFAULT_TEMPLATE = PROBLEM_HEADER + "{problem}\n" + SOLUTION_HEADER

CODE_FENCE = "```python"
OUTPUT_FENCE = "```output"
STOP_STRINGS: tuple[str, ...] = (OUTPUT_FENCE,)

WINNER_RULES = RolloutRules(
    restart_without_code=True,
    prune_unexecuted=True,
    answer_ends_rollout=True,
    restart_unfinished=True,
)


def format_prompt(problem: str, chat_template: str | None = None) -> str:
    """The text the model continues for `problem` (a single user turn, generation prompt on)."""
    if not chat_template:
        return DEFAULT_TEMPLATE.format(problem=problem)
    return render_chat(chat_template, problem)


def last_code_block(text: str) -> str | None:
    """The last ```python block of `text`, the one the model just asked to run.

    A block cut by the stop string (```python ... ```output) ends at the fence before
    `output`; a block still open at the end of the text is taken to the end.
    """
    start = text.rfind(CODE_FENCE + "\n")
    if start < 0:
        return None
    body = text[start + len(CODE_FENCE) + 1 :]
    end = body.find("```")
    code = body if end < 0 else body[:end]
    return code if code.strip() else None


def has_code_block(text: str) -> bool:
    """Whether the model wrote any python block in `text`."""
    return CODE_FENCE in text


def format_output_block(output: str) -> str:
    """What follows the kept "```output" stop string: the output and the closing fence.

    Matches NuminaMath-TIR's training text ("```output\\n{output}\\n```"), so the model resumes
    after the fence as it learned to.
    """
    return "\n" + output.rstrip("\n") + "\n```"


@dataclass(frozen=True)
class NuminaProtocol(Protocol):
    """`### Problem:` prompt (or the model's template: name "chat_template"), ```python fences."""

    name: str = "numina"
    chat_template: str | None = None

    stop: ClassVar[tuple[str, ...]] = STOP_STRINGS
    rules: ClassVar[RolloutRules] = WINNER_RULES
    uses_code: ClassVar[bool] = True

    def render(self, problem: str, max_calls: int = 0) -> str:
        """The winner's prompt names no call count: `max_calls` is ignored."""
        return format_prompt(problem, self.chat_template)

    def wrote_code(self, text: str) -> bool:
        return has_code_block(text)

    def find_code(self, text: str) -> str | None:
        return last_code_block(text)

    def feed(self, output: str, calls_left: int) -> str:
        return format_output_block(output)

    def answer_text(self, text: str) -> str:
        """The whole call's text, as the winner read it."""
        return text


NUMINA = NuminaProtocol()
"""The kit's own protocol, and the default where no model directory says otherwise."""
