"""Loaders on every shipped file and on broken CSVs."""

from __future__ import annotations

import pytest

from kaggle_submission.answers import AIMO1_POLICY, AIMO3_POLICY
from kaggle_submission.problems import ProblemFileError, load_problems, truths

SHIPPED = [
    # name, rows, key field, answers known, unanswerable under AIMO-1 (non-negative mod 1000),
    # unanswerable under AIMO-3 (0..99999)
    pytest.param("aimo1-train", 10, "id", True, 0, 0, id="aimo1-train"),
    pytest.param("aime-2022-2024", 90, "id", True, 0, 0, id="aime"),
    pytest.param("amc12-2022-2023", 83, "url", True, 2, 2, id="amc12"),
    pytest.param("aimo3-reference", 10, "id", True, 0, 0, id="aimo3-reference"),
    pytest.param("aimo1-test-placeholder", 3, "id", False, 0, 0, id="aimo1-test"),
]


@pytest.mark.parametrize(("name", "rows", "key", "known", "out1", "out3"), SHIPPED)
def test_shipped_sets(name, rows, key, known, out1, out3):
    problems = load_problems(name)
    assert len(problems) == rows
    assert problems.key_field == key
    assert len({p.key for p in problems}) == rows
    assert all(p.problem for p in problems)
    assert all((p.answer is not None) == known for p in problems)
    assert len(problems.outside(AIMO1_POLICY)) == out1
    assert len(problems.outside(AIMO3_POLICY)) == out3


def test_aime_zero_padded_and_amc_floats_kept_as_integers():
    aime = {p.key: p.answer for p in load_problems("aime-2022-2024")}
    assert (aime["6"], aime["16"]) == (33, 4)  # "033" and "004" in the file
    amc = load_problems("amc12-2022-2023")
    by_url = {p.key: p.answer for p in amc}
    assert (
        by_url["https://artofproblemsolving.com/wiki/index.php/2022_AMC_12A_Problems/Problem_17"]
        == -4
    )
    assert sorted(p.answer for p in amc.outside(AIMO1_POLICY)) == [-4, -1]
    above = sorted(p.answer for p in amc if p.answer is not None and p.answer > 999)
    assert above == [1296, 1625, 3159, 8178]  # kept as in the file
    scored = truths(amc, AIMO1_POLICY)
    assert sorted(scored[p.key] for p in amc if p.answer in above) == [159, 178, 296, 625]
    assert sorted(t for t in scored.values() if t is not None and t < 0) == [-4, -1]
    assert truths(amc, AIMO3_POLICY) == by_url


BROKEN = [
    pytest.param("id,question\n1,What?\n", "no 'problem' column", id="no-problem-column"),
    pytest.param(
        "id,problem,answer\n1,,5\n", "row 2: field 'problem' is empty", id="empty-problem"
    ),
    pytest.param(
        "id,problem,answer\n1,What?,5\n2,Why?,x7\n",
        "row 3: field 'answer' is 'x7'",
        id="bad-answer",
    ),
    pytest.param(
        "id,problem,answer\n1,What?,2.5\n", "row 2: field 'answer' is '2.5'", id="fractional-answer"
    ),
    pytest.param("id,problem\n1,What?,extra\n", "row 2: more fields", id="extra-field"),
    pytest.param(b"id,problem\n1,\xff\xfe\n", "not a readable UTF-8 CSV", id="not-utf8"),
]


@pytest.mark.parametrize(("content", "message"), BROKEN)
def test_broken_files_name_file_row_and_field(tmp_path, content, message):
    path = tmp_path / "broken.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ProblemFileError) as info:
        load_problems(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file_lists_shipped_sets(tmp_path):
    with pytest.raises(ProblemFileError, match="aime-2022-2024"):
        load_problems(tmp_path / "nope.csv")


def test_minimal_csv_keys_by_row_when_ids_repeat(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,problem\n1,A?\n1,B?\n")
    problems = load_problems(path)
    assert [p.key for p in problems] == ["row2", "row3"]
    assert [p.answer for p in problems] == [None, None]
