"""Training data: load NuminaMath-CoT/-TIR (hub or local files), decontaminate, split, render.

Usage::

    python -m training.data --config training/configs/stage2_tir.yaml [--set data.limit=1000]

writes ``<output_dir>/data/{train,eval}.jsonl`` and ``decontamination.json`` (counts and the
removed pairs) so the split can be inspected before any GPU time is spent.

Why each step:
- Rendering goes through `kaggle_submission.prompts.format_prompt` with the tokenizer's chat
  template, the exact call the kernel makes, so the model is trained on the text it will see.
- Decontamination removes training problems that are, after normalisation, equal or nearly equal
  (character-shingle Jaccard, or containment of a validation problem inside a training problem)
  to the validation problems the kit ships, so dry-run accuracy is not inflated by memorisation.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_submission.prompts import format_prompt

from .config import REPO_ROOT, load_config, resolve_path, stage_parser
from .stage_config import DataConfig, DecontamConfig, SFTStageConfig, SourceSpec

# ------------------------------------------------------------------------------ loading


def _read_file(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as fh:
            if suffix == ".json":
                data = json.load(fh)
                yield from data if isinstance(data, list) else [data]
                return
            for i, line in enumerate(fh):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{i + 1}: not JSON: {exc}") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
    else:
        raise ValueError(f"{path}: unsupported file type (use .jsonl, .json, .parquet or .csv)")


def _records(spec: SourceSpec) -> Iterator[dict[str, Any]]:
    if spec.path:
        path = resolve_path(spec.path)
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")
            )
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"data source {spec.path}: no such file or directory")
        for f in files:
            yield from _read_file(f)
        return
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            f"data source {spec.name}: loading from the hub needs `pip install datasets` "
            "(see training/requirements-train.txt), or give a local `path`"
        ) from None
    yield from datasets.load_dataset(spec.name, split=spec.split)


def _problem_solution(record: dict[str, Any], spec: SourceSpec) -> tuple[str, str] | None:
    problem = record.get(spec.problem_field)
    solution = record.get(spec.solution_field)
    if (problem is None or solution is None) and isinstance(record.get("messages"), list):
        roles = {m.get("role"): m.get("content") for m in record["messages"]}
        problem = problem if problem is not None else roles.get("user")
        solution = solution if solution is not None else roles.get("assistant")
    if not isinstance(problem, str) or not isinstance(solution, str):
        return None
    if not problem.strip() or not solution.strip():
        return None
    return problem, solution


def load_rows(sources: Sequence[SourceSpec]) -> list[dict[str, str]]:
    """Rows {problem, solution, source} from every source; unusable records are skipped."""
    rows = []
    for spec in sources:
        taken = 0
        for record in _records(spec):
            if spec.limit is not None and taken >= spec.limit:
                break
            pair = _problem_solution(record, spec)
            if pair is None:
                continue
            rows.append({"problem": pair[0], "solution": pair[1], "source": spec.label})
            taken += 1
    return rows


# ------------------------------------------------------------------------------ decontamination

_LATEX_SPACING = re.compile(r"\\[,;:!]|\\quad|\\qquad|~")
_NON_WORD = re.compile(r"[^0-9a-z+\-*/=<>^!]+")


def normalize_problem(text: str) -> str:
    """Lower-case letters, digits and operators only: spacing, punctuation and LaTeX grouping
    do not count (so ``m^{2} n`` equals ``m^2n``, while ``1+1`` still differs from ``1-1``)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub("", _LATEX_SPACING.sub(" ", text))


def shingles(normalized: str, n: int) -> frozenset[int]:
    """Character n-grams of the normalised text, hashed to ints (set semantics)."""
    if len(normalized) < n:
        return frozenset({hash(normalized)}) if normalized else frozenset()
    return frozenset(hash(normalized[i : i + n]) for i in range(len(normalized) - n + 1))


@dataclass(frozen=True)
class ValidationProblem:
    source: str
    key: str
    text: str


def validation_problems(cfg: DecontamConfig) -> list[ValidationProblem]:
    """Problems of the shipped validation sets: every file with a `problem` column."""
    files: list[Path] = []
    for folder in cfg.validation_dirs:
        base = Path(folder) if Path(folder).is_absolute() else REPO_ROOT / folder
        if base.is_dir():
            files.extend(
                sorted(p for p in base.iterdir() if p.suffix.lower() in (".csv", ".parquet"))
            )
            break  # the first folder that exists: data/ is a copy of ../shared/data
    files.extend(resolve_path(f) for f in cfg.validation_files)
    out: list[ValidationProblem] = []
    seen_text: set[tuple[str, str]] = set()
    for f in files:
        try:
            records = list(_read_file(f))
        except (OSError, ValueError) as exc:
            print(f"decontamination: skipping {f}: {exc}", file=sys.stderr)
            continue
        for i, record in enumerate(records):
            text = record.get("problem")
            if not isinstance(text, str) or not text.strip():
                continue
            if (f.stem, text) in seen_text:
                continue
            seen_text.add((f.stem, text))
            out.append(
                ValidationProblem(f.name, str(record.get("url") or record.get("id") or i), text)
            )
    return out


