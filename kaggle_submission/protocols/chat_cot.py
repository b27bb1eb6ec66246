"""A reasoning model without tools (DeepSeek-R1-Distill, OpenReasoning-Nemotron): chain of thought.

The problem is the user turn of the model's own chat template, followed by DeepSeek-R1's
recommended instruction for math ("Please reason step by step, and put your final answer within
\\boxed{}." on a new line, from its model card's usage recommendations). No code: no stop
string, and the answer is the last `\\boxed{}` after the reasoning (`</think>`). Every rollout
rule is off: there is no code to restart for or to prune against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .base import Protocol, RolloutRules, render_chat, require_chat_template

NAME = "chat-cot"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
COT_RULES = RolloutRules(
    restart_without_code=False,
    prune_unexecuted=False,
    answer_ends_rollout=False,
    restart_unfinished=False,
)


def user_turn(problem: str) -> str:
    """The problem, then the boxed-answer instruction on its own line."""
    return f"{problem}\n{INSTRUCTION}"


@dataclass(frozen=True)
class ChatCoTProtocol(Protocol):
    """The model's chat template, the problem and the \\boxed{} instruction; no code."""

    name: str = NAME
    chat_template: str | None = None

    stop: ClassVar[tuple[str, ...]] = ()
    rules: ClassVar[RolloutRules] = COT_RULES
    uses_code: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not self.chat_template:
            raise ValueError(f"prompt format {NAME} needs the model's chat template")

    def render(self, problem: str, max_calls: int = 0) -> str:
        """No code calls to announce: `max_calls` is ignored."""
        return render_chat(self.chat_template or "", user_turn(problem))


def build(model_dir: Path | None) -> ChatCoTProtocol:
    """The protocol for a model directory (its chat template is required)."""
    return ChatCoTProtocol(chat_template=require_chat_template(NAME, model_dir))
