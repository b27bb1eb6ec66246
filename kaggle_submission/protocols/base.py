"""The model protocol interface: how a problem becomes a prompt and how a rollout talks to code.

A protocol is what a model was trained on: its prompt, where its generation pauses for code,
how the code is found in its text, how the output goes back, where the answer is read, and the
rollout rules that suit it (the AIMO-1 winner's "restart without code" is right for NuminaMath
and wrong for a reasoning model that may finish without code). The engine asks the protocol;
backends only generate text. Pure core: stdlib, jinja2 only when a chat template is rendered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

THINK_END = "</think>"


@dataclass(frozen=True)
class RolloutRules:
    """A protocol's default rollout rules; `EngineConfig` may override each (None: this).

    restart_without_code: an attempt that wrote no code starts over from the prompt.
    prune_unexecuted: an answer given before any code ran is dropped as hallucinated.
    answer_ends_rollout: an answer retires the rollout even if it also asked to run code.
    restart_unfinished: an attempt that ended neither asking for code nor with an answer
        starts over.
    """

    restart_without_code: bool
    prune_unexecuted: bool
    answer_ends_rollout: bool
    restart_unfinished: bool


RULE_NAMES: tuple[str, ...] = (
    "restart_without_code",
    "prune_unexecuted",
    "answer_ends_rollout",
    "restart_unfinished",
)


@dataclass(frozen=True)
class Protocol:
    """One model protocol (one subclass per module). Frozen: decided once, with the weights.

    `name` is the manifest's `prompt.format`; `chat_template` the model directory's template
    when the protocol renders through it. Class attributes: `stop` (generation pauses there for
    code; the stop string is kept in the text), `rules`, `uses_code`.
    """

    name: str
    chat_template: str | None = None

    stop: ClassVar[tuple[str, ...]] = ()
    rules: ClassVar[RolloutRules] = RolloutRules(False, False, True, False)
    uses_code: ClassVar[bool] = False

    def render(self, problem: str, max_calls: int) -> str:
        """The prompt text every backend receives; `max_calls`: code calls the rollout may make."""
        raise NotImplementedError

    def wrote_code(self, text: str) -> bool:
        """Whether `text` holds any code call."""
        return False

    def find_code(self, text: str) -> str | None:
        """The code of the call `text` just requested (None: no runnable code)."""
        return None

    def feed(self, output: str, calls_left: int) -> str:
        """What goes right after the kept stop string: the output, as the model learned it."""
        raise NotImplementedError(f"protocol {self.name} runs no code")

    def answer_text(self, text: str) -> str:
        """Where the answer is read: after the last `</think>` when there is one, else all."""
        at = text.rfind(THINK_END)
        return text if at < 0 else text[at + len(THINK_END) :]


def render_chat(chat_template: str, user: str) -> str:
    """`user` as one user turn of `chat_template`, generation prompt on (what a tokenizer's
    apply_chat_template gives with tokenize=False and no special tokens around it)."""
    return _compiled(chat_template).render(
        messages=[{"role": "user", "content": user}],
        add_generation_prompt=True,
        bos_token="",
        eos_token="",
    )


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


def require_chat_template(name: str, model_dir: Path | None) -> str:
    """The directory's chat template, or a clear error naming the protocol that needs it."""
    template = read_chat_template(model_dir) if model_dir is not None else None
    if not template:
        raise ValueError(
            f"prompt format {name}: no chat template in {model_dir} "
            "(tokenizer_config.json or chat_template.jinja)"
        )
    return template


@lru_cache(maxsize=8)
def _compiled(chat_template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template)
