"""Validation problem sets: one loader for the files the kit ships and for any user CSV.

Handles what the real files contain: AIME answers as zero-padded strings, AMC answers as floats
(six of them outside 0..999: kept as they are in the file; scoring uses `truths`, which takes
each competition's definition of the answer, so 1296 is 296 under AIMO-1/2's "modulo 1000" and
the two negative ones are reported as unanswerable), AMC ids that repeat
across years (problems are keyed by id when ids are unique, else by url, else by row), and
broken files (a clear error naming the file, row and field).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .answers import AnswerPolicy

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SHIPPED = {
    "aimo1-train": "aimo1_train.csv",
    "aime-2022-2024": "aime_2022_2024.csv",
    "amc12-2022-2023": "amc12_2022_2023.csv",
    "aimo3-reference": "aimo3_reference.csv",
    "aimo1-test-placeholder": "aimo1_test_placeholder.csv",
}

_INTEGRAL = re.compile(r"^[+-]?\d+(?:\.0*)?$")


class ProblemFileError(ValueError):
    """A problem file that cannot be used; the message names the file, row and field."""


@dataclass(frozen=True)
class Problem:
    """One problem: `key` is unique within its set; `answer` None when unknown."""

    key: str
    id: str
    problem: str
    answer: int | None
    row: int
    source: str


@dataclass(frozen=True)
class ProblemSet:
    """A loaded file: its problems in file order."""

    name: str
    path: Path
    problems: tuple[Problem, ...]
    key_field: str

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def outside(self, policy: AnswerPolicy) -> list[Problem]:
        """Problems whose known answer the policy can never admit (report them)."""
        return unanswerable(self.problems, policy)


def truths(problems: Iterable[Problem], policy: AnswerPolicy) -> dict[str, int | None]:
    """Answer to score against by key, as the competition defines it (`AnswerPolicy.truth`:
    reduced mod 1000 under AIMO-1/2), so that scoring agrees with what the kernel submits."""
    return {p.key: None if p.answer is None else policy.truth(p.answer) for p in problems}


def unanswerable(problems: Iterable[Problem], policy: AnswerPolicy) -> list[Problem]:
    """Problems with a known answer that no admitted answer can match (negative, or above the
    range of a policy without a modulus)."""
    return [p for p in problems if p.answer is not None and policy.admit(p.answer) is None]


def resolve(name_or_path: str | Path) -> Path:
    """A shipped set by name ("aime-2022-2024") or a path."""
    if str(name_or_path) in SHIPPED:
        return DATA_DIR / SHIPPED[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(sorted(SHIPPED))
        raise ProblemFileError(f"{path}: no such file (shipped sets: {names})")
    return path


def parse_answer(raw: str, where: str) -> int | None:
    """An integer from "033", "142.0", "-4.0", " 52 "; empty means unknown."""
    text = raw.strip()
    if not text:
        return None
    if not _INTEGRAL.match(text):
        raise ProblemFileError(f"{where}: field 'answer' is {raw!r}, not an integer")
    return int(text.split(".")[0])


def load_problems(name_or_path: str | Path) -> ProblemSet:
    """Read a CSV with a `problem` column and optional `id`, `answer`, `url`."""
    path = resolve(name_or_path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "problem" not in fields:
                raise ProblemFileError(
                    f"{path}: no 'problem' column (columns: {', '.join(fields) or 'none'})"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProblemFileError(f"{path}: not a readable UTF-8 CSV ({exc})") from exc
    records = []
    for row_number, row in enumerate(rows, start=2):
        where = f"{path}, row {row_number}"
        if None in row:
            raise ProblemFileError(f"{where}: more fields than the header has")
        problem = (row.get("problem") or "").strip()
        if not problem:
            raise ProblemFileError(f"{where}: field 'problem' is empty")
        answer = parse_answer(row.get("answer") or "", where) if "answer" in fields else None
        records.append((row_number, row, problem, answer))
    key_field = _key_field(fields, [r[1] for r in records])
    problems = tuple(
        Problem(
            key=str(row[key_field]) if key_field != "row" else f"row{row_number}",
            id=(row.get("id") or "").strip() or f"row{row_number}",
            problem=problem,
            answer=answer,
            row=row_number,
            source=path.name,
        )
        for row_number, row, problem, answer in records
    )
    name = next((n for n, f in SHIPPED.items() if f == path.name), path.stem)
    return ProblemSet(name, path, problems, key_field)


def _key_field(fields: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    for candidate in ("id", "url"):
        if candidate in fields:
            values = [(r.get(candidate) or "").strip() for r in rows]
            if all(values) and max(Counter(values).values(), default=1) == 1:
                return candidate
    return "row"
