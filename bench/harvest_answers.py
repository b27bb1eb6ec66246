"""Harvest real model outputs into the answer-extraction regression corpus.

    python bench/harvest_answers.py runs/dry-run/traces.jsonl [more traces ...] \
        --out tests/data/answer_corpus.jsonl [--policy aimo1] [--tail 400] [--limit 200]

Why: the hand-written cases in tests/test_answers.py are the specification; this corpus holds
what models really wrote, so a change to `extract_answer` that breaks a real output fails a
test. Each rollout's final generation segment (the text the engine extracts its answer from)
becomes one record, its tail cut where the extraction does not change:

    {"id", "source", "policy", "text", "extracted", "expected", "note"}

`extracted` is what the extractor gave when the record was harvested; `expected` is what it
should give, equal to `extracted` until someone reviews the record and corrects it (saying why
in `note`). Records already in `--out` keep their `expected` and `note` (merged by text), so
harvesting again never overwrites a review. Identical tails are kept once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.answers import POLICIES, AnswerPolicy, extract_answer
from kaggle_submission.traces import GenerationSegment, read_traces


def final_segments(path: Path) -> list[tuple[str, str]]:
    """(record id, text) of each rollout's last successful generation, in file order."""
    out = []
    for trace in read_traces(path):
        for rollout in trace.rollouts:
            generations = [
                s for s in rollout.segments if isinstance(s, GenerationSegment) and not s.error
            ]
            if generations and generations[-1].text.strip():
                out.append((f"{trace.problem_id}/r{rollout.index}", generations[-1].text))
    return out


def stable_tail(text: str, policy: AnswerPolicy, tail: int) -> str:
    """The shortest tail of at least `tail` characters (grown by doubling) that extracts what
    the whole text does, so the corpus stays short without changing what it tests."""
    want = extract_answer(text, policy)
    size = tail
    while size < len(text):
        piece = text[-size:]
        if extract_answer(piece, policy) == want:
            return piece
        size *= 2
    return text


def harvest(
    traces: list[Path], policy_name: str, tail: int, limit: int | None
) -> list[dict[str, Any]]:
    """New corpus records from `traces` (unique tails, at most `limit`)."""
    policy = POLICIES[policy_name]
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in traces:
        for record_id, text in final_segments(path):
            piece = stable_tail(text, policy, tail)
            if piece in seen:
                continue
            seen.add(piece)
            extracted = extract_answer(piece, policy)
            records.append(
                {
                    "id": record_id,
                    "source": path.name,
                    "policy": policy_name,
                    "text": piece,
                    "extracted": extracted,
                    "expected": extracted,
                    "note": "",
                }
            )
            if limit is not None and len(records) >= limit:
                return records
    return records


def merge(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`existing` (reviews kept) followed by the records of `new` whose text it lacks."""
    known = {(r["policy"], r["text"]) for r in existing}
    return existing + [r for r in new if (r["policy"], r["text"]) not in known]


def read_corpus(path: Path) -> list[dict[str, Any]]:
    """The corpus records of a JSONL file (empty when it does not exist)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", nargs="+", type=Path, help="traces.jsonl files of dry runs")
    parser.add_argument("--out", type=Path, default=Path("tests/data/answer_corpus.jsonl"))
    parser.add_argument("--policy", default="aimo1", choices=sorted(POLICIES))
    parser.add_argument("--tail", type=int, default=400, help="characters kept at least")
    parser.add_argument("--limit", type=int, default=None, help="new records at most")
    args = parser.parse_args(argv)
    existing = read_corpus(args.out)
    records = merge(existing, harvest(args.traces, args.policy, args.tail, args.limit))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    added = len(records) - len(existing)
    print(f"{args.out}: {len(records)} records ({added} new); review `expected` of the new ones")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
