"""The prompt format: one source of truth for the kernel and the training side.

NuminaMath-7B-TIR was fine-tuned on `### Problem: {problem}\\n### Solution: ` with no system
prompt; its chat template renders exactly that. A model directory with a chat template of its own
is rendered through it (jinja2, imported only then), so a different model keeps its own format.
"""

from __future__ import annotations

import re
from functools import lru_cache

PROBLEM_HEADER = "### Problem: "
SOLUTION_HEADER = "### Solution: "
DEFAULT_TEMPLATE = PROBLEM_HEADER + "{problem}\n" + SOLUTION_HEADER

CODE_FENCE = "```python"
OUTPUT_FENCE = "```output"
STOP_STRINGS: tuple[str, ...] = (OUTPUT_FENCE,)

_CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def format_prompt(problem: str, chat_template: str | None = None) -> str:
    """The text the model continues for `problem` (a single user turn, generation prompt on)."""
    if not chat_template:
        return DEFAULT_TEMPLATE.format(problem=problem)
    return _compiled(chat_template).render(
        messages=[{"role": "user", "content": problem}],
        add_generation_prompt=True,
        bos_token="",
        eos_token="",
    )


@lru_cache(maxsize=8)
def _compiled(chat_template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template)


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

    Matches NuminaMath-TIR's training text ("```output\n{output}\n```"), so the model resumes
    after the fence as it learned to.
    """
    return "\n" + output.rstrip("\n") + "\n```"
