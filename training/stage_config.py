"""The data and SFT stage configs: frozen dataclasses filled from YAML plus ``--set``.

Why a module of their own: ``python -m training.data`` prepares an SFT stage's data (so it reads
the SFT stage config) and the SFT stage reads the data config; with both schemas here, below
`training.data` and `training.sft`, imports point one way (stage_config <- data <- sft).
`training.data` and `training.sft` re-export these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DataConfig", "DecontamConfig", "SFTStageConfig", "SourceSpec"]


@dataclass(frozen=True)
class SourceSpec:
    """One data source: a hub dataset name (needs `datasets` and hub access) or a local file.

    Attributes:
        name: hub dataset, e.g. "AI-MO/NuminaMath-TIR" (ignored when `path` is set).
        path: local .jsonl/.json/.parquet/.csv file or a directory of them.
        split: hub split.
        problem_field, solution_field: column names; rows with `messages` (user, assistant)
            are read from those when the fields are absent.
        limit: first N rows only (smoke tests, ablations).
    """

    name: str | None = None
    path: str | None = None
    split: str = "train"
    problem_field: str = "problem"
    solution_field: str = "solution"
    limit: int | None = None

    def __post_init__(self) -> None:
        if not self.name and not self.path:
            raise ValueError("a data source needs a hub `name` or a local `path`")

    @property
    def label(self) -> str:
        return self.path or self.name or "?"


@dataclass(frozen=True)
class DecontamConfig:
    """Attributes:
    enabled: drop contaminated training rows.
    validation_dirs: folders whose CSV/parquet/JSONL files with a `problem` column are the
        validation sets (the first that exists of each is used; relative to the repo root).
    validation_files: extra files, always used.
    ngram: character shingle size over the normalised text.
    jaccard: near-duplicate when the shingle Jaccard similarity reaches this.
    containment: ... or when this share of a validation problem's shingles is in the row.
    min_shingles: problems shorter than this (in shingles) are only matched exactly.
    """

    enabled: bool = True
    validation_dirs: tuple[str, ...] = ("data", "../shared/data")
    validation_files: tuple[str, ...] = ()
    ngram: int = 8
    jaccard: float = 0.6
    containment: float = 0.8
    min_shingles: int = 12


@dataclass(frozen=True)
class DataConfig:
    """Attributes:
    sources: where rows come from (concatenated in order).
    eval_fraction: share of rows held out for evaluation loss (at most `eval_max`).
    eval_max: cap on held-out rows.
    seed: shuffling and split seed.
    limit: cap on rows after concatenation (smoke tests).
    decontamination: see DecontamConfig.
    """

    sources: tuple[SourceSpec, ...] = ()
    eval_fraction: float = 0.02
    eval_max: int = 2000
    seed: int = 42
    limit: int | None = None
    decontamination: DecontamConfig = field(default_factory=DecontamConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")


@dataclass(frozen=True)
class SFTStageConfig:
    """One SFT stage. Every field can be overridden with ``--set name=value``.

    Attributes:
        stage: a label for logs and the training_info file.
        model: base model directory or hub id (stage 2: stage 1's ``final`` directory).
        tokenizer: tokenizer directory when it differs from `model`.
        output_dir: the run directory (``final/`` and ``checkpoints/`` go inside).
        data: sources, split and decontamination (see training.data).
        block_size: packed sequence length (TRL's max_length).
        packing, packing_strategy: "wrapped" concatenates every text (EOS between) and cuts
            fixed blocks, as the winner's ConstantLengthDataset did; "bfd" bins whole texts.
        num_train_epochs, max_steps: length of training (max_steps > 0 wins).
        learning_rate, lr_scheduler_type, warmup_ratio, weight_decay, max_grad_norm: optimiser.
        per_device_train_batch_size, gradient_accumulation_steps, global_batch_size: batch;
            accumulation None means global / (per-device x processes).
        bf16: bfloat16 mixed precision (ignored with a warning on a machine without CUDA).
        gradient_checkpointing: trade compute for activation memory.
        attn_implementation: "sdpa", "flash_attention_2", ... (None: transformers' default).
        deepspeed: a DeepSpeed JSON for the Trainer (not needed under an accelerate DeepSpeed
            config, which carries its own).
        torch_threads: CPU threads for torch (None: torch's default).
    """

    stage: str = "sft"
    model: str = ""
    tokenizer: str | None = None
    output_dir: str = "runs/sft"
    data: DataConfig = field(default_factory=DataConfig)
    block_size: int = 2048
    packing: bool = True
    packing_strategy: str = "wrapped"
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 2e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int | None = None
    global_batch_size: int | None = 32
    bf16: bool = True
    gradient_checkpointing: bool = True
    attn_implementation: str | None = None
    logging_steps: int = 10
    save_strategy: str = "epoch"
    save_total_limit: int | None = 1
    eval_strategy: str = "epoch"
    seed: int = 42
    report_to: tuple[str, ...] = ("none",)
    deepspeed: str | None = None
    torch_threads: int | None = None
    dataset_num_proc: int | None = None
    dataloader_num_workers: int = 0
    disable_tqdm: bool | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.block_size < 8:
            raise ValueError("block_size must be at least 8")
        if self.packing_strategy not in ("wrapped", "bfd", "bfd_split"):
            raise ValueError("packing_strategy must be wrapped, bfd or bfd_split")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        if self.per_device_train_batch_size < 1:
            raise ValueError("per_device_train_batch_size must be >= 1")
