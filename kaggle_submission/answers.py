"""Answer extraction and majority voting for AIMO rollouts.

Pure core: standard library only (no sympy, no numpy), so it imports in milliseconds and can run
inside any worker. Model text is never evaluated: answers are parsed by a small hand-written
tokenizer and recursive-descent parser over exact ``Fraction`` arithmetic, with size bounds so
that hostile inputs such as ``10^{10^{10}}`` return ``None`` at once.

Design choices that differ from the AIMO-1 winner's published notebook on purpose:

- Non-integers are rejected, never rounded (``round(float("2.6")) == 3`` scored wrong answers).
- Negative answers are rejected, never reduced (``-5 % 1000 == 995`` looks plausible).
- Reduction follows each competition's rules: AIMO-1 and AIMO-2 define the answer as "a
  non-negative integer, reported modulo 1000", so their policies reduce (2024 -> 24, and 2024
  and 24 vote together); AIMO-3 keeps 0..99999 with no implied modulus.
- The box is found by brace matching, not ``boxed{(.*?)}``, so nested braces work.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = [
    "AIMO1_POLICY",
    "AIMO2_POLICY",
    "AIMO3_POLICY",
    "MAX_ANSWER_CHARS",
    "MAX_BITS",
    "POLICIES",
    "AnswerPolicy",
    "Vote",
    "extract_answer",
    "extract_boxed",
    "normalize_answer",
    "vote",
]

MAX_ANSWER_CHARS = 256
"""Longest answer string parsed; longer ones are not an answer but a derivation."""

MAX_BITS = 1024
"""Largest numerator/denominator (in bits) any intermediate value may reach.

