"""Build and evaluate the DEMO model (see kaggle_submission/offline/demo.py for what it is and why).

Usage::

    python -m training.demo                       # build into the cache the dry run uses
    python -m training.demo --out runs/demo-model # build into a folder (and publish its entry)
    python -m training.demo --evaluate            # accuracy with / without code execution
    python -m training.demo --protocol openmath-tir   # the same task in openmath-tir form

Building: synthetic TIR rows whose outputs come from running the code -> a byte-level BPE
tokenizer trained on them (each ``a=7`` one token; spaces are pieces of their own, so the
prompt's trailing space tokenizes the same in training and at inference) -> a
random tiny Llama -> `training.sft.train` (the stage-2 code path) -> publish (manifest entry with
demo: true).

Two protocols (`DemoConfig.protocol`, one config file each): "numina" (the kit's `### Problem:`
prompt, ```python / ```output fences: training/configs/demo.yaml) and "openmath-tir"
(training/configs/demo_openmath.yaml): the same task written as OpenMath-Nemotron writes it,
rendered by `kaggle_submission.protocols`' openmath-tir protocol: a ChatML chat template saved
with the tokenizer (Qwen2.5's turn markers, no system turn), the NeMo-Skills TIR user turn,
code in ``<tool_call>`` tags (added tokens, not special, so they stay in decoded text where the
stop string is matched), the output and remaining-calls note the engine feeds, EOS
``<|im_end|>``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaggle_submission.offline.demo import (
    READY_FILE,
    demo_entry_name,
    demo_model_dir,
    demo_problems,
    demo_version,
)

from .config import CONFIG_DIR, dump_yaml, load_config, stage_parser, to_dict
from .data import SourceSpec, write_jsonl
from .sft import SFTStageConfig

DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
CONFIGS = {"numina": DEFAULT_CONFIG, "openmath-tir": CONFIG_DIR / "demo_openmath.yaml"}
"""The default config of each protocol's demo (`python -m training.demo --protocol NAME`)."""
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""Qwen2.5's ChatML turns without its default system turn (a demo needs no persona): the chat
template the openmath-tir demo's tokenizer carries and the protocol renders."""
# The problem's "$a=7" gives the piece "a=7", the output's "t=3;u=7" gives "\nt=3" and ";u=7",
# the code's "a=7" gives "a" and "=7"; each whitespace character, digit, letter run and
# punctuation run is a piece of its own.
PRETOKENIZE_PATTERN = (
    r"(?<=\$)[a-d]=\d(?!\d)|[\n;][tu]=\d(?!\d)|=\d(?!\d)|\s|\d|[A-Za-z]+|[^\sA-Za-z\d]+"
)
CHAT_PRETOKENIZE_PATTERN = (
    r"(?<=\$)[a-d]=\d(?!\d)|[\n;][tu]=\d(?!\d)|=\d(?!\d)|\d|\n|[^\d$=;\n]+|[$=;]+"
)
"""The openmath-tir demo's pieces: the same named digits, but a run of text without digits,
newlines or ``$=;`` is one piece, so BPE merges the instructions and notes (the same in every
row) into a few tokens: 125 tokens a row at most instead of 352 (the generation prompt ends in
a newline, so no trailing-space issue). In code, ``a=7`` still gives ``a`` and ``=7``."""


@dataclass(frozen=True)
class TinyModelSpec:
    """The demo Llama's shape (head_dim = hidden / heads)."""

    layers: int = 2
    hidden: int = 128
    heads: int = 2
    intermediate: int = 512
    max_position: int = 512
    tie_embeddings: bool = True
    init_seed: int = 0
    compositional_init: bool = True


