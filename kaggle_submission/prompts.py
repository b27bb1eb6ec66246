"""The prompt format: one source of truth for the kernel and the training side.

NuminaMath-7B-TIR was fine-tuned on `### Problem: {problem}\\n### Solution: ` with no system
prompt; its chat template renders exactly that. A model directory with a chat template of its own
is rendered through it (jinja2, imported only then), so a different model keeps its own format.

The format is decided once, before the engine is built (`decide_prompt`: the manifest entry's
`prompt.format` and the model directory's files), and the engine renders every prompt with it;
backends receive text and only generate.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

PROBLEM_HEADER = "### Problem: "
SOLUTION_HEADER = "### Solution: "
DEFAULT_TEMPLATE = PROBLEM_HEADER + "{problem}\n" + SOLUTION_HEADER

CODE_FENCE = "```python"
OUTPUT_FENCE = "```output"
STOP_STRINGS: tuple[str, ...] = (OUTPUT_FENCE,)


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


@dataclass(frozen=True)
class PromptFormat:
    """How a problem becomes the text the model continues, decided before the engine is built.

    `name` is the manifest's `prompt.format` ("numina": the kit's `### Problem:` format;
    "chat_template": `chat_template`, the model directory's own template, rendered as one user
    turn with the generation prompt on).
    """

    name: str = "numina"
    chat_template: str | None = None

    def render(self, problem: str) -> str:
        """The prompt text for `problem`: what every backend receives."""
        return format_prompt(problem, self.chat_template)


NUMINA = PromptFormat()
"""The kit's own format, and the default where no model directory says otherwise."""


def read_chat_template(model_dir: str | os.PathLike[str]) -> str | None:
    """The chat template saved with a tokenizer (chat_template.jinja or tokenizer_config.json).

    Read as files (what transformers' tokenizers read), so no tokenizer library is needed and
    every backend gets the same template from the same directory.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8") or None
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template or None
    return None


_PROBE_PROBLEM = "What is $1 + 1$?"


def _numina(model_dir: Path | None) -> PromptFormat:
    template = read_chat_template(model_dir) if model_dir is not None else None
    if template and format_prompt(_PROBE_PROBLEM, template) != format_prompt(_PROBE_PROBLEM):
        log.warning(
            "the manifest says prompt format numina, but %s has a chat template that renders "
            "differently; using the numina format",
            model_dir,
        )
    return NUMINA


def _chat_template(model_dir: Path | None) -> PromptFormat:
    template = read_chat_template(model_dir) if model_dir is not None else None
    if not template:
        raise ValueError(
            f"prompt format chat_template: no chat template in {model_dir} "
            "(tokenizer_config.json or chat_template.jinja)"
        )
    return PromptFormat("chat_template", template)


PROMPT_FORMATS: dict[str, Callable[[Path | None], PromptFormat]] = {
    "numina": _numina,
    "chat_template": _chat_template,
}
"""Every prompt format the manifest may name (`prompt.format`), each with the function that
builds it from the model directory: a new protocol is one more entry here."""


def decide_prompt(
    format_name: str | None, model_dir: str | os.PathLike[str] | None
) -> PromptFormat:
    """The one prompt decision: the manifest entry's `prompt.format` applied to `model_dir`.

    No format (a directory outside the manifest) takes the directory's own chat template when it
    has one, else the kit's format: what a model without a manifest entry always got.
    """
    directory = Path(model_dir) if model_dir is not None else None
    if format_name is None:
        template = read_chat_template(directory) if directory is not None else None
        return PromptFormat("chat_template", template) if template else NUMINA
    try:
        build = PROMPT_FORMATS[format_name]
    except KeyError:
        raise ValueError(
            f"unknown prompt format {format_name!r} (known: {sorted(PROMPT_FORMATS)})"
        ) from None
    return build(directory)


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
