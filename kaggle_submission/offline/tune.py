"""Budget tuning: how to spend a run's time limit, estimated from dry-run traces.

    python -m kaggle_submission tune runs/dry-run --preset aimo1-t4x2 --time-limit 9h \\
        --problems 50 --n 8,16,32,48 --m 2,3,4 --max-tokens 1024,2048 --cap 600,900 \\
        --base even,450,540 --borrow 0,360 --early-stop none,4of5,agree4,agree4@0

Record the traces with generous settings (large N and M, `engine.early_stop=null`, a generous
budget), on the target GPU if possible. For every candidate (N, M, tokens per call, per-problem
cap, early-stop rule with its agreement count and least share, the time bank's base share and
borrow cap) the tuner replays resampled recorded rollouts through the engine's rules, the
early-stop rule, the vote and `budget.Budget` under the competition's per-call limit
(tuning/simulate.py says how and what it approximates), and writes to `--out`:
- candidates.csv and candidates.md: accuracy with its CI, the predictive range of the score,
  the expected total time needed with its CI, P(overrun), the capacity check;
- pareto.png: accuracy against expected time needed, the limit marked;
- recommended_preset.json: the best setting as a preset file (`--preset` of dry-run and the
  kernel): the highest expected accuracy with P(overrun) <= --risk whose rollouts fit the GPUs'
  KV cache; accuracies within --tie of the best count as ties, broken by less time;
- summary.json: the recommendation, its overrun risk, the settings and the warnings.
Time comes from the recorded timings (`--time-model recorded`) or from a throughput table
(`--throughput default|fit|FILE`, tuning/throughput.py) when the traces come from other hardware.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..competition import get_adapter
from ..hardware import parse_hardware
from ..presets import PRESETS, Preset, get_preset, read_preset_file
from ..protocols import PROTOCOL_RULES, RolloutRules
from .capacity import ModelShape, estimate, preset_shape
from .tuning.outputs import (
    Capacity,
    Row,
    pareto_front,
    preset_overrides,
    write_outputs,
)
from .tuning.recorded import Recorded, load_recorded
from .tuning.simulate import (
    Candidate,
    CandidateResult,
    SimConfig,
    Simulator,
    TimeModel,
    early_stop_spec,
)
from .tuning.throughput import ThroughputTable, fit_table, roofline_table

__all__ = [
    "Candidate",
    "CandidateResult",
    "TuneOptions",
    "TuneReport",
    "add_tune_parser",
    "cmd_tune",
    "tune",
]


@dataclass(frozen=True)
class TuneOptions:
    """Attributes (None: the preset's value, or a default grid from what was recorded):
    traces: trace files or dry-run folders.
    preset: hardware preset (name or preset file) the recommendation is based on.
    data: problems CSV or shipped set with the answers (else summary.json beside the traces).
    time_limit_s, problems: the run to plan.
    n, m, max_tokens, cap_s, early_stop, base_s, borrow_s: the candidate grid (base None:
        the even split; early-stop specs as `parse_early_stop`, e.g. agree4@0.5).
    replicates, inner, seed, confidence: the bootstrap (inner: rollout draws per problem,
        see SimConfig).
    risk: largest acceptable P(overrun); tie: accuracy difference treated as a tie.
    time_model, throughput: "recorded" timings, or "throughput" with a table ("default":
        roofline assumption for the preset's hardware, "fit": from the traces, or a JSON file).
    startup_s, overhead_s: start-up before the first problem; time per problem outside the
        rollouts (default: the preset's start-up reserve; measured from the traces).
    model_config: model directory whose config.json sizes the capacity check.
    out_dir: output folder; plot: write pareto.png.
    """

    traces: Sequence[str] = ()
    preset: str = "aimo1-t4x2"
    data: str | None = None
    time_limit_s: float | None = None
    problems: int | None = None
    n: Sequence[int] | None = None
    m: Sequence[int] | None = None
    max_tokens: Sequence[int] | None = None
    cap_s: Sequence[float] | None = None
    early_stop: Sequence[str] | None = None
    base_s: Sequence[float | None] | None = None
    borrow_s: Sequence[float] | None = None
    replicates: int = 200
    inner: int = 8
    seed: int = 0
    confidence: float = 0.9
    risk: float = 0.05
    tie: float = 0.002
    time_model: TimeModel = "recorded"
    throughput: str | None = None
    startup_s: float | None = None
    overhead_s: float | None = None
    model_config: str | None = None
    out_dir: Path = Path("runs/tune")
    plot: bool = True


@dataclass
class TuneReport:
    """What `tune` found and wrote."""

    rows: list[Row]
    recommended: Row
    meets_constraints: bool
    preset_path: Path
    summary: dict[str, Any]
    out_dir: Path
    warnings: list[str] = field(default_factory=list)


def _grid(
    given: Sequence[Any] | None, default: Sequence[Any], limit: float, what: str, notes: list[str]
) -> list[Any]:
    values = sorted(set(given if given is not None else default))
    kept = [v for v in values if v <= limit]
    if given is not None and len(kept) < len(values):
        notes.append(f"{what} above the recorded {limit:g} left out: {values[len(kept) :]}")
    if not kept:
        raise ValueError(f"no {what} value within what the traces recorded ({limit:g})")
    return kept


def candidate_grid(
    options: TuneOptions, preset: Preset, rec: Recorded, notes: list[str]
) -> list[Candidate]:
    """The product of the option lists; defaults cover what the traces can answer, and for
    the time bank the preset's setting against the even split without a bank."""
    eng, bud = preset.engine, preset.budget
    top_n, top_m, top_t = int(rec.n_rollouts.min()), rec.recorded_m, rec.recorded_max_tokens
    ns = _grid(options.n, [4, 8, 16, 32, 48, 64, eng.num_rollouts, top_n], top_n, "N", notes)
    ms = _grid(options.m, range(1, top_m + 1), top_m, "M", notes)
    ts = _grid(
        options.max_tokens,
        [top_t, max(1, top_t // 2), eng.max_tokens_per_call],
        top_t,
        "tokens per call",
        notes,
    )
    caps = sorted(set(options.cap_s or [bud.cap_s]))
    stops = list(dict.fromkeys(options.early_stop or ["none", early_stop_spec(eng.early_stop)]))
    bases = list(dict.fromkeys(options.base_s or [None, bud.base_s]))
    bases.sort(key=lambda b: (b is not None, b or 0.0))
    borrows = sorted(set(options.borrow_s or [bud.borrow_s]))
    cands = [
        # without a base below the even split there is nothing to borrow: one borrow value
        Candidate(n, m, t, float(cap), stop, base, 0.0 if base is None else float(borrow))
        for n, m, t, cap, stop, base, borrow in itertools.product(
            ns, ms, ts, caps, stops, bases, borrows
        )
    ]
    return list(dict.fromkeys(cands))


def capacity_checks(
    preset: Preset, rec: Recorded, cands: Sequence[Candidate], shape: ModelShape | None
) -> dict[Candidate, Capacity]:
    """capacity.estimate for the preset's hardware and layout against N x the 90th percentile
    of the rollouts' peak context under each candidate's M and tokens per call."""
    valid = rec.valid
    max_len = int(preset.backend_options.get("max_model_len") or 1 << 30)
    available = None
    if preset.hardware != "cpu":
        _, gpus = parse_hardware(preset.hardware)
        quant = preset.backend_options.get("quantization")
        layouts = estimate(
            shape or preset_shape(preset),
            preset.hardware,
            bits=8 if quant == "gptq" else None,
            memory_fraction=float(preset.backend_options.get("gpu_memory_utilization", 0.9)),
        )
        tp = int(preset.backend_options.get("tensor_parallel_size", 1))
        layout = layouts[0] if tp > 1 or gpus == 1 else layouts[-1]
        available = layout.engines * layout.cache_tokens_per_engine
    out: dict[Candidate, Capacity] = {}
    contexts: dict[tuple[int, int], int] = {}
    calls = np.arange(rec.tokens.shape[2])
    for cand in cands:
        key = (cand.m, cand.max_tokens)
        if key not in contexts:
            used = rec.has_call & (calls < cand.m)
            peak = np.where(
                used, rec.prompt_tokens + np.minimum(rec.tokens, cand.max_tokens), 0
            ).max(axis=2)
            contexts[key] = min(max_len, int(np.ceil(np.quantile(peak[valid], 0.9))))
        context = contexts[key]
        needed = cand.n * context
        ok = available is None or needed <= available
        out[cand] = Capacity(ok, context, needed, available)
    return out


def recommend(rows: Sequence[Row], risk: float, tie: float) -> tuple[Row, bool]:
    """Highest accuracy with P(overrun) <= risk and capacity OK, ties to less time; when none
    qualifies, the least risky (then most accurate) candidate, flagged."""
    ok = [r for r in rows if r.capacity.ok and r.result.p_overrun <= risk]
    if ok:
        best = max(r.result.accuracy for r in ok)
        pool = [r for r in ok if r.result.accuracy >= best - tie]
        key = lambda r: (r.result.demand_s, -r.result.accuracy, r.candidate.n)  # noqa: E731
        return min(pool, key=key), True
    pool = [r for r in rows if r.capacity.ok] or list(rows)
    return min(pool, key=lambda r: (r.result.p_overrun, -r.result.accuracy)), False


def _throughput(options: TuneOptions, preset: Preset, rec: Recorded) -> ThroughputTable | None:
    if options.time_model == "recorded" and options.throughput is None:
        return None
    source = options.throughput or "default"
    if source == "fit":
        return fit_table(rec)
    if source == "default":
        if preset.hardware == "cpu":
            raise ValueError("no default throughput table for CPU: give --throughput fit or FILE")
        tp = int(preset.backend_options.get("tensor_parallel_size", 1))
        return roofline_table(preset.hardware, tensor_parallel=tp > 1)
    return ThroughputTable.from_json(source)


def base_preset(preset_arg: str) -> tuple[str, dict[str, Any]]:
    """The preset file's base and overrides to build on."""
    if preset_arg in PRESETS:
        return preset_arg, {}
    spec = read_preset_file(preset_arg)
    return spec.base, dict(spec.overrides)


def tune(
    options: TuneOptions, recorded: Recorded | None = None, stream: TextIO | None = None
) -> TuneReport:
    """Simulate every candidate, recommend one, write the outputs; see the module docstring.

    Messages go to `stream`, default sys.stderr as it is at call time."""
    stream = stream or sys.stderr
    preset = get_preset(options.preset)
    if recorded is None and not options.traces:
        raise ValueError("no traces given: dry-run folders or trace files")
    rec = recorded or load_recorded(options.traces, preset.policy, options.data)
    notes = list(rec.warnings)
    limit = float(options.time_limit_s or preset.budget.total_s)
    problems = int(options.problems or preset.budget.num_problems)
    cands = candidate_grid(options, preset, rec, notes)
    table = _throughput(options, preset, rec)
    time_model: TimeModel = "throughput" if table is not None else "recorded"
    if time_model == "recorded" and any(c.n < rec.recorded_n for c in cands):
        notes.append(
            f"recorded timings were measured with {rec.recorded_n}+ rollouts in flight; fewer "
            "run faster on a GPU, so times for smaller N are pessimistic (--throughput fit on "
            "traces recorded with several N corrects this)"
        )
    config = SimConfig(
        time_limit_s=limit,
        problems=problems,
        replicates=options.replicates,
        inner=options.inner,
        seed=options.seed,
        confidence=options.confidence,
        startup_s=(
            preset.budget.startup_reserve_s if options.startup_s is None else options.startup_s
        ),
        overhead_s=rec.overhead_s if options.overhead_s is None else options.overhead_s,
        time_model=time_model,
        throughput=table,
        restart_after_cut=_restarts_after_cut(preset_rules(preset)),
        error_code_weight=preset.engine.error_code_weight,
    )
    print(
        f"tune: {len(cands)} candidates, {rec.num_problems} recorded problems, "
        f"{options.replicates} replicates, {time_model} timings",
        file=stream,
        flush=True,
    )
    budget = preset.budget.with_per_call_limit(get_adapter(preset.competition).PER_CALL_LIMIT_S)
    over = sorted({c.cap_s for c in cands if c.cap_s > budget.per_call_ceiling()})
    if over:
        notes.append(
            f"caps {over} exceed the per-call limit's ceiling {budget.per_call_ceiling():g} s: "
            "the budget clamps them (build_kernel.py refuses such a preset)"
        )
    results = Simulator(rec, budget, config).run(cands)
    shape = ModelShape.from_dir(options.model_config) if options.model_config else None
    capacity = capacity_checks(preset, rec, cands, shape)
    fronts = pareto_front(results, [capacity[r.candidate].ok for r in results])
    rows = [Row(r, capacity[r.candidate], f) for r, f in zip(results, fronts, strict=True)]
    best, meets = recommend(rows, options.risk, options.tie)
    rows = [Row(r.result, r.capacity, r.pareto, r is best) for r in rows]
    best = next(r for r in rows if r.recommended)
    if not meets:
        notes.append(
            f"no candidate has P(overrun) <= {options.risk} with capacity OK: recommending the "
            "least risky one; widen the grid (smaller N, M, cap; early stop)"
        )
    base, base_overrides = base_preset(options.preset)
    settings = {
        "preset": options.preset,
        "hardware": preset.hardware,
        "time_limit_s": config.time_limit_s,
        "usable_s": config.time_limit_s - preset.budget.safety_s,
        "problems": config.problems,
        "replicates": config.replicates,
        "inner": config.inner,
        "seed": config.seed,
        "confidence": config.confidence,
        "risk": options.risk,
        "tie": options.tie,
        "time_model": config.time_model,
        "throughput": table.source if table else None,
        "startup_s": config.startup_s,
        "overhead_s": config.overhead_s,
    }
    out = Path(options.out_dir)
    if table is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_json(out / "throughput.json")
    changes = preset_overrides(best.candidate, config.time_limit_s, config.problems)
    preset_path, summary = write_outputs(
        out,
        rows,
        best,
        meets,
        settings,
        base=base,
        overrides={**base_overrides, **changes},
        recorded=rec.describe(),
        notes=notes,
        plot=options.plot,
    )
    return TuneReport(rows, best, meets, preset_path, summary, out, notes)


# ---------------------------------------------------------------------------- CLI


def parse_duration(text: str) -> float:
    """Seconds from '32400', '9h', '90m', '5h30m', '45s'."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not value or parts is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 9h, 90m, 5h30m, 3600)")
    h, m, s = (float(x) if x else 0.0 for x in parts.groups())
    return 3600 * h + 60 * m + s


def _base_share(text: str) -> float | None:
    """A base share: a duration, or 'even' (None: the even split of what is left)."""
    return None if text.strip().lower() in ("even", "none") else parse_duration(text)


def _list(kind: Any) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc

    return parse


def add_tune_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`tune` on the CLI's subparsers (python -m kaggle_submission tune ...)."""
    p = subparsers.add_parser(
        "tune",
        help="choose N, M, tokens, cap, time bank and early stop for a time limit from traces",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("traces", nargs="+", help="trace files or dry-run folders (traces.jsonl)")
    p.add_argument("--preset", default="aimo1-t4x2", help="hardware preset name or file")
    p.add_argument(
        "--data",
        help="problems CSV or shipped set with answers (default: summary.json beside the traces)",
    )
    p.add_argument("--time-limit", type=parse_duration, help="whole run, e.g. 9h (preset's)")
    p.add_argument("--problems", type=int, help="problems in the run (preset's)")
    p.add_argument("--n", type=_list(int), help="rollouts per problem, e.g. 8,16,32,48")
    p.add_argument("--m", type=_list(int), help="generation calls per rollout, e.g. 2,3,4")
    p.add_argument("--max-tokens", type=_list(int), help="tokens per call, e.g. 1024,2048")
    p.add_argument("--cap", type=_list(parse_duration), help="per-problem cap, e.g. 300,600")
    p.add_argument(
        "--early-stop",
        type=_list(str),
        help="none | lead | agreeK[@S] | KofW[@S] [-nolead] (S: the agreeing answer's least "
        "share of the weight), e.g. none,4of5,agree4,agree4@0",
    )
    p.add_argument(
        "--base",
        type=_list(_base_share),
        help="time bank base share per problem, 'even' for the even split, e.g. even,300,350",
    )
    p.add_argument("--borrow", type=_list(parse_duration), help="borrow cap, e.g. 0,210,600")
    p.add_argument("--time-model", choices=["recorded", "throughput"], default="recorded")
    p.add_argument(
        "--throughput",
        help="default (roofline assumption) | fit (from the traces) | table JSON; implies "
        "--time-model throughput",
    )
    p.add_argument("--startup", type=parse_duration, help="start-up time (preset's reserve)")
    p.add_argument("--overhead", type=float, help="seconds per problem outside the rollouts")
    p.add_argument("--replicates", type=int, default=200, help="bootstrap replicates")
    p.add_argument("--inner", type=int, default=8, help="rollout draws per problem slot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confidence", type=float, default=0.9, help="interval level")
    p.add_argument("--risk", type=float, default=0.05, help="largest acceptable P(overrun)")
    p.add_argument("--tie", type=float, default=0.002, help="accuracy gap counted as a tie")
    p.add_argument("--model-config", help="model directory whose config.json sizes the KV check")
    p.add_argument("--out", default="runs/tune", help="output folder")
    p.add_argument("--no-plot", action="store_true", help="skip pareto.png")
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args: argparse.Namespace) -> int:
    report = tune(
        TuneOptions(
            traces=args.traces,
            preset=args.preset,
            data=args.data,
            time_limit_s=args.time_limit,
            problems=args.problems,
            n=args.n,
            m=args.m,
            max_tokens=args.max_tokens,
            cap_s=args.cap,
            early_stop=args.early_stop,
            base_s=args.base,
            borrow_s=args.borrow,
            replicates=args.replicates,
            inner=args.inner,
            seed=args.seed,
            confidence=args.confidence,
            risk=args.risk,
            tie=args.tie,
            time_model="throughput" if args.throughput else args.time_model,
            throughput=args.throughput,
            startup_s=args.startup,
            overhead_s=args.overhead,
            model_config=args.model_config,
            out_dir=Path(args.out),
            plot=not args.no_plot,
        )
    )
    for note in report.warnings:
        print(f"note: {note}", file=sys.stderr)
    print(report.summary["headline"])
    print(f"preset: {report.preset_path}  table: {report.out_dir / 'candidates.md'}")
    if not report.meets_constraints:
        print("WARNING: no candidate meets the risk limit; see the notes", file=sys.stderr)
    return 0


def preset_rules(preset: Preset) -> RolloutRules:
    """The rollout rules the preset runs: its engine's, else its model's protocol's defaults
    (the manifest entry's `prompt.format`; numina for a model the manifest lacks)."""
    from ..manifest import load_manifest

    try:
        name = load_manifest().get(preset.model).prompt.format
    except (KeyError, ValueError, OSError):
        name = "numina"
    return preset.engine.rules_for(PROTOCOL_RULES.get(name, PROTOCOL_RULES["numina"]))


def _restarts_after_cut(rules: RolloutRules) -> bool:
    """Whether a rollout cut by its token limit starts over (the simulator's restart rule)."""
    return rules.restart_unfinished or rules.restart_without_code