class Decontaminator:
    """Exact (normalised) and near-duplicate matching against a fixed set of problems.

    An inverted index from shingle to validation problems makes each training row cost one
    lookup per shingle, so 800k NuminaMath rows against ~300 validation problems take minutes.
    """

    def __init__(self, problems: Sequence[ValidationProblem], cfg: DecontamConfig) -> None:
        self.cfg = cfg
        self.problems = list(problems)
        self.exact: dict[str, int] = {}
        self.sets: list[frozenset[int]] = []
        self.index: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(self.problems):
            norm = normalize_problem(p.text)
            self.exact.setdefault(norm, i)
            s = shingles(norm, cfg.ngram)
            self.sets.append(s)
            if len(s) >= cfg.min_shingles:
                for h in s:
                    self.index[h].append(i)

    def match(self, text: str) -> tuple[str, int, float] | None:
        """("exact" | "near", validation index, similarity) for a contaminated text, else None."""
        norm = normalize_problem(text)
        hit = self.exact.get(norm)
        if hit is not None:
            return "exact", hit, 1.0
        s = shingles(norm, self.cfg.ngram)
        if len(s) < self.cfg.min_shingles:
            return None
        shared: dict[int, int] = defaultdict(int)
        for h in s:
            for i in self.index.get(h, ()):
                shared[i] += 1
        best: tuple[str, int, float] | None = None
        for i, common in shared.items():
            other = self.sets[i]
            jaccard = common / (len(s) + len(other) - common)
            contained = common / len(other)
            if jaccard >= self.cfg.jaccard or contained >= self.cfg.containment:
                score = max(jaccard, contained)
                if best is None or score > best[2]:
                    best = ("near", i, score)
        return best


def decontaminate(
    rows: Sequence[dict[str, Any]], cfg: DecontamConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(kept rows, report): the report counts exact and near duplicates per validation file."""
    problems = validation_problems(cfg)
    report: dict[str, Any] = {
        "enabled": cfg.enabled,
        "validation_problems": len(problems),
        "validation_files": sorted({p.source for p in problems}),
        "rows_in": len(rows),
        "exact": 0,
        "near": 0,
        "by_file": {},
        "removed": [],
    }
    if not cfg.enabled or not problems:
        report["rows_out"] = len(rows)
        return list(rows), report
    finder = Decontaminator(problems, cfg)
    kept = []
    for row in rows:
        found = finder.match(row["problem"])
        if found is None:
            kept.append(row)
            continue
        kind, i, score = found
        vp = problems[i]
        report[kind] += 1
        per_file = report["by_file"].setdefault(vp.source, {"exact": 0, "near": 0})
        per_file[kind] += 1
        report["removed"].append(
            {
                "kind": kind,
                "similarity": round(score, 4),
                "validation": f"{vp.source}:{vp.key}",
                "problem": row["problem"][:300],
            }
        )
    report["rows_out"] = len(kept)
    return kept, report


# ------------------------------------------------------------------------------ split, render


def split_rows(
    rows: Sequence[dict[str, Any]], eval_fraction: float, eval_max: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shuffled (train, eval); identical problems always land on the same side."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    n_eval = min(eval_max, round(len(order) * eval_fraction))
    if n_eval == 0:
        return order, []

    # Group by problem so that two solutions of one problem never straddle the split.
    def bucket(row: dict[str, Any]) -> int:
        digest = hashlib.sha256(f"{seed}:{normalize_problem(row['problem'])}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    ranked = sorted(range(len(order)), key=lambda i: bucket(order[i]))
    eval_ids = set(ranked[:n_eval])
    train = [r for i, r in enumerate(order) if i not in eval_ids]
    evals = [r for i, r in enumerate(order) if i in eval_ids]
    return train, evals


def render(problem: str, solution: str, chat_template: str | None = None) -> str:
    """The training text: the kernel's prompt for `problem`, then the solution."""
    return format_prompt(problem, chat_template) + solution


@dataclass(frozen=True)
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    report: dict[str, Any]


def prepare(cfg: DataConfig) -> PreparedData:
    """Load, decontaminate and split (rendering happens in the SFT stage, with the tokenizer)."""
    rows = load_rows(cfg.sources)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise ValueError("no training rows: check data.sources")
    kept, report = decontaminate(rows, cfg.decontamination)
    train, evals = split_rows(kept, cfg.eval_fraction, cfg.eval_max, cfg.seed)
    report = {**report, "train_rows": len(train), "eval_rows": len(evals)}
    return PreparedData(train, evals, report)


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def summary_line(report: dict[str, Any]) -> str:
    return (
        f"data: {report['rows_in']} rows, decontamination removed {report['exact']} exact and "
        f"{report['near']} near duplicates of {report['validation_problems']} validation "
        f"problems; {report['train_rows']} train / {report['eval_rows']} eval"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = stage_parser("Prepare (load, decontaminate, split) a stage's data")
    args = parser.parse_args(argv)
    cfg = load_config(SFTStageConfig, args.config, args.overrides)
    prepared = prepare(cfg.data)
    out = resolve_path(cfg.output_dir) / "data"
    write_jsonl(out / "train.jsonl", prepared.train)
    write_jsonl(out / "eval.jsonl", prepared.eval)
    (out / "decontamination.json").write_text(json.dumps(prepared.report, indent=2) + "\n")
    print(summary_line(prepared.report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