@dataclass(frozen=True)
class DemoConfig:
    """Attributes:
    train_rows: synthetic training problems (held-out ones are never generated here).
    seed: data seed. threads: torch CPU threads (fixed, so a rebuild repeats the same math).
    tokenizer_vocab_size: BPE vocabulary (bytes + specials + merges).
    model: the tiny Llama. sft: the SFT stage config (model, output_dir and data sources are
    filled in by the build).
    protocol: the form the model learns, "numina" or "openmath-tir" (kaggle_submission.protocols).
    max_calls: the demo preset's M (engine calls per rollout); the openmath-tir prompt
        announces `engine.code_calls` of them (M - 1) as the kernel renders it.
    """

    protocol: str = "numina"
    max_calls: int = 3
    train_rows: int = 3000
    seed: int = 0
    threads: int = 2
    tokenizer_vocab_size: int = 512
    model: TinyModelSpec = field(default_factory=TinyModelSpec)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, max_length: int, chat_template: str | None = None
) -> Any:
    """A byte-level BPE fitted to `texts` (every ``a=7``-style name and digit one token), BOS
    prepended. No `chat_template`: the kernel then uses its numina prompt. With one (ChatML):
    ``<|im_start|>``/``<|im_end|>`` special (EOS ``<|im_end|>``), ``<tool_call>`` and
    ``</tool_call>`` added as whole, non-special tokens, the template saved with it."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(CHAT_PRETOKENIZE_PATTERN if chat_template else PRETOKENIZE_PATTERN),
                behavior="isolated",
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS, *([IM_START, IM_END] if chat_template else [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    named = [f"${n}={d}" for n in "abcd" for d in range(10)]
    named += [f"{p}{n}={d}" for p in "\n;" for n in "tu" for d in range(10)]
    named += [f"x=0;x={d}" for d in range(10)]
    tok.train_from_iterator([*texts, *([" ".join(named)] * 3)], trainer)
    want = {f"${n}={d}": 2 for n in "abcd" for d in range(10)}  # "$", "a=7"
    want.update({f"\n{n}={d}": 1 for n in "tu" for d in range(10)})
    want.update({f"a={d}": 2 for d in range(10)})  # "a", "=7"
    split = [x for x, n in want.items() if len(tok.encode(x).ids) != n]
    if split:
        raise ValueError(f"vocab_size {vocab_size} too small: {split[:5]} are split")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    if chat_template:
        from kaggle_submission.protocols.openmath_tir import TOOL_CLOSE, TOOL_OPEN

        tok.add_tokens(
            [AddedToken(t, special=False, normalized=False) for t in (TOOL_OPEN, TOOL_CLOSE)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END if chat_template else EOS,
        pad_token=PAD,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
        **({"chat_template": chat_template} if chat_template else {}),
    )


def init_model(spec: TinyModelSpec, tokenizer: Any, out: Path) -> None:
    """Save a randomly initialised Llama of `spec` with `tokenizer` to `out`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if spec.hidden % spec.heads:
        raise ValueError("hidden must be a multiple of heads")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=spec.max_position,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.tie_embeddings,
    )
    torch.manual_seed(spec.init_seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    if spec.compositional_init:
        _compositional_embeddings(model, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _compositional_embeddings(model: Any, tokenizer: Any) -> None:
    """Start the problem's ``a=7`` tokens as (digit 7's) + (name a's), the code's ``a`` as name
    a's and its ``=7`` as digit 7's (each + a little of its own): random vectors still, but the
    code's "a" then already resembles the problem's "a=7", and copying the digit is linear.

    Why: learning to copy from scratch takes tens of millions of tokens (an induction-like
    circuit must form); with this start the 2-layer model learns it in the demo's CPU budget.
    """
    import torch

    vocab = tokenizer.get_vocab()
    emb = model.get_input_embeddings().weight
    generator = torch.Generator().manual_seed(1)
    std = float(emb.detach().std())
    names = {n: torch.randn(emb.shape[1], generator=generator) * std for n in "abcdtu"}

    def digit_id(d: str) -> int:
        return tokenizer(d, add_special_tokens=False)["input_ids"][0]

    with torch.no_grad():
        letters = {n: tokenizer(n, add_special_tokens=False)["input_ids"] for n in names}
        for n, ids in letters.items():
            if len(ids) == 1:  # the code's "a" in "a=7" asks for a's value
                emb[ids[0]] = names[n] + 0.1 * emb[ids[0]]
        for token, index in vocab.items():
            text = tokenizer.convert_tokens_to_string([token]).lstrip("\n;")
            if len(text) == 3 and text[0] in names and text[1] == "=" and text[2].isdigit():
                emb[index] = emb[digit_id(text[2])] + names[text[0]] + 0.1 * emb[index]
            elif len(text) == 2 and text[0] == "=" and text[1].isdigit():
                emb[index] = emb[digit_id(text[1])] + 0.1 * emb[index]


DEMO_PRESETS = {"numina": "demo-cpu", "openmath-tir": "demo-cpu-openmath"}


def publish_demo(model_dir: str | Path, manifest_path: str | Path, protocol: str = "numina") -> Any:
    """Write `protocol`'s demo manifest entry (demo: true) for `model_dir` into `manifest_path`."""
    from kaggle_submission import manifest as mf

    from .publish import publish_directory

    numina = protocol == "numina"
    entry = publish_directory(
        Path(model_dir),
        name=demo_entry_name(protocol),
        manifest_path=manifest_path,
        description=(
            f"DEMO model {demo_version(protocol)}: 2-layer 128-wide Llama trained from scratch on "
            "synthetic TIR arithmetic "
            + (
                "(training/configs/demo.yaml)"
                if numina
                else "in openmath-tir form (training/configs/demo_openmath.yaml)"
            )
            + "; not a competition model. Built locally by `python -m training.demo"
            + ("" if numina else f" --protocol {protocol}")
            + "`; sha256 values are those of the reference build (a different CPU may round "
            "differently; sizes always match)."
        ),
        kaggle={
            "kind": "dataset",
            "handle": "kaggle-submission/aimo-demo-model" + ("" if numina else "-openmath"),
        },
        quantization=None,
        presets=[DEMO_PRESETS[protocol]],
        demo=True,
        write_kaggle_metadata=False,
    )
    if entry.prompt.format != protocol:  # publish detects numina / chat_template only
        entry = dataclasses.replace(entry, prompt=mf.PromptSpec(format=protocol))
        mf.load_manifest(manifest_path).with_entry(entry).save(manifest_path)
    return entry


def demo_protocol(name: str) -> Any:
    """The `kaggle_submission.protocols` protocol the demo is written in: numina as the kernel
    renders it, openmath-tir with the demo's ChatML template (what the kernel decides from the
    saved tokenizer)."""
    from kaggle_submission.protocols import NUMINA, OpenMathTIRProtocol

    if name == "numina":
        return NUMINA
    if name == "openmath-tir":
        return OpenMathTIRProtocol(chat_template=CHATML_TEMPLATE)
    raise ValueError(f"the demo has no {name!r} form (numina or openmath-tir)")


def announced_calls(max_calls: int) -> int:
    """The code calls the kernel's openmath-tir prompt announces for `max_calls` engine calls
    (`engine.code_calls`: the last call reads the last output), so training text and the
    kernel's prompt say the same number."""
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import code_calls

    return code_calls(EngineConfig(max_calls=max_calls))


def sft_problem(problem: str, code_calls: int) -> str:
    """The row's `problem` for training's SFT stage, which renders it as the user turn of the
    tokenizer's chat template: the openmath-tir user turn (instructions, then the problem)."""
    from kaggle_submission.protocols.openmath_tir import user_turn

    return user_turn(problem, code_calls)


def _check_sft_text(row: dict[str, Any], template: str, expected: str) -> None:
    """SFT must train on exactly the text the engine builds (the protocol's prompt + solution)."""
    from .data import render

    got = render(row["problem"], row["solution"], template)
    if got != expected:
        raise RuntimeError(
            f"training would render {got[:200]!r}... but the protocol renders {expected[:200]!r}"
        )


def build_demo_model(
    out_dir: str | Path,
    manifest_path: str | Path | None = None,
    config: DemoConfig | None = None,
) -> dict[str, Any]:
    """Train the demo model into `out_dir`; publish its entry to `manifest_path` if given.

    Returns the build record (also written to ``out_dir/demo_model.json`` last, which marks the
    directory complete).
    """
    import torch

    from . import sft, synthetic

    cfg = config or load_config(DemoConfig, DEFAULT_CONFIG)
    out = Path(out_dir)
    t0 = time.monotonic()
    torch.set_num_threads(cfg.threads)
    protocol = demo_protocol(cfg.protocol)
    template = protocol.chat_template
    with tempfile.TemporaryDirectory(prefix="demo-build-") as tmp:
        work = Path(tmp)
        calls = announced_calls(cfg.max_calls)
        rows = synthetic.make_rows(
            cfg.train_rows, cfg.seed, held_out=False, protocol=protocol, code_calls=calls
        )
        texts = [protocol.render(r["problem"], calls) + r["solution"] for r in rows]
        if template:
            rows = [{**r, "problem": sft_problem(r["problem"], calls)} for r in rows]
            _check_sft_text(rows[0], template, texts[0])
        data_file = write_jsonl(work / "data" / "train.jsonl", rows)
        t_data = time.monotonic() - t0

        tokenizer = train_tokenizer(
            texts, cfg.tokenizer_vocab_size, cfg.model.max_position, template
        )
        init_model(cfg.model, tokenizer, work / "init")

        stage = dataclasses.replace(
            cfg.sft,
            model=str(work / "init"),
            output_dir=str(work / "run"),
            torch_threads=cfg.threads,
            data=dataclasses.replace(cfg.sft.data, sources=(SourceSpec(path=str(data_file)),)),
        )
        t_train0 = time.monotonic()
        result = sft.train(stage)
        t_train = time.monotonic() - t_train0

        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(result.final_dir, out)
    record: dict[str, Any] = {
        "version": demo_version(cfg.protocol),
        "what": "DEMO model: tiny Llama trained from scratch on synthetic TIR arithmetic",
        "protocol": cfg.protocol,
        "train_rows": cfg.train_rows,
        "data_seconds": round(t_data, 2),
        "train_seconds": round(t_train, 2),
        "total_seconds": round(time.monotonic() - t0, 2),
        "train_loss": result.metrics.get("train_loss"),
        "decontamination": {
            k: result.data_report.get(k) for k in ("validation_problems", "exact", "near")
        },
        "config": to_dict(cfg),
    }
    if manifest_path is not None:
        publish_demo(out, manifest_path, cfg.protocol)
    (out / READY_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


# ------------------------------------------------------------------------------ evaluation


_OUTPUT_RE = re.compile(r"t=(\d);u=(\d)")
MODES = ("code", "empty-output", "model-output")
"""code: the kernel as is. empty-output: blocks run nowhere, the model reads an empty output.
model-output: no stop at ```output, the model writes the output itself (its own arithmetic)."""


async def _evaluate_async(
    backend: Any,
    sandbox: Any,
    problems: Sequence[Any],
    mode: str,
    rollouts: int,
    max_tokens: int,
    seed: int,
    protocol: Any,
) -> dict[str, Any]:
    from kaggle_submission.answers import AIMO1_POLICY
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import solve_async
    from kaggle_submission.offline.report import summarize

    config = EngineConfig(
        num_rollouts=rollouts,
        max_calls=3,
        max_tokens_per_call=max_tokens,
        temperature=0.8,
        seed=seed,
        early_stop=None,
        execute_code=mode != "empty-output",
        **(
            {"stop": ("<no-stop>",), "prune_unexecuted": False, "restart_without_code": False}
            if mode == "model-output"
            else {}
        ),
    )
    solutions = await asyncio.gather(
        *(
            solve_async(
                p.problem,
                backend=backend,
                sandbox=sandbox,
                config=config,
                policy=AIMO1_POLICY,
                problem_id=p.key,
                protocol=protocol,
            )
            for p in problems
        )
    )
    scores = summarize([s.trace for s in solutions], {p.key: p.answer for p in problems}, {})
    executed = sum(r.executed for s in solutions for r in s.trace.rollouts)
    # Did the model box what the interpreter printed (t=3;u=7 -> 37)? Only rollouts that ran code.
    read = copied = 0
    for s in solutions:
        for r in s.trace.rollouts:
            outputs = [seg.output for seg in r.segments if seg.kind == "execution"]
            found = _OUTPUT_RE.search(outputs[-1]) if outputs else None
            if found is None or r.answer is None:
                continue
            read += 1
            copied += r.answer == int(found.group(1)) * 10 + int(found.group(2))
    n = len(problems)
    return {
        "mode": mode,
        "problems": n,
        "rollouts": rollouts,
        "single_sample_accuracy": scores["single_sample"],
        "majority_accuracy": scores["maj_at_n"],
        "blocks_executed": executed,
        "answer_is_printed_output": copied / read if read else None,
    }


def evaluate(
    model_dir: str | Path,
    n_problems: int = 40,
    rollouts: int = 8,
    modes: Sequence[str] = MODES,
    seed: int = 0,
    max_tokens: int = 96,
    protocol: str = "numina",
) -> list[dict[str, Any]]:
    """Accuracy of the model on held-out demo problems through the kernel's engine, per mode.

    Single-sample and majority accuracy are the dry-run report's (`report.summarize`): the
    share of correct rollouts (expected accuracy of one sample), and the engine's vote.
    `protocol` is the manifest format the model speaks, decided from its directory as the
    kernel does.
    """
    from kaggle_submission.backends import create_backend
    from kaggle_submission.protocols import decide_protocol
    from kaggle_submission.sandbox import Sandbox, SandboxConfig

    speaks = decide_protocol(protocol, model_dir)

    problems = demo_problems(n_problems, seed)
    results = []
    with Sandbox(SandboxConfig(timeout_s=5.0)) as sandbox:
        backend = create_backend("transformers", model=str(model_dir), dtype="float32", seed=seed)
        try:
            for mode in modes:
                if mode not in MODES:
                    raise ValueError(f"unknown mode {mode!r}: choose from {MODES}")
                t0 = time.monotonic()
                res = asyncio.run(
                    _evaluate_async(
                        backend, sandbox, problems, mode, rollouts, max_tokens, seed, speaks
                    )
                )
                res["seconds"] = round(time.monotonic() - t0, 1)
                results.append(res)
        finally:
            backend.close()
    return results


def format_results(results: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'mode':<14} {'single sample':>13} {'majority':>9}  boxed=printed  problems x rollouts"
    ]
    for r in results:
        copied = r["answer_is_printed_output"]
        lines.append(
            f"{r['mode']:<14} {r['single_sample_accuracy']:>13.1%} {r['majority_accuracy']:>9.1%}"
            f"  {'-' if copied is None else f'{copied:.0%}':>13}  {r['problems']:>8} x "
            f"{r['rollouts']}  ({r['seconds']} s)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("Build (and evaluate) the DEMO model")
    parser.add_argument(
        "--protocol",
        choices=sorted(CONFIGS),
        default="numina",
        help="the form the model learns (default numina; its config: "
        + ", ".join(f"{k}: {v.name}" for k, v in CONFIGS.items())
        + ")",
    )
    parser.add_argument("--out", help="build into this folder instead of the cache")
    parser.add_argument("--manifest", help="publish the entry here (default: next to the model)")
    parser.add_argument("--evaluate", action="store_true", help="evaluate instead of building")
    parser.add_argument("--model-dir", help="model to evaluate (default: the cached demo model)")
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    cfg = load_config(DemoConfig, args.config or CONFIGS[args.protocol], args.overrides)
    if cfg.protocol != args.protocol:
        parser.error(f"config {args.config} is for protocol {cfg.protocol}, not {args.protocol}")
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if args.evaluate:
        from kaggle_submission.offline.demo import ensure_demo_model

        model_dir = (
            Path(args.model_dir) if args.model_dir else ensure_demo_model(protocol=cfg.protocol)
        )
        results = evaluate(
            model_dir,
            args.problems,
            args.rollouts,
            args.modes.split(","),
            protocol=cfg.protocol,
        )
        print(
            f"DEMO model ({cfg.protocol}) on held-out synthetic problems "
            "(kernel engine, transformers backend):"
        )
        print(format_results(results))
        print(json.dumps(results))
        return 0
    out = Path(args.out) if args.out else demo_model_dir(protocol=cfg.protocol)
    manifest = Path(args.manifest) if args.manifest else out.parent / "weights_manifest.json"
    print(
        f"building the DEMO model (a tiny Llama, synthetic arithmetic, {cfg.protocol}) ...",
        file=sys.stderr,
    )
    record = build_demo_model(out, manifest_path=manifest, config=cfg)
    print(
        f"DEMO model ready in {out} (trained {record['train_seconds']} s, "
        f"loss {record['train_loss']}); entry '{demo_entry_name(cfg.protocol)}' written to "
        f"{manifest}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
