"""Optional KTO stage: sample with the kernel's own engine, label by the answer, train with TRL.

Usage::

    python -m training.kto --config training/configs/kto.yaml --set model=runs/stage2_tir/final
    python -m training.kto --config ... --set sample_only=true        # sampling only
    python -m training.kto --config ... --set samples_file=runs/kto/samples.jsonl  # reuse

Why the kernel's engine: the samples are exactly what the model does at inference (prompt
format, stop at ```output, code run in the kit's sandbox, outputs fed back, restarts), so KTO
rewards and penalises the behaviour the submission actually shows. A completion is the last
attempt of a rollout (its generations and the appended outputs); it is desirable when the
rollout's extracted answer equals the ground truth (`extract_answer` under the answer policy),
undesirable when it gave another answer (and, optionally, when it gave none). The AIMO-1 winner
reported 27/50 on the public board with KTO against 8/50 for CoT-only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kaggle_submission.answers import POLICIES, extract_answer

from .config import dump_yaml, load_config, resolve_path, stage_parser, to_dict
from .data import DataConfig, prepare, write_jsonl


@dataclass(frozen=True)
class SamplingConfig:
    """Attributes:
    problems: training problems sampled (the first N after the split).
    samples_per_problem: k rollouts per problem.
    backend: "transformers" (any machine) or "vllm" (GPU); backend_options go to it.
    max_calls, max_tokens_per_call, temperature, top_p, seed: the engine's settings.
    sandbox_timeout_s: per code block.
    include_unanswered: rollouts without an answer count as undesirable.
    """

    problems: int = 1000
    samples_per_problem: int = 4
    backend: str = "transformers"
    backend_options: dict[str, Any] = field(default_factory=dict)
    max_calls: int = 4
    max_tokens_per_call: int = 1024
    temperature: float = 0.8
    top_p: float = 1.0
    seed: int = 0
    sandbox_timeout_s: float = 5.0
    include_unanswered: bool = False


@dataclass(frozen=True)
class KTOStageConfig:
    """Attributes:
    model: the policy to improve (stage 2's ``final``); ref_model: the frozen reference
        (default: the same weights).
    output_dir: run directory (``final/``, ``samples.jsonl``, ``kto_info.json``).
    data: problems with ground truth (an `answer` column, or a boxed answer in the solution).
    policy: answer policy name (aimo1, aimo2, aimo3) used to extract and compare answers.
    sampling: see SamplingConfig. samples_file: reuse labelled samples instead of sampling.
    sample_only: stop after writing samples.jsonl.
    beta, desirable_weight, undesirable_weight: KTO loss.
    The rest: optimiser and batch as in SFT.
    """

    model: str = ""
    ref_model: str | None = None
    output_dir: str = "runs/kto"
    data: DataConfig = field(default_factory=DataConfig)
    policy: str = "aimo1"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    samples_file: str | None = None
    sample_only: bool = False
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    learning_rate: float = 5e-7
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 2048
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    bf16: bool = True
    gradient_checkpointing: bool = True
    logging_steps: int = 10
    save_strategy: str = "no"
    seed: int = 42
    report_to: tuple[str, ...] = ("none",)
    torch_threads: int | None = None
    disable_tqdm: bool | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}")


def ground_truth(row: Mapping[str, Any], policy_name: str) -> int | None:
    """The row's integer answer: its `answer` field, else the boxed answer of its solution."""
    policy = POLICIES[policy_name]
    answer = row.get("answer")
    if answer is not None:
        try:
            value = int(str(answer).strip())
        except ValueError:
            value = None
        if value is not None:
            return policy.admit(value)
    return extract_answer(str(row.get("solution", "")), policy)


def rollout_completion(rollout: Any) -> str:
    """The text after the prompt of a rollout's last attempt: generations + appended outputs."""
    segments = list(rollout.segments)
    if not segments:
        return ""
    last = max(s.attempt for s in segments)
    parts = []
    for s in segments:
        if s.attempt != last:
            continue
        parts.append(s.text if s.kind == "generation" else s.appended)
    return "".join(parts)


def sample(cfg: KTOStageConfig, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Labelled completions {prompt, completion, label, answer, truth} from the kernel's engine."""
    from kaggle_submission.backends import create_backend
    from kaggle_submission.config import EngineConfig
    from kaggle_submission.engine import Solver
    from kaggle_submission.sandbox import Sandbox, SandboxConfig

    s = cfg.sampling
    policy = POLICIES[cfg.policy]
    problems = [(r, ground_truth(r, cfg.policy)) for r in rows]
    problems = [(r, t) for r, t in problems if t is not None][: s.problems]
    engine = EngineConfig(
        num_rollouts=s.samples_per_problem,
        max_calls=s.max_calls,
        max_tokens_per_call=s.max_tokens_per_call,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=s.seed,
        early_stop=None,
    )
    options = {"model": str(resolve_path(cfg.model)), **s.backend_options}
    out: list[dict[str, Any]] = []
    # The sandbox starts before the backend: no fork after CUDA is initialised.
    with (
        Sandbox(SandboxConfig(timeout_s=s.sandbox_timeout_s)) as sandbox,
        Solver(lambda: create_backend(s.backend, **options), sandbox, engine, policy) as solver,
    ):
        for i, (row, truth) in enumerate(problems):
            solution = solver.solve(row["problem"], problem_id=str(i))
            for rollout in solution.trace.rollouts:
                if rollout.answer is None and not s.include_unanswered:
                    continue
                completion = rollout_completion(rollout)
                if not completion.strip():
                    continue
                out.append(
                    {
                        "prompt": solution.trace.prompt,
                        "completion": completion,
                        "label": rollout.answer == truth,
                        "answer": rollout.answer,
                        "truth": truth,
                        "status": rollout.status,
                        "problem_index": i,
                    }
                )
    return out


def train_kto(cfg: KTOStageConfig, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """KTOTrainer on the labelled samples; saves ``final/``; returns the metrics."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    labels = [bool(x["label"]) for x in samples]
    if not any(labels) or all(labels):
        raise ValueError(
            f"KTO needs desirable and undesirable samples; got {sum(labels)} of {len(labels)} "
            "desirable (sample more problems or rollouts)"
        )
    out = resolve_path(cfg.output_dir)
    cuda = torch.cuda.is_available()
    bf16 = cfg.bf16 and cuda
    dtype = torch.bfloat16 if bf16 else torch.float32
    model_path = str(resolve_path(cfg.model))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(
        str(resolve_path(cfg.ref_model or cfg.model)), dtype=dtype
    )
    dataset = Dataset.from_list(
        [
            {"prompt": x["prompt"], "completion": x["completion"], "label": bool(x["label"])}
            for x in samples
        ]
    )
    args = KTOConfig(
        output_dir=str(out / "checkpoints"),
        beta=cfg.beta,
        desirable_weight=cfg.desirable_weight,
        undesirable_weight=cfg.undesirable_weight,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        seed=cfg.seed,
        report_to=list(cfg.report_to),
        disable_tqdm=cfg.disable_tqdm,
        use_cpu=not cuda,
    )
    trainer = KTOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    metrics = dict(trainer.train().metrics)
    final = out / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(final))
    return metrics


def run(cfg: KTOStageConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    out = resolve_path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.samples_file:
        path = resolve_path(cfg.samples_file)
        samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        prepared = prepare(cfg.data)
        samples = sample(cfg, prepared.train)
        write_jsonl(out / "samples.jsonl", samples)
    desirable = sum(bool(x["label"]) for x in samples)
    info: dict[str, Any] = {
        "samples": len(samples),
        "desirable": desirable,
        "undesirable": len(samples) - desirable,
        "config": to_dict(cfg),
    }
    print(
        f"kto: {len(samples)} samples, {desirable} desirable, {len(samples) - desirable} not",
        file=sys.stderr,
    )
    if not cfg.sample_only:
        info["metrics"] = train_kto(cfg, samples)
        info["final_dir"] = str(out / "final")
    info["seconds"] = round(time.monotonic() - t0, 2)
    (out / "kto_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("KTO stage: engine sampling + TRL KTOTrainer")
    args = parser.parse_args(argv)
    cfg = load_config(KTOStageConfig, args.config, args.overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    info = run(cfg)
    print(json.dumps({k: v for k, v in info.items() if k != "config"}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
