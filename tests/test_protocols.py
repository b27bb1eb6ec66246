"""Model protocols: byte-exact prompts, code extraction, output feeding, answer regions, rules.

The expected strings are written out by hand from FIELD_NOTES ("Today's models": NeMo-Skills'
openmath TIR prompt and code tags), not built from the module's constants, so a changed
constant fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_submission import prompts
from kaggle_submission.protocols import (
    NUMINA,
    PROTOCOLS,
    ChatCoTProtocol,
    NuminaProtocol,
    OpenMathTIRProtocol,
    RolloutRules,
    decide_protocol,
    get_protocol,
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROBLEM = "What is $2 + 3$?"

TIR_PROMPT = (
    "<|im_start|>user\n"
    "Solve the following math problem, integrating natural language reasoning with Python code "
    "executions.\n"
    "You may perform up to 8 Python code calls to assist your reasoning.\n"
    "Make sure to put the answer (and only answer) inside \\boxed{}.\n"
    "\n"
    "What is $2 + 3$?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
REMAINING_3 = (
    "```system\nRemaining code executions: 3. You will not be able to call code when you run out "
    "of executions, so use it wisely. Note that you can still continue solving the problem "
    "without code after that.\n```\n"
)
RUN_OUT = (
    "```system\nYou have run out of code executions! You can no longer write or execute code. "
    "Now you should continue solving the problem by relying on your mathematical reasoning and "
    "analytical skills.\n```\n"
)


@pytest.fixture
def chatml_dir(tmp_path: Path) -> Path:
    """A tokenizer directory whose template is Qwen2.5-style ChatML (no system turn)."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return tmp_path


def test_numina_renders_feeds_and_finds_code_as_before() -> None:
    assert NUMINA.render(PROBLEM, 4) == "### Problem: What is $2 + 3$?\n### Solution: "
    assert NUMINA.stop == ("```output",)
    assert NUMINA.rules == RolloutRules(True, True, True, True)
    text = "Let me compute.\n```python\nprint(2 + 3)\n```\n```output"
    assert NUMINA.wrote_code(text) and NUMINA.find_code(text) == "print(2 + 3)\n"
    assert NUMINA.feed("5\n", 2) == "\n5\n```"
    assert NUMINA.answer_text("</think> x \\boxed{5}") == "</think> x \\boxed{5}"
    # the old names still answer the same
    assert prompts.decide_prompt is decide_protocol and prompts.PromptFormat is NuminaProtocol
    assert prompts.format_output_block("5") == "\n5\n```"


def test_decide_protocol_by_name_and_directory(chatml_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert set(PROTOCOLS) == {"numina", "chat_template", "openmath-tir", "chat-cot"}
    assert decide_protocol(None, plain) == NUMINA
    assert decide_protocol(None, chatml_dir) == NuminaProtocol("chat_template", CHATML)
    assert isinstance(decide_protocol("openmath-tir", chatml_dir), OpenMathTIRProtocol)
    assert isinstance(decide_protocol("chat-cot", chatml_dir), ChatCoTProtocol)
    for name in ("openmath-tir", "chat-cot", "chat_template"):
        with pytest.raises(ValueError, match="no chat template"):
            get_protocol(name, plain)
    with pytest.raises(ValueError, match="unknown prompt format"):
        decide_protocol("harmony", chatml_dir)


def test_openmath_tir_prompt_is_byte_exact(chatml_dir: Path) -> None:
    tir = decide_protocol("openmath-tir", chatml_dir)
    assert tir.render(PROBLEM, 8) == TIR_PROMPT
    assert "up to 2 Python code calls" in tir.render(PROBLEM, 2)
    assert tir.stop == ("</tool_call>",)
    assert tir.uses_code
    assert tir.rules == RolloutRules(
        restart_without_code=False,
        prune_unexecuted=False,
        answer_ends_rollout=True,
        restart_unfinished=False,
    )
    with pytest.raises(ValueError, match="chat template"):
        OpenMathTIRProtocol()


def test_openmath_tir_finds_the_last_tool_call_and_strips_its_fence(chatml_dir: Path) -> None:
    tir = decide_protocol("openmath-tir", chatml_dir)
    fenced = (
        "First.\n<tool_call>\n```python\nprint(1)\n```\n</tool_call>\n```output\n1\n```\n"
        "Then.\n<tool_call>\n```python\nx = 2\nprint(x + 3)\n```\n</tool_call>"
    )
    assert tir.wrote_code(fenced)
    assert tir.find_code(fenced) == "x = 2\nprint(x + 3)\n"
    assert tir.find_code("<tool_call>\nprint(7)\n</tool_call>") == "print(7)"
    assert tir.find_code("<tool_call>print(7)") == "print(7)"  # cut before the close tag
    assert tir.find_code("<tool_call>\n```python\n```\n</tool_call>") is None
    assert not tir.wrote_code("no tools here \\boxed{5}")
    assert tir.find_code("```python\nprint(1)\n```") is None  # a bare fence is no tool call


def test_openmath_tir_feeds_output_with_the_remaining_calls_note(chatml_dir: Path) -> None:
    tir = decide_protocol("openmath-tir", chatml_dir)
    assert tir.feed("5\n", 3) == "\n```output\n5\n```\n" + REMAINING_3
    assert tir.feed("5\n", 0) == "\n```output\n5\n```\n" + RUN_OUT
    quiet = OpenMathTIRProtocol(chat_template=CHATML, remaining_note=False)
    assert quiet.feed("5\n", 3) == "\n```output\n5\n```\n"


def test_chat_cot_prompt_no_code_and_answer_after_think(chatml_dir: Path) -> None:
    cot = decide_protocol("chat-cot", chatml_dir)
    assert cot.render(PROBLEM, 4) == (
        "<|im_start|>user\nWhat is $2 + 3$?\n"
        "Please reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert cot.stop == () and not cot.uses_code
    assert cot.rules == RolloutRules(False, False, False, False)
    assert not cot.wrote_code("<tool_call>print(1)</tool_call>")
    assert cot.find_code("```python\nprint(1)\n```") is None
    with pytest.raises(NotImplementedError):
        cot.feed("1", 0)
    text = "maybe \\boxed{4}</think>wait</think>So \\boxed{5}."
    assert cot.answer_text(text) == "So \\boxed{5}."
    assert cot.answer_text("no end of thought \\boxed{4}") == "no end of thought \\boxed{4}"