Answers are at most 17 bits; the generous bound only exists so that powers and products cannot
hang or eat memory.
"""

_MAX_DEPTH = 32  # nesting of parentheses/braces/fractions the parser follows


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerPolicy:
    """How a competition wants answers. Presets: AIMO1, AIMO2 (non-negative, mod 1000), AIMO3
    (0..99999, no modulus).

    Negative integers are never admitted, whatever the range: the competitions define the answer
    as a non-negative integer, and reducing a negative one (``-5 % 1000 == 995``) would turn a
    wrong answer into a plausible-looking one.
    """

    min_value: int = 0
    max_value: int = 999
    reduce_modulo: int | None = None
    """A non-negative integer outside the range is reduced mod this, when the competition says
    so (AIMO-1/2: "report modulo 1000"); None: such answers are invalid (AIMO-3)."""
    fallback: int = 0
    """Answer submitted when no rollout produced a valid one."""
    accept_answer_is: bool = True
    """Without any ``\\boxed``, also accept the last "the answer is 42" / "Answer: 42" phrase."""
    name: str = "custom"
    """Label for traces and reports."""

    def __post_init__(self) -> None:
        for field in ("min_value", "max_value", "fallback"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, got {value!r}")
        if self.min_value < 0:
            raise ValueError("min_value must be >= 0: negative answers are never admitted")
        if self.max_value < self.min_value:
            raise ValueError("max_value must be >= min_value")
        if not self.min_value <= self.fallback <= self.max_value:
            raise ValueError("fallback must lie in [min_value, max_value]")
        if self.reduce_modulo is not None and (
            isinstance(self.reduce_modulo, bool)
            or not isinstance(self.reduce_modulo, int)
            or self.reduce_modulo <= 0
        ):
            raise ValueError("reduce_modulo must be a positive int or None")

    def admit(self, value: Any) -> int | None:
        """The answer this policy accepts for ``value``, or None.

        Integers only (anything with ``__index__`` except bool, so numpy ints pass and floats do
        not); negatives rejected; out-of-range values reduced only when ``reduce_modulo`` is set.
        """
        if value is None or isinstance(value, bool):
            return None
        try:
            n = operator.index(value)
        except TypeError:
            return None
        if n < 0:
            return None
        if self.min_value <= n <= self.max_value:
            return n
        if self.reduce_modulo is not None:
            n %= self.reduce_modulo
            if self.min_value <= n <= self.max_value:
                return n
        return None

    def truth(self, value: int) -> int:
        """The answer the competition counts as right for a problem whose true answer is
        ``value``: reduced as an answer would be (1296 -> 296 under mod 1000), so scoring agrees
        with voting; unchanged when the policy can never admit it (a negative truth), so that no
        admitted answer ever matches it."""
        admitted = self.admit(value)
        return value if admitted is None else admitted


# "The answer is a non-negative integer, which you should report modulo 1000" (AIMO-1, AIMO-2).
AIMO1_POLICY = AnswerPolicy(min_value=0, max_value=999, reduce_modulo=1000, name="aimo1")
AIMO2_POLICY = AnswerPolicy(min_value=0, max_value=999, reduce_modulo=1000, name="aimo2")
AIMO3_POLICY = AnswerPolicy(min_value=0, max_value=99999, name="aimo3")
POLICIES: dict[str, AnswerPolicy] = {p.name: p for p in (AIMO1_POLICY, AIMO2_POLICY, AIMO3_POLICY)}


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# ``\boxed 42``: LaTeX would box only "4", but models mean the whole number.
_SPACE_BOX_ARG_RE = re.compile(r"\s+([-+]?\d+(?:,\d{3})*(?:\.\d+)?)(?!\d)")


def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; None when unclosed.

    A backslash escapes the next character, so ``\\{`` and ``\\}`` are text, while ``\\\\{``
    (line break, then a group) still opens a group.
    """
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _last_box(text: str) -> tuple[bool, str | None]:
    """(a box is present, content of the last box or None when it is unclosed)."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        end = match.end()
        open_idx = end
        while open_idx < len(text) and text[open_idx].isspace():
            open_idx += 1
        if text.startswith("{", open_idx):
            close_idx = _match_brace(text, open_idx)
            if close_idx is None:
                return True, None
            return True, text[open_idx + 1 : close_idx]
        arg = _SPACE_BOX_ARG_RE.match(text, end)
        if arg:
            return True, arg.group(1)
        # A bare mention ("put it in \boxed") is not a box: look further back.
    return False, None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}``, brace-matched.

    The last box wins because models box intermediate results before the final one. An unclosed
    last box (generation truncated mid-answer) gives None rather than an earlier box, which may
    be an intermediate value.
    """
    if not isinstance(text, str):
        return None
    return _last_box(text)[1]


# --------------------------------------------------------------------------------------------
# Normalisation: LaTeX/text -> exact integer
# --------------------------------------------------------------------------------------------

