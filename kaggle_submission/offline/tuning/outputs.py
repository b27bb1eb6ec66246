"""What the tuner writes: the candidate table (CSV and Markdown), the Pareto plot, the
recommended preset file (the JSON `presets.get_preset` reads) and a summary JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .simulate import APPROXIMATIONS, Candidate, CandidateResult


@dataclass(frozen=True)
class Capacity:
    """Can the GPUs hold N rollouts at this length? (capacity.py's KV cache estimate).

    context: the 90th percentile of the rollouts' peak context (prompt + generated, under the
    candidate's M and tokens per call); needed = N x context; available: KV cache tokens over
    all engines (None on CPU, where there is nothing to check)."""

    ok: bool
    context: int
    needed: int
    available: int | None


@dataclass(frozen=True)
class Row:
    """One line of the table: the estimates, the capacity check and the verdicts."""

    result: CandidateResult
    capacity: Capacity
    pareto: bool = False
    recommended: bool = False

    @property
    def candidate(self) -> Candidate:
        return self.result.candidate

    def flat(self) -> dict[str, Any]:
        data = dataclasses.asdict(self.candidate)
        data.update({k: v for k, v in dataclasses.asdict(self.result).items() if k != "candidate"})
        data.update(
            capacity_ok=self.capacity.ok,
            kv_context=self.capacity.context,
            kv_needed=self.capacity.needed,
            kv_available=self.capacity.available,
            pareto=self.pareto,
            recommended=self.recommended,
        )
        return data


def pareto_front(
    results: Sequence[CandidateResult], eligible: Sequence[bool] | None = None
) -> list[bool]:
    """Among the eligible (those whose rollouts fit the GPUs), not dominated in (higher
    accuracy, less expected time needed)."""
    ok = list(eligible) if eligible is not None and any(eligible) else [True] * len(results)
    pool = [r for r, e in zip(results, ok, strict=True) if e]
    front = []
    for r, e in zip(results, ok, strict=True):
        dominated = any(
            o.accuracy >= r.accuracy
            and o.demand_s <= r.demand_s
            and (o.accuracy > r.accuracy or o.demand_s < r.demand_s)
            for o in pool
        )
        front.append(e and not dominated)
    return front


def preset_overrides(cand: Candidate, time_limit_s: float, problems: int) -> dict:
    """The dotted overrides that make a preset run this candidate."""
    rule = cand.rule
    changes: dict[str, Any] = {
        "engine.num_rollouts": cand.n,
        "engine.max_calls": cand.m,
        "engine.max_tokens_per_call": cand.max_tokens,
        "engine.early_stop": None if rule is None else dataclasses.asdict(rule),
        "budget.cap_s": cand.cap_s,
        "budget.base_s": cand.base_s,
        "budget.borrow_s": cand.borrow_s,
        "budget.total_s": time_limit_s,
        "budget.num_problems": problems,
    }
    return changes


def write_preset(
    path: Path, base: str, overrides: Mapping[str, Any], row: Row, notes: Mapping[str, Any]
) -> Path:
    """The recommended setting as a preset file: {"base", "name", "description", "overrides"}
    plus a "tuning" record of the estimates (ignored by get_preset)."""
    r = row.result
    data = {
        "base": base,
        "name": f"{base}-tuned",
        "description": (
            f"tuned: {row.candidate.label}; expected accuracy {r.accuracy:.3f} "
            f"[{r.acc_lo:.3f}, {r.acc_hi:.3f}], P(overrun) {r.p_overrun:.3f}"
        ),
        "overrides": dict(overrides),
        "tuning": {**notes, **row.flat()},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    flat = [r.flat() for r in rows]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    return path


def _time(seconds: float, hours: bool) -> str:
    return f"{seconds / 3600:.2f}" if hours else f"{seconds:.0f}"


def markdown_table(rows: Sequence[Row], problems: int, hours: bool, confidence: float) -> str:
    """Sorted by accuracy, then time needed."""
    unit = "h" if hours else "s"
    level = f"{confidence:.0%}"
    lines = [
        f"| N | M | tokens | cap s | stop | base s | borrow s | accuracy ({level} CI) | "
        f"right of {problems} ({level} PI) | time needed {unit} ({level} CI) | P(overrun) | "
        "early | capacity | front | |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(rows, key=lambda r: (-r.result.accuracy, r.result.demand_s))
    for row in ordered:
        c, r, cap = row.candidate, row.result, row.capacity
        fits = "ok" if cap.ok else "NO"
        if cap.available is not None:
            fits += f" ({cap.needed // 1000}k/{cap.available // 1000}k)"
        lines.append(
            f"| {c.n} | {c.m} | {c.max_tokens} | {c.cap_s:g} | {c.early_stop} | "
            f"{'even' if c.base_s is None else f'{c.base_s:g}'} | {c.borrow_s:g} | "
            f"{r.accuracy:.3f} [{r.acc_lo:.3f}, {r.acc_hi:.3f}] | "
            f"{r.score_lo:.0f}-{r.score_hi:.0f} | {_time(r.demand_s, hours)} "
            f"[{_time(r.demand_lo, hours)}, {_time(r.demand_hi, hours)}] | {r.p_overrun:.2f} | "
            f"{r.early_stop_share:.2f} | {fits} | {'*' if row.pareto else ''} | "
            f"{'**recommended**' if row.recommended else ''} |"
        )
    return "\n".join(lines)


def plot_pareto(
    rows: Sequence[Row], time_limit_s: float, usable_s: float, path: Path, confidence: float
) -> Path:
    """Accuracy against expected time needed, CIs as bars, the limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = time_limit_s >= 3600
    scale = 3600.0 if hours else 1.0
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        r = row.result
        x, y = r.demand_s / scale, r.accuracy
        color = "#36c" if row.capacity.ok else "#c33"
        ax.errorbar(
            x,
            y,
            xerr=[[max(0.0, x - r.demand_lo / scale)], [max(0.0, r.demand_hi / scale - x)]],
            yerr=[[max(0.0, y - r.acc_lo)], [max(0.0, r.acc_hi - y)]],
            fmt="o" if row.capacity.ok else "x",
            color=color,
            alpha=0.35,
            ms=4,
            lw=0.8,
        )
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.result.demand_s)
    if front:
        ax.plot(
            [r.result.demand_s / scale for r in front],
            [r.result.accuracy for r in front],
            "-o",
            color="#2a6",
            ms=5,
            label="Pareto front",
        )
        span = max(1e-9, (front[-1].result.demand_s - front[0].result.demand_s) / scale)
        last_x = -np.inf
        for r in front:  # label points far enough apart to read (equal settings overlap)
            x = r.result.demand_s / scale
            if x - last_x < 0.06 * span:
                continue
            last_x = x
            ax.annotate(
                r.candidate.label,
                (x, r.result.accuracy),
                fontsize=6,
                xytext=(3, -9),
                textcoords="offset points",
            )
    best = [r for r in rows if r.recommended]
    if best:
        r = best[0].result
        ax.plot(r.demand_s / scale, r.accuracy, "*", color="#e90", ms=16, label="recommended")
    ax.axvline(time_limit_s / scale, color="#c33", lw=1.5, label="time limit")
    ax.axvline(usable_s / scale, color="#c33", lw=1, ls="--", label="limit - safety")
    ax.set_xlabel(f"expected total time needed ({'hours' if hours else 'seconds'})")
    ax.set_ylabel("expected accuracy")
    ax.set_title(
        f"Candidates: accuracy against time ({confidence:.0%} intervals; red x: does not fit "
        "the KV cache)"
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _duration(seconds: float, hours: bool) -> str:
    return f"{seconds / 3600:.2f} h" if hours else f"{seconds:.0f} s"


def write_outputs(
    out: Path,
    rows: Sequence[Row],
    best: Row,
    meets: bool,
    settings: Mapping[str, Any],
    *,
    base: str,
    overrides: Mapping[str, Any],
    recorded: Mapping[str, Any],
    notes: Sequence[str],
    plot: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """candidates.csv/.md, pareto.png, recommended_preset.json and summary.json in `out`;
    returns the preset's path and the summary."""
    out.mkdir(parents=True, exist_ok=True)
    limit, usable, problems = settings["time_limit_s"], settings["usable_s"], settings["problems"]
    confidence = settings["confidence"]
    hours = limit >= 3600
    write_csv(rows, out / "candidates.csv")
    preset_path = write_preset(
        out / "recommended_preset.json",
        base,
        overrides,
        best,
        {"meets_constraints": meets, **settings},
    )
    r = best.result
    headline = (
        f"recommended: {best.candidate.label} | accuracy {r.accuracy:.3f} "
        f"[{r.acc_lo:.3f}, {r.acc_hi:.3f}] | right {r.score_lo:.0f}-{r.score_hi:.0f} of "
        f"{problems} | time needed {_duration(r.demand_s, hours)} "
        f"[{_duration(r.demand_lo, hours)}, {_duration(r.demand_hi, hours)}] of "
        f"{_duration(limit, hours)} | P(overrun) {r.p_overrun:.3f}"
    )
    md = [
        "# Budget tuning",
        "",
        f"- {recorded['problems']} recorded problems, {problems} to plan for in {limit:.0f} s "
        f"(usable {usable:.0f} s), preset `{settings['preset']}` ({settings['hardware']}), "
        f"{settings['time_model']} timings, {settings['replicates']} replicates",
        f"- {headline}" + ("" if meets else " (**does not meet the risk limit**)"),
        f"- preset file: `{preset_path.name}`",
        "",
        *[f"> {n}" for n in notes],
        "",
        "![pareto](pareto.png)" if plot else "",
        "",
        markdown_table(rows, problems, hours, confidence),
        "",
        "Method and approximations:",
        *[f"- {a}" for a in APPROXIMATIONS],
    ]
    (out / "candidates.md").write_text("\n".join(md) + "\n")
    if plot:
        plot_pareto(rows, limit, usable, out / "pareto.png", confidence)
    summary = {
        "recommended": best.flat(),
        "meets_constraints": meets,
        "p_overrun": r.p_overrun,
        "preset_file": str(preset_path),
        "preset_overrides": dict(overrides),
        "headline": headline,
        "settings": dict(settings),
        "recorded": dict(recorded),
        "candidates": len(rows),
        "pareto": [row.candidate.label for row in rows if row.pareto],
        "warnings": list(notes),
        "approximations": list(APPROXIMATIONS),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return preset_path, summary
