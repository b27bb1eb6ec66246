"""Synthetic TIR data for the demo model: problems, Python that solves them, its REAL output.

Why real output: the model must learn to copy what the interpreter printed into its answer, so
every ```output block is produced by running the block (in a separate interpreter, never in this
process), and a row is kept only if that output equals the exact answer. The text is laid out
exactly as the kernel builds a rollout's context, in the demo's protocol: numina (the model
writes up to the stop string "```output", the engine appends `format_output_block(output)`) or
openmath-tir (the model writes ``<tool_call>`` + a ```python fence up to the stop string
``</tool_call>``, the engine appends the protocol's `feed(output, calls_left)`: the output block
and the remaining-calls note); then the model boxes the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from kaggle_submission.offline.demo import DemoTask, generate_tasks
from kaggle_submission.prompts import CODE_FENCE, OUTPUT_FENCE, format_output_block
from kaggle_submission.protocols import Protocol
from kaggle_submission.protocols.openmath_tir import TOOL_CLOSE, TOOL_OPEN

_EXPR = {
    "mod97": "(1000*a+100*b+10*c+d)%97",
    "lastdigits": "pow(10*a+b,10*c+d,100)",
    "mulmod": "(10*a+b)*(10*c+d)%89",
    "primes": "sum(all(k%j for j in range(2,k)) for k in range(10*a+b,10*a+b+10*c+d+1))",
    "digitsum": "sum(int(x) for x in str((1000*a+100*b+10*c+d)**2))",
}


def task_code(task: DemoTask) -> str:
    """The Python block that solves `task`: the problem's digits, the result, its two digits."""
    v = task.params
    return (
        f"a={v['a']};b={v['b']};c={v['c']};d={v['d']}\nr={_EXPR[task.kind]}\n"
        'print(f"t={r//10};u={r%10}")\n'
    )


def tir_solution(task: DemoTask, output: str) -> str:
    """The solution: the code block, the real output block (``t=3;u=7``), the boxed result
    copied from it as ``3*10+7`` (see kaggle_submission.offline.demo for why)."""
    tens, units = (part.split("=")[1] for part in output.strip().split(";"))
    return (
        f"{CODE_FENCE}\n{task_code(task)}```\n{OUTPUT_FENCE}{format_output_block(output)}"
        f"\nSo the answer is $\\boxed{{{tens}*10+{units}}}$."
    )


def _boxed(output: str) -> str:
    """``t=3;u=7`` -> ``So the answer is $\\boxed{3*10+7}$.``"""
    tens, units = (part.split("=")[1] for part in output.strip().split(";"))
    return f"So the answer is $\\boxed{{{tens}*10+{units}}}$."


def openmath_tir_solution(task: DemoTask, output: str, protocol: Protocol, code_calls: int) -> str:
    """The solution in openmath-tir form: the code in a ```python fence inside ``<tool_call>``
    tags (the stop string ``</tool_call>`` kept), then exactly what the engine feeds back after
    one call (`protocol.feed`: the real output and the note with ``code_calls - 1`` calls left),
    then the boxed result copied from the output."""
    call = f"{TOOL_OPEN}\n{CODE_FENCE}\n{task_code(task)}```\n{TOOL_CLOSE}"
    return call + protocol.feed(output, code_calls - 1) + _boxed(output)


_RUNNER = r"""
import contextlib, io, json, sys
codes = json.load(sys.stdin)
outputs = []
for code in codes:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            exec(compile(code, "<block>", "exec"), {"__name__": "__main__"})
    except BaseException as exc:  # a failed block is reported, the row then dropped
        buf.write(f"{type(exc).__name__}: {exc}\n")
    outputs.append(buf.getvalue())
json.dump(outputs, sys.stdout)
"""


def run_blocks(codes: Sequence[str], timeout_s: float = 600.0) -> list[str]:
    """Run each block in a fresh namespace of one separate interpreter; their printed output."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _RUNNER],
        input=json.dumps(list(codes)),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"code runner failed ({proc.returncode}): {proc.stderr[-2000:]}")
    outputs = json.loads(proc.stdout)
    if len(outputs) != len(codes):
        raise RuntimeError("code runner returned the wrong number of outputs")
    return outputs


def make_rows(
    n: int,
    seed: int,
    held_out: bool = False,
    protocol: Protocol | None = None,
    code_calls: int = 2,
) -> list[dict[str, Any]]:
    """`n` rows {problem, solution, answer, kind}; each output was printed by running the code.

    `protocol` None or numina: the numina solution text; openmath-tir: `openmath_tir_solution`
    with `code_calls` (the number the prompt announces; the note says one fewer are left).
    """
    if protocol is not None and protocol.name not in ("numina", "openmath-tir"):
        raise ValueError(f"the demo has no {protocol.name!r} form (numina or openmath-tir)")
    openmath = protocol is not None and protocol.name == "openmath-tir"
    tasks = generate_tasks(n, seed, held_out=held_out)
    outputs = run_blocks([task_code(t) for t in tasks])
    rows = []
    for task, output in zip(tasks, outputs, strict=True):
        if output.strip() != f"t={task.answer // 10};u={task.answer % 10}":
            raise RuntimeError(
                f"demo code for {task.problem!r} printed {output!r}, expected {task.answer}"
            )
        rows.append(
            {
                "problem": task.problem,
                "solution": (
                    openmath_tir_solution(task, output, protocol, code_calls)
                    if openmath and protocol is not None
                    else tir_solution(task, output)
                ),
                "answer": task.answer,
                "kind": task.kind,
            }
        )
    return rows
