"""How long answer extraction takes on adversarial inputs: the timings tests/test_answers.py
only guards against blowing up.

    python bench/bench_answers.py

Each case is timed (best of 5) beside a baseline in the same run: `extract_answer` on a short
boxed answer, and `str.rfind` over the same long text (the cheapest possible scan of it). The
huge powers are refused without being computed, so they cost about what a small one does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_submission.answers import extract_answer, normalize_answer

HUGE = [
    "10^{10^{10}}",
    "10^{10^{10^{10}}}",
    "2^{2^{2^{2^{2}}}}",
    "9^{9^{9}}",
    "\\frac{1}{10^{10^{10}}}",
    "10^{1000}",
    "(10^{300})^{300}",
    "\\sqrt{10^{10^{10}}}",
    "99999999999^{99999999999}",
    "2^{1000} \\cdot 2^{1000}",
]
LONG_BOXED = "Let me think. " * 20000 + "The answer is \\boxed{123}."
LONG_PHRASES = ("the answer is 12 maybe " * 5000) + "\n"


def best_of(call: Callable[[], object], repeat: int = 5) -> float:
    """The fastest of `repeat` runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    small = best_of(lambda: normalize_answer("2^{10}"))
    print(f"baseline normalize_answer('2^{{10}}'): {small * 1e6:8.1f} us")
    for raw in HUGE:
        t = best_of(lambda raw=raw: normalize_answer(raw))
        print(f"normalize_answer({raw!r:30}) {t * 1e6:8.1f} us  ({t / small:5.1f}x baseline)")
    short = best_of(lambda: extract_answer("The answer is \\boxed{123}."))
    print(f"baseline extract_answer(short boxed): {short * 1e6:8.1f} us")
    for name, text in (("long boxed", LONG_BOXED), ("long phrases", LONG_PHRASES)):
        scan = best_of(lambda text=text: text.rfind("\\boxed"))
        t = best_of(lambda text=text: extract_answer(text))
        print(
            f"extract_answer({name}, {len(text)} chars): {t * 1e3:7.2f} ms "
            f"(str.rfind over it: {scan * 1e3:6.3f} ms)"
        )


if __name__ == "__main__":
    main()