_UNICODE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u2013": "-",  # en dash
        "\u00d7": "*",  # multiplication sign
        "\u00b7": "*",  # middle dot
        "\u22c5": "*",  # dot operator
        "\u00f7": "/",  # division sign
        "\u00b0": "",  # degree sign
        "\u2261": "=",  # identical to (congruence)
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "\u2007": " ",
    }
)
_UNWRAP_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|textnormal|mathrm|mathbf|mathit|mathsf|"
    r"mathtt|mathnormal|boldsymbol|bm|mbox|hbox|boxed|fbox|underline|emph)\s*(?=\{)"
)
_SUBS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"\\\$", ""),  # currency
        (r"\\[()\[\]]|\$", " "),  # math delimiters
        (r"\\%|%", ""),
        (r"\\!", ""),
        (r"\\[,:;> ]|~|\\(?:q?quad|enspace|thinspace|medspace|thickspace)(?![A-Za-z])", " "),
        (r"\{,\}", ","),
        (r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|\\(?:circ|degree)(?![A-Za-z])", ""),
        (r"\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])", ""),
        (r"\\(?:displaystyle|textstyle)(?![A-Za-z])", ""),
        (r"\\[dtc]frac(?![A-Za-z])", r"\\frac"),
        (r"\\equiv(?![A-Za-z])", "="),
    )
)
_FRAC_SHORT_RES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),  # \frac12
    (re.compile(r"\\frac\s*(\d)\s*(?=\{)"), r"\\frac{\1}"),  # \frac1{2}
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)"), r"\\frac\1{\2}"),  # \frac{1}2
    (re.compile(r"\\sqrt\s*(\d)"), r"\\sqrt{\1}"),  # \sqrt4
)
_CHOICE_PREFIX_RE = re.compile(r"^\(?[A-E]\)\s*(?=[-+\d\\{(.])")
_TUPLE_RE = re.compile(r"\([^()]*,[^()]*\)")
_SEPARATOR_WORD_RE = re.compile(r"[,;]|\b(?:or|and)\b", re.IGNORECASE)
_MOD_SUFFIX_RE = re.compile(
    r"^(?P<expr>.*?)\s*(?:\\pmod\s*\{\s*(?P<a>\d+)\s*\}|\\pmod\s*(?P<b>\d+)"
    r"|\(\s*\\?(?:b?mod)\s*\{?\s*(?P<c>\d+)\s*\}?\s*\)|\\(?:bmod|mod)\s*\{?\s*(?P<d>\d+)\s*\}?)$"
)
_UNIT_RE = re.compile(
    r"(?P<expr>.*?[\d}).])\s+(?P<unit>[A-Za-z]+(?:\s+[A-Za-z]+)*)(?:\s*\^\s*\{?\s*[23]\s*\}?)?"
)
# Words that change the value or signal a non-answer: never stripped as units.
_NOT_UNIT_WORDS = (
    "hundred hundreds thousand thousands million millions billion billions trillion dozen "
    "dozens pi sqrt mod or and choose times over plus minus divided factorial squared cubed "
    "percent to not"
)
_NOT_UNITS = frozenset(_NOT_UNIT_WORDS.split())


def _unwrap_commands(s: str) -> str | None:
    """Replace ``\\text{X}``-like wrappers by `` X `` (spaces keep "12\\text{cm}" a unit)."""
    for _ in range(64):
        match = _UNWRAP_RE.search(s)
        if match is None:
            return s
        open_idx = match.end()
        close_idx = _match_brace(s, open_idx)
        if close_idx is None:
            return None
        s = f"{s[: match.start()]} {s[open_idx + 1 : close_idx]} {s[close_idx + 1 :]}"
    return None


def _clean(raw: str) -> str | None:
    s = raw.translate(_UNICODE)
    s = s.replace("\\\\", " ")  # LaTeX line break
    s = _unwrap_commands(s)
    if s is None:
        return None
    for pattern, repl in _SUBS:
        s = pattern.sub(repl, s)
    for pattern, repl in _FRAC_SHORT_RES:
        s = pattern.sub(repl, s)
    s = " ".join(s.split()).rstrip(" .,;")
    s = _CHOICE_PREFIX_RE.sub("", s)
    return s


def _right_hand_side(s: str) -> str | None:
    """``x = 5`` -> ``5``; chains ``n = 2^3 = 8`` take the last part; ``a=1, b=2`` -> None."""
    if "=" not in s:
        return s
    parts = s.split("=")
    if any(not p.strip() for p in parts):
        return None
    if any(_SEPARATOR_WORD_RE.search(p) for p in parts[:-1]):
        return None
    return parts[-1].strip()


def _strip_units(s: str) -> str:
    match = _UNIT_RE.fullmatch(s)
    if match is None:
        return s
    words = match.group("unit").lower().split()
    if any(len(w) < 2 or w in _NOT_UNITS for w in words):
        return s
    return match.group("expr")


# --- exact arithmetic -----------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<grouped>\d{1,3}(?P<sep>[,\ ])\d{3}(?:(?P=sep)\d{3})*(?:\.\d+)?)(?![\d])
  | (?P<num>\d+(?:\.\d*)?|\.\d+)
  | (?P<cmd>\\[A-Za-z]+)
  | (?P<op>[-+*/^(){}])
    """,
    re.VERBOSE,
)
_COMMAND_OPS = {r"\cdot": "*", r"\times": "*", r"\ast": "*", r"\div": "/"}
_COMMANDS = {r"\frac", r"\sqrt"}


class _ParseError(Exception):
    """Not an exact arithmetic expression we accept."""


def _number(text: str) -> Fraction:
    digits = text.replace(",", "").replace(" ", "")
    whole, _, frac = digits.partition(".")
    return Fraction(int((whole or "0") + frac), 10 ** len(frac))


def _tokenize(s: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(s):
        match = _TOKEN_RE.match(s, pos)
        if match is None:
            raise _ParseError(s[pos:])
        pos = match.end()
        kind = match.lastgroup
        text = match.group()
        if match.group("ws") is not None:
            continue
        if match.group("grouped") is not None:
            tokens.append(("num", _number(match.group("grouped"))))
        elif kind == "num":
            tokens.append(("num", _number(text)))
        elif kind == "cmd":
            if text in _COMMAND_OPS:
                tokens.append(("op", _COMMAND_OPS[text]))
            elif text in _COMMANDS:
                tokens.append(("cmd", text))
            else:
                raise _ParseError(text)
        else:
            tokens.append(("op", text))
    return tokens


def _check(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _ParseError("value too large")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise _ParseError("non-integer exponent")
    e = exponent.numerator
    if base == 0 and e < 0:
        raise _ParseError("division by zero")
    if base in (0, 1) or e == 0:
        return base**e
    if base == -1:
        return Fraction(-1 if e % 2 else 1)
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    # |result| needs at least |e| * (bits - 1) bits: refuse before computing anything huge.
    if abs(e) * max(bits - 1, 1) > MAX_BITS:
        raise _ParseError("power too large")
    return _check(base**e)


def _exact_sqrt(value: Fraction) -> Fraction:
    if value < 0:
        raise _ParseError("sqrt of negative")
    num, den = math.isqrt(value.numerator), math.isqrt(value.denominator)
    if num * num != value.numerator or den * den != value.denominator:
        raise _ParseError("irrational sqrt")
    return Fraction(num, den)


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
    unary := ('+'|'-') unary | power; power := atom ('^' '-'? atom)?;
    atom := number | '(' expr ')' | '{' expr '}' | \\frac{expr}{expr} | \\sqrt{expr}."""

    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: Any = None) -> Any:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            raise _ParseError(f"expected {value or kind}")
        self.pos += 1
        return token[1]

    def at_op(self, *ops: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "op" and token[1] in ops

    def parse(self) -> Fraction:
        if not self.tokens:
            raise _ParseError("empty")
        value = self.expr()
        if self.pos != len(self.tokens):
            raise _ParseError("trailing tokens")
        return value

    def expr(self) -> Fraction:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _ParseError("too deep")
        value = self.term()
        while self.at_op("+", "-"):
            op = self.take("op")
            rhs = self.term()
            value = _check(value + rhs if op == "+" else value - rhs)
        self.depth -= 1
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.at_op("*", "/"):
            op = self.take("op")
            rhs = self.unary()
            if op == "/" and rhs == 0:
                raise _ParseError("division by zero")
            value = _check(value * rhs if op == "*" else value / rhs)
        return value

    def unary(self) -> Fraction:
        if self.at_op("+", "-"):
            sign = self.take("op")
            value = self.unary()
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.at_op("^"):
            self.take("op")
            if self.at_op("-"):  # 2^-1, tolerated although LaTeX wants braces
                self.take("op")
                return _power(base, -self.atom())
            return _power(base, self.atom())
        return base

    def group(self) -> Fraction:
        self.take("op", "{")
        value = self.expr()
        self.take("op", "}")
        return value

    def atom(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise _ParseError("unexpected end")
        kind, value = token
        if kind == "num":
            self.pos += 1
            return _check(value)
        if kind == "cmd":
            self.pos += 1
            if value == r"\frac":
                num = self.group()
                den = self.group()
                if den == 0:
                    raise _ParseError("division by zero")
                return _check(num / den)
            return _exact_sqrt(self.group())
        if self.at_op("{"):
            return self.group()
        if self.at_op("("):
            self.take("op", "(")
            inner = self.expr()
            self.take("op", ")")
            return inner
        raise _ParseError(f"unexpected {value!r}")


def _evaluate(s: str) -> Fraction | None:
    try:
        return _Parser(_tokenize(s)).parse()
    except (_ParseError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def normalize_answer(raw: str) -> int | None:
    """LaTeX or plain text -> the exact integer it denotes, or None.

    Accepts math delimiters, ``\\text``-like wrappers, LaTeX spacing, thousands separators
    (groups of exactly three digits), leading zeros, ``12.0``, exact fractions/powers/products/
    sums/square roots, degree signs, trailing units and periods, ``x = 5`` and a trailing
    ``\\pmod{m}``. Returns None for anything not an exact integer (``12.5``, ``\\frac{1}{2}``,
    ``\\sqrt{2}``, ``\\pi``, tuples, lists, letters) and for anything too long or too large.
    Negative values are returned (``-5``): rejecting them is the policy's job.
    """
    if not isinstance(raw, str):
        return None
    s = raw.strip()
    if not s or len(s) > MAX_ANSWER_CHARS:
        return None
    cleaned = _clean(s)
    if not cleaned:
        return None
    rhs = _right_hand_side(cleaned)
    if not rhs or _TUPLE_RE.search(rhs):
        return None
    modulus: int | None = None
    mod_match = _MOD_SUFFIX_RE.match(rhs)
    if mod_match is not None:
        modulus = int(next(g for g in mod_match.group("a", "b", "c", "d") if g is not None))
        rhs = mod_match.group("expr")
        if modulus == 0:
            return None
    value = _evaluate(_strip_units(rhs))
    if value is None or value.denominator != 1:
        return None
    n = value.numerator
    if modulus is not None and n >= 0:
        n %= modulus
    return n


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_ANSWER_LEAD_RE = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*\**\s*", re.IGNORECASE)
# X must start like a number or formula, so "the answer is correct" is no answer phrase.
_ANSWER_VALUE_RE = re.compile(
    r"\$\$(?P<dd>[^$]{1,256}?)\$\$"
    r"|\$(?P<d>[^$\n]{1,256}?)\$"
    r"|\\\((?P<p>.{1,256}?)\\\)"
    r"|\\\[(?P<b>.{1,256}?)\\\]"
    r"|(?P<bare>[-+\u2212]?[\d\\{(][^\n$]{0,255}?)"
    r"(?=\**\s*(?:[.;,]?\s*(?:\n|$)|\.\s|;|,?\s+(?:because|since|as|which|so|but|for)\b))",
    re.IGNORECASE,
)
_MAX_ANSWER_PHRASES = 64  # only the last few phrases matter; bounds the work on hostile text


def _last_answer_phrase(text: str) -> str | None:
    """X of the last "answer is X" phrase whose X looks like a value (among the last 64)."""
    leads = list(_ANSWER_LEAD_RE.finditer(text))
    for lead in reversed(leads[-_MAX_ANSWER_PHRASES:]):
        match = _ANSWER_VALUE_RE.match(text, lead.end())
        if match is not None:
            return next(g for g in match.group("dd", "d", "p", "b", "bare") if g is not None)
    return None


def extract_answer(text: str, policy: AnswerPolicy = AIMO1_POLICY) -> int | None:
    """The final answer in a model's output, admitted by ``policy``, or None.

    Source: the last ``\\boxed{}``/``\\fbox{}``; only when the text holds no box at all (and
    ``policy.accept_answer_is``), the last "answer is X" / "Answer: X" phrase whose X starts
    like a number or formula. A present but unclosed last box gives None. Then
    :func:`normalize_answer` and :meth:`AnswerPolicy.admit` (negatives, non-integers and
    out-of-range values give None).
    """
    if not isinstance(text, str) or not text:
        return None
    has_box, raw = _last_box(text)
    if not has_box and policy.accept_answer_is:
        raw = _last_answer_phrase(text)
    if raw is None:
        return None
    return policy.admit(normalize_answer(raw))


# --------------------------------------------------------------------------------------------
# Voting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vote:
    """Result of a weighted majority vote, with what traces and early stopping need.

    ``counts`` maps each admitted answer to its total weight (unweighted: its number of votes as
    a float), ordered by weight descending, ties by first appearance, so the first key is the
    winner. Keys are ints (``json.dumps`` turns them into strings; :meth:`to_dict` does too).
    """

    answer: int
    counts: dict[int, float]
    n_valid: int
    n_total: int
    used_fallback: bool
    margin: float
    """Leader's weight minus the runner-up's (the leader's own weight when alone; 0 on a tie or
    when nothing was valid)."""
    leader_share: float
    """Leader's weight over the total valid weight (0 when that total is 0)."""
    tie: bool
    """Several answers shared the top weight; the tie-break rule chose ``answer``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (counts keys as strings, order kept)."""
        return {
            "answer": self.answer,
            "counts": {str(k): v for k, v in self.counts.items()},
            "n_valid": self.n_valid,
            "n_total": self.n_total,
            "used_fallback": self.used_fallback,
            "margin": self.margin,
            "leader_share": self.leader_share,
            "tie": self.tie,
        }


def vote(
    answers: Sequence[int | None],
    policy: AnswerPolicy = AIMO1_POLICY,
    weights: Sequence[float] | None = None,
) -> Vote:
    """Weighted majority over the answers ``policy`` admits; ``policy.fallback`` when none.

    Each answer goes through :meth:`AnswerPolicy.admit` again (None, non-int, negative and
    out-of-range entries are ignored; with ``reduce_modulo`` set, out-of-range ones are reduced
    exactly as :func:`extract_answer` would). Weights default to 1 and must be finite and >= 0;
    a zero-weight answer still counts in ``n_valid`` but cannot outvote anything.

    Tallies are summed with ``math.fsum`` (exact, so independent of input order). Tie-break:
    among answers with the same top tally, the one whose first admitted occurrence comes
    earliest in ``answers`` wins (what ``Counter.most_common`` gave the AIMO-1 winner). The
    winner therefore depends on order only when there is a tie.
    """
    n_total = len(answers)
    if weights is None:
        ws = [1.0] * n_total
    else:
        if len(weights) != n_total:
            raise ValueError(f"{len(weights)} weights for {n_total} answers")
        ws = [float(w) for w in weights]
        for w in ws:
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weights must be finite and >= 0, got {w}")

    tallies: dict[int, list[float]] = {}  # insertion order = first appearance
    n_valid = 0
    for raw, w in zip(answers, ws, strict=True):
        value = policy.admit(raw)
        if value is None:
            continue
        n_valid += 1
        tallies.setdefault(value, []).append(w)

    if not tallies:
        return Vote(
            answer=policy.fallback,
            counts={},
            n_valid=0,
            n_total=n_total,
            used_fallback=True,
            margin=0.0,
            leader_share=0.0,
            tie=False,
        )

    totals = {value: math.fsum(w) for value, w in tallies.items()}
    first_seen = {value: i for i, value in enumerate(totals)}
    ranked = sorted(totals, key=lambda v: (-totals[v], first_seen[v]))
    leader = ranked[0]
    top = totals[leader]
    runner_up = totals[ranked[1]] if len(ranked) > 1 else 0.0
    total_weight = math.fsum(w for group in tallies.values() for w in group)
    return Vote(
        answer=leader,
        counts={v: totals[v] for v in ranked},
        n_valid=n_valid,
        n_total=n_total,
        used_fallback=False,
        margin=top - runner_up,
        leader_share=top / total_weight if total_weight > 0 else 0.0,
        tie=len(ranked) > 1 and runner_up == top,
    )
