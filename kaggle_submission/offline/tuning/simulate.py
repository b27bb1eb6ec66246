"""Simulate a setting by resampling recorded rollouts; a bootstrap gives the uncertainty.

One replicate is one possible world and one run in it:
1. World: the recorded problems resampled with replacement, and for each of them its recorded
   rollouts resampled with replacement (a two-level bootstrap: the estimation uncertainty over
   problems and over each problem's rollout distribution).
2. Run: `problems` slots filled with the world's problems as evenly as possible (each world
   problem once when the counts match), in shuffled order, because problems arrive shuffled and
   the budget's deadlines depend on the order. Each slot draws its N rollouts from its
   problem's resampled pool, K times independently (`SimConfig.inner`).
3. Each rollout is replayed under the candidate's M and tokens per call (see `piece_tables`);
   finish times order the rollouts, the early-stop rule and the vote are applied exactly as the
   engine does (`stop_tables`), and `budget.Budget` on a fake clock hands out each problem's
   deadline, cutting what has not finished by then. Draw 0 is the run that happens (budget
   clock, wall time, predictive figures); the expected accuracy and time needed average all K
   draws, so their intervals are about the estimate, not about one run's luck.
Intervals are percentile intervals over replicates. P(overrun) and the score range are
predictive: a new run's problems drawn from the world, with that run's own rollout noise.
The same random draws serve every candidate (common random numbers), so candidates are compared
on the same worlds and differences between them are much less noisy than each estimate.

Approximations (documented in the report):
- A call that recorded more tokens than the cap is cut at the cap: its time is pro rata, and it
  yields no answer unless the answer's box closed before the cap (position estimated from the
  text). The engine then restarts from the prompt; a restart is distributed like a fresh
  rollout, so the rollout continues as another recorded rollout of the same problem with the
  calls it has left (a regenerative approximation; exact if attempts are exchangeable).
- Rollouts cancelled in the recording (censored) never finish when they need more than was
  recorded; they then run into the deadline or cap (pessimistic for time).
- Accuracy for N close to the number of recorded rollouts R is a plug-in estimate biased low
  (about -0.03 at N=16, R=24 in a coverage check; interval coverage was 0.87-0.94 for 90%
  intervals over 200-300 synthetic recordings): record N at least 2-3x the largest N tuned.
- Recorded timings carry the recording's concurrency; the throughput model instead gives each
  call completion tokens / (tps(c)/c) with c the expected number of rollouts of the problem
  still alive at that call index, plus call overhead, prefill of new tokens and the recorded
  code execution seconds.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ...budget import Budget, BudgetConfig
from ...stopping import ConsensusStop
from .recorded import Recorded
from .throughput import ThroughputTable

TimeModel = Literal["recorded", "throughput"]

APPROXIMATIONS = (  # what the report says of the method
    "two-level bootstrap: problems resampled with replacement, each problem's recorded "
    "rollouts resampled with replacement, N drawn from that pool; problems in shuffled order",
    "a vote over N of R recorded rollouts is a plug-in estimate: for N near R it reads low "
    "(about -0.03 at N=16 of R=24 in the coverage check); record N >= 2-3x the largest N tuned",
    "a call with more recorded tokens than the cap is cut at the cap (time pro rata), keeps "
    "its answer only if the box closed before the cap, and restarts as a fresh recorded "
    "rollout of the same problem with the calls left",
    "cancelled (censored) recorded rollouts never finish beyond what was recorded",
    "recorded timings carry the recording's concurrency; the throughput model uses "
    "tps(c)/c per rollout with c the expected number of rollouts still at that call",
    "P(overrun) = P(time needed without the run budget's squeeze > limit - safety) for a new "
    "run of the same number of problems; the budget itself keeps the wall time under the limit",
)


_SPEC = re.compile(
    r"^(?:agree(?P<agree>\d+)|(?P<k>\d+)of(?P<w>\d+)|(?P<lead>lead))"
    r"(?:@(?P<share>\d*\.?\d+))?(?P<no>-nolead)?$"
)
DEFAULT_MIN_SHARE = ConsensusStop().min_share


def parse_early_stop(spec: str) -> ConsensusStop | None:
    """'none' | 'lead' (unbeatable leader only) | 'agree4' | '4of5' (4 agree among the first 5
    valid); '@S' sets the agreeing answer's least share of the weight (ConsensusStop.min_share,
    e.g. 'agree4@0.5', 'agree4@0': agreement alone; without it the engine's default);
    agreement rules keep the unbeatable-leader check (the engine's default) unless suffixed
    '-nolead'."""
    text = spec.strip().lower()
    if text in ("none", "null", "off"):
        return None
    match = _SPEC.match(text)
    if not match or (match["lead"] and (match["no"] or match["share"])):
        raise ValueError(
            f"early-stop rule {spec!r}: use none, lead, agreeK[@S] or KofW[@S] [-nolead]"
        )
    if match["lead"]:
        return ConsensusStop(agree=None, unbeatable_leader=True)
    lead = not match["no"]
    share = DEFAULT_MIN_SHARE if match["share"] is None else float(match["share"])
    if match["agree"]:
        return ConsensusStop(agree=int(match["agree"]), min_share=share, unbeatable_leader=lead)
    agree, window = int(match["k"]), int(match["w"])
    if agree > window:
        raise ValueError(f"early-stop rule {spec!r}: cannot need more agreeing than the window")
    return ConsensusStop(agree=agree, min_share=share, within_first=window, unbeatable_leader=lead)


def early_stop_spec(rule: ConsensusStop | None) -> str:
    """The spec string of a rule (inverse of `parse_early_stop`)."""
    if rule is None or (rule.agree is None and not rule.unbeatable_leader):
        return "none"
    if rule.agree is None:
        return "lead"
    if rule.within_first is None:
        base = f"agree{rule.agree}"
    else:
        base = f"{rule.agree}of{rule.within_first}"
    if rule.min_share != DEFAULT_MIN_SHARE:
        base += f"@{rule.min_share:g}"
    return base if rule.unbeatable_leader else base + "-nolead"


@dataclass(frozen=True)
class Candidate:
    """One setting: N rollouts, M calls, tokens per call, per-problem cap, early stop, and the
    time bank (base share, None: the even split; most borrowed on top of it)."""

    n: int
    m: int
    max_tokens: int
    cap_s: float
    early_stop: str = "none"
    base_s: float | None = None
    borrow_s: float = 0.0

    @property
    def rule(self) -> ConsensusStop | None:
        return parse_early_stop(self.early_stop)

    @property
    def label(self) -> str:
        return (
            f"N{self.n} M{self.m} T{self.max_tokens} cap{self.cap_s:g} "
            f"{self.early_stop} base{'even' if self.base_s is None else f'{self.base_s:g}'} "
            f"borrow{self.borrow_s:g}"
        )


@dataclass(frozen=True)
class SimConfig:
    """Attributes:
    time_limit_s, problems: the run to plan (9 h and 50 on AIMO-1).
    replicates, seed: bootstrap size and its seed.
    inner: rollout draws scored per problem slot (K); more average the rollout noise out of
        the expected accuracy and time (their CIs are estimation CIs).
    confidence: level of the intervals (0.9: 5th to 95th percentile).
    startup_s: start-up before the first problem (model load).
    overhead_s: per-problem time outside the rollouts.
    time_model: "recorded" timings or the "throughput" table.
    restart_after_cut: a call cut at the token cap restarts the rollout (engine default).
    error_code_weight: vote weight of an answer whose rollout hit a code error.
    """

    time_limit_s: float
    problems: int
    replicates: int = 200
    seed: int = 0
    confidence: float = 0.9
    inner: int = 8
    startup_s: float = 0.0
    overhead_s: float = 0.0
    time_model: TimeModel = "recorded"
    throughput: ThroughputTable | None = None
    restart_after_cut: bool = True
    error_code_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.problems < 1 or self.replicates < 2 or self.inner < 1 or self.time_limit_s <= 0:
            raise ValueError("need problems, inner >= 1, replicates >= 2, a positive limit")
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        if self.time_model == "throughput" and self.throughput is None:
            raise ValueError("the throughput time model needs a throughput table")


@dataclass(frozen=True)
class CandidateResult:
    """A candidate's estimates; intervals are at `SimConfig.confidence`.

    accuracy: expected accuracy under the budget (mean over replicates) and its CI.
    score_lo/hi: predictive interval of the number right out of `problems` in one run.
    time_s, time_hi: wall time of a run under the budget (start-up included): mean and upper
        percentile.
    demand_s: expected wall time if every problem ran to completion or its cap (no squeeze by
        the run's budget), the x axis of the Pareto plot, and its CI.
    p_overrun: P(demand > limit - safety): the setting does not fit, so the budget has to cut
        problems short (predictive: a new run of `problems` problems).
    p_over_limit: P(wall time under the budget > limit); ~0 unless the overhead beats the
        budget's margins.
    accuracy_unhurried: expected accuracy with cap-only deadlines (what the budget costs).
    early_stop_share, squeezed_share, fallback_share, cut_share: per problem or rollout.
    """

    candidate: Candidate
    accuracy: float
    acc_lo: float
    acc_hi: float
    score_lo: float
    score_hi: float
    time_s: float
    time_hi: float
    demand_s: float
    demand_lo: float
    demand_hi: float
    p_overrun: float
    p_over_limit: float
    accuracy_unhurried: float
    early_stop_share: float
    squeezed_share: float
    fallback_share: float
    cut_share: float


def stop_tables(
    t: np.ndarray,
    a: np.ndarray,
    w: np.ndarray,
    truth_id: np.ndarray,
    fallback_ok: np.ndarray,
    rule: ConsensusStop | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of N rollouts (finish time t, answer id a >= 0 or -1, vote weight w): the finish
    times sorted, the index of the finish event at which `rule` stops the problem (N - 1: it
    never does), whether the vote after the first i finishers is right and whether it had any
    valid answer (i = 0..N, shape (rows, N + 1)).

    Mirrors the engine: the rule is asked after each finish while others still run, sees the
    valid answers in finishing order; the vote is `answers.vote` (weighted, ties to the first
    finished, the policy's fallback when nothing is valid)."""
    order = np.argsort(t, axis=1, kind="stable")
    ts = np.take_along_axis(t, order, 1)
    ans = np.take_along_axis(a, order, 1)
    ws = np.take_along_axis(w, order, 1)
    rows, n = ts.shape
    valid = ans >= 0
    k = max(int(ans.max(initial=-1)), int(truth_id.max(initial=-1))) + 1  # >= 1
    k = max(k, 1)
    onehot = ans[:, :, None] == np.arange(k)
    count = np.cumsum(onehot, axis=1, dtype=np.int16)
    if np.all(ws == 1.0):  # the usual case: tallies are counts (small ints: faster)
        tally: np.ndarray = count
        top = count.max(axis=-1)
        leaders = (count == top[..., None]) & (count > 0)
    else:
        tally = np.cumsum(onehot * ws[:, :, None], axis=1)
        top = tally.max(axis=-1)
        leaders = (tally >= top[..., None] - 1e-9) & (count > 0)
    # the vote is right when the truth leads and no leader was seen before it (ties go to the
    # first seen); an answer never seen has first = n
    first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), n)
    has_truth = truth_id >= 0
    t_col = np.where(has_truth, truth_id, 0)[:, None]
    truth_first = np.where(has_truth, np.take_along_axis(first, t_col, 1)[:, 0], -1)
    truth_leads = np.take_along_axis(leaders, t_col[:, :, None], 2)[..., 0] & has_truth[:, None]
    beaten = (leaders & (first < truth_first[:, None])[:, None, :]).any(axis=-1)
    any_valid = np.cumsum(valid, axis=1) > 0
    right = np.where(any_valid, truth_leads & ~beaten, fallback_ok[:, None])
    correct = np.concatenate([fallback_ok[:, None], right], axis=1)
    answered = np.concatenate([np.zeros((rows, 1), bool), any_valid], axis=1)
    stop_idx = np.full(rows, n - 1)
    if rule is not None:
        stop = np.zeros((rows, n), bool)
        if rule.agree is not None:
            window, share = count, tally
            if rule.within_first is not None:
                inside = valid & (np.cumsum(valid, axis=1) <= rule.within_first)
                window = np.cumsum(onehot & inside[:, :, None], axis=1, dtype=np.int16)
                share = np.cumsum(onehot * (ws * inside)[:, :, None], axis=1)
            if rule.min_share > 0:  # ConsensusStop: agree votes AND min_share of the weight
                total = share.sum(axis=-1, keepdims=True)
                held = share >= rule.min_share * total - 1e-9
                stop |= ((window >= rule.agree) & held).any(axis=-1)
            else:
                stop |= window.max(axis=-1) >= rule.agree
        if rule.unbeatable_leader:
            ranked = np.sort(tally, axis=-1)
            runner_up = ranked[..., -2] if k > 1 else 0.0
            running = n - 1 - np.arange(n)
            stop |= any_valid & (ranked[..., -1] > runner_up + running)
        stop[:, n - 1] = False
        stop_idx = np.where(stop.any(axis=1), stop.argmax(axis=1), n - 1)
    return ts, stop_idx, correct, answered


def apply_deadline(
    ts: np.ndarray,
    stop_idx: np.ndarray,
    correct: np.ndarray,
    answered: np.ndarray,
    deadline: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(seconds, right, stopped early, had a valid answer) of each row when rollouts unfinished
    at `deadline` are cancelled: only finishers before it count, and the rule only fires
    before it."""
    done = (ts <= deadline[:, None]).sum(axis=1)
    used = np.minimum(stop_idx + 1, done)[:, None]
    right = np.take_along_axis(correct, used, 1)[:, 0]
    valid = np.take_along_axis(answered, used, 1)[:, 0]
    free = np.take_along_axis(ts, stop_idx[:, None], 1)[:, 0]
    early = (stop_idx < ts.shape[1] - 1) & (stop_idx + 1 <= done)
    return np.minimum(free, deadline), right, early, valid


@dataclass(frozen=True)
class Tables:
    """`stop_tables` output for sampled problems, shaped (B, S, K, ...)."""

    ts: np.ndarray
    stop_idx: np.ndarray
    correct: np.ndarray
    answered: np.ndarray


class Simulator:
    """Runs candidates against one set of recorded rollouts with shared random draws."""

    def __init__(self, recorded: Recorded, budget: BudgetConfig, config: SimConfig) -> None:
        self.rec = recorded
        self.budget = budget
        self.config = config
        rng = np.random.default_rng(config.seed)
        B, P, S, K = config.replicates, recorded.num_problems, config.problems, config.inner
        sizes = recorded.n_rollouts
        self.world = rng.integers(0, P, size=(B, P))
        # each world problem's rollouts: a bootstrap resample of the recorded ones
        r_max = recorded.tokens.shape[1]
        self.pool = (rng.random((B, P, r_max)) * sizes[self.world][..., None]).astype(int)
        copies, extra = divmod(S, P)
        tiled = np.tile(np.arange(P), (B, copies + (1 if extra else 0)))
        keys = rng.random(tiled.shape)
        keys[:, copies * P :] += 1.0  # all full copies, then a random part of the last
        position = np.take_along_axis(tiled, np.argsort(keys, axis=1)[:, :S], 1)
        self.position = np.take_along_axis(position, np.argsort(rng.random((B, S)), axis=1), 1)
        self.slots = np.take_along_axis(self.world, self.position, 1)
        self.n_max = int(sizes.min())
        self.u_roll = rng.random((B, S, K, self.n_max))
        self.predict = rng.integers(0, S, size=(B, S))

    def _draw(self, u: np.ndarray) -> np.ndarray:
        """Recorded rollout indices from uniforms (B, S, K, n) via the world's pools."""
        B = self.slots.shape[0]
        size = self.rec.n_rollouts[self.slots][:, :, None, None]
        j = (u * size).astype(int)
        return self.pool[np.arange(B)[:, None, None, None], self.position[:, :, None, None], j]

    # ------------------------------------------------------------------ rollouts

    def timings(self, n: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """(end, cut_end) per call: when a rollout moves past the call, and when the call's
        generation ends if it stops at `max_tokens` (recorded or throughput model)."""
        rec = self.rec
        frac = np.where(rec.tokens > 0, np.minimum(1.0, max_tokens / np.maximum(rec.tokens, 1)), 1)
        if self.config.time_model == "recorded":
            return rec.end, rec.gen_start + rec.gen_seconds * frac
        table = self.config.throughput
        assert table is not None
        alive = rec.has_call.sum(axis=1) / rec.n_rollouts[:, None]
        speed = table.per_rollout(np.maximum(1.0, n * alive))[:, None, :]
        base = table.call_overhead_s + (
            rec.new_prompt_tokens / table.prefill_tokens_per_s if table.prefill_tokens_per_s else 0
        )
        full = base + rec.tokens / speed
        step = np.where(rec.has_call, full + rec.exec_seconds, 0.0)
        start = np.cumsum(step, axis=2) - step
        end = np.where(np.isnan(rec.end), np.nan, start + full + rec.exec_seconds)
        return end, start + base + rec.tokens * frac / speed

    def piece_tables(self, n: int, m: int, max_tokens: int) -> tuple[np.ndarray, ...]:
        """For every recorded rollout and every call allowance 1..m: when it ends, its answer
        id, its code-error flag, how many calls a restart after a cut continues with (0: none)
        and whether a call was cut. Shapes (m, P, R)."""
        rec = self.rec
        end, cut_end = self.timings(n, max_tokens)
        calls = np.arange(rec.tokens.shape[2])
        last_call = rec.tokens.shape[2] - 1
        term = np.minimum(rec.term, last_call)
        keeps = (calls == rec.term[..., None]) & (rec.box_pos <= max_tokens)
        over = rec.has_call & (rec.tokens > max_tokens) & ~keeps

        def at(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
            return np.take_along_axis(x, idx[..., None], 2)[..., 0]

        t_term = np.where(at(rec.tokens, term) > max_tokens, at(cut_end, term), at(end, term))
        out = []
        for allowance in range(1, m + 1):
            cut = over & (calls < allowance)
            any_cut = cut.any(axis=2)
            k = cut.argmax(axis=2)
            ends = rec.term < allowance
            exhausted = min(allowance - 1, last_call)
            t_exh = np.where(rec.ncalls >= allowance, end[..., exhausted], np.nan)
            t = np.where(any_cut, at(cut_end, k), np.where(ends, t_term, t_exh))
            a = np.where(any_cut | ~ends, -1, rec.answer)
            err = np.where(
                any_cut,
                (k > 0) & at(rec.err_cum, np.maximum(k - 1, 0)),
                np.where(ends, at(rec.err_cum, term), rec.err_cum[..., exhausted]),
            )
            cont = np.where(any_cut & self.config.restart_after_cut, allowance - k - 1, 0)
            out.append((np.where(np.isnan(t), np.inf, t), a, err, cont, any_cut))
        return tuple(np.stack(x) for x in zip(*out, strict=True))

    def rollouts(
        self, n: int, m: int, max_tokens: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sampled (B, S, K, n) finish times, answer ids, vote weights and cut flags."""
        t_tab, a_tab, e_tab, c_tab, cut_tab = self.piece_tables(n, m, max_tokens)
        p = self.slots[:, :, None, None]
        r = self._draw(self.u_roll[..., :n])
        t, a, err, cont, cut = (x[m - 1, p, r] for x in (t_tab, a_tab, e_tab, c_tab, cut_tab))
        for depth in range(m):
            more = cont > 0
            if not more.any():
                break
            # restarts draw fresh rollouts; seeded per depth so candidates share them
            u = np.random.default_rng([self.config.seed, 7, depth]).random(self.u_roll.shape)
            r2 = self._draw(u[..., :n])
            idx = np.maximum(cont - 1, 0)
            t = np.where(more, t + t_tab[idx, p, r2], t)
            a = np.where(more, a_tab[idx, p, r2], a)
            err = np.where(more, err | e_tab[idx, p, r2], err)
            cont = np.where(more, c_tab[idx, p, r2], 0)
        weight = np.where(err, self.config.error_code_weight, 1.0)
        return t, a, weight, cut

    # ------------------------------------------------------------------ candidates

    def run(self, candidates: Sequence[Candidate]) -> list[CandidateResult]:
        """Every candidate, sharing the rollout replay across the settings that only differ in
        cap, base, borrow or early stop."""
        results: dict[Candidate, CandidateResult] = {}
        by_chain: dict[tuple[int, int, int], list[Candidate]] = {}
        for cand in candidates:
            self.check(cand)
            by_chain.setdefault((cand.n, cand.m, cand.max_tokens), []).append(cand)
        B, S = self.slots.shape
        K = self.config.inner
        truth = np.repeat(self.rec.truth_id[self.slots].reshape(-1), K)
        fallback = np.repeat(self.rec.fallback_ok[self.slots].reshape(-1), K)
        for (n, m, tokens), group in by_chain.items():
            t, a, w, cut = self.rollouts(n, m, tokens)
            cut_share = float(cut.mean())
            t, a, w = (x.reshape(B * S * K, n) for x in (t, a, w))
            for spec in sorted({c.early_stop for c in group}):
                rule = parse_early_stop(spec)
                parts = [
                    stop_tables(t[i:j], a[i:j], w[i:j], truth[i:j], fallback[i:j], rule)
                    for i, j in _chunks(B * S * K, max(1, 4_000_000 // (n * n)))
                ]
                ts, stop_idx, correct, answered = (
                    np.concatenate(x).reshape(B, S, K, -1) for x in zip(*parts, strict=True)
                )
                tables = Tables(ts, stop_idx[..., 0], correct, answered)
                for cand in (c for c in group if c.early_stop == spec):
                    results[cand] = self._evaluate(cand, tables, cut_share)
        return [results[c] for c in candidates]

    def check(self, cand: Candidate) -> None:
        """Settings beyond the recording cannot be simulated."""
        rec = self.rec
        if not 1 <= cand.n <= self.n_max:
            raise ValueError(f"{cand.label}: N must be 1..{self.n_max} (rollouts recorded)")
        if not 1 <= cand.m <= rec.recorded_m:
            raise ValueError(f"{cand.label}: M must be 1..{rec.recorded_m} (calls recorded)")
        if not 1 <= cand.max_tokens <= rec.recorded_max_tokens:
            raise ValueError(
                f"{cand.label}: tokens per call must be 1..{rec.recorded_max_tokens} (recorded)"
            )
        if cand.cap_s <= 0 or cand.borrow_s < 0 or (cand.base_s is not None and cand.base_s <= 0):
            raise ValueError(f"{cand.label}: cap and base must be positive, borrow >= 0")
        cand.rule  # noqa: B018 - validates the spec

    def _evaluate(self, cand: Candidate, tab: Tables, cut_share: float) -> CandidateResult:
        """Unhurried (cap-only: the cap and the per-call limit) and budgeted runs. Draw k = 0
        is the run that happens (it drives the budget's clock, the wall time and the predictive
        figures); all K draws are scored at that run's deadlines, which averages the rollout
        noise out of the expected accuracy and time (the estimation CIs)."""
        cfg = self.config
        B, S, K = tab.stop_idx.shape
        rows = B * S * K
        fallback = self.rec.fallback_ok[self.slots]
        t_dem, ok_dem, _, _ = apply_deadline(
            tab.ts.reshape(rows, -1),
            tab.stop_idx.reshape(rows),
            tab.correct.reshape(rows, -1),
            tab.answered.reshape(rows, -1),
            np.full(rows, min(cand.cap_s, self.budget.per_call_ceiling())),
        )
        t_dem, ok_dem = t_dem.reshape(B, S, K), ok_dem.reshape(B, S, K)
        budget_cfg = dataclasses.replace(
            self.budget,
            total_s=cfg.time_limit_s,
            num_problems=S,
            cap_s=cand.cap_s,
            base_s=cand.base_s,
            borrow_s=cand.borrow_s,
        )
        now = np.full(B, float(cfg.startup_s))
        budgets = [
            Budget(budget_cfg, clock=lambda i=i: float(now[i]), run_started=0.0) for i in range(B)
        ]
        for budget in budgets:
            budget.started()
        seconds = np.zeros((B, S, K))
        right = np.zeros((B, S, K), bool)
        early = np.zeros((B, S, K), bool)
        answered = np.zeros((B, S, K), bool)
        squeezed = np.zeros((B, S), bool)
        for s in range(S):
            deadline = np.fromiter((b.allocate().seconds for b in budgets), float, B)
            used, ok, stopped, any_valid = apply_deadline(
                tab.ts[:, s].reshape(B * K, -1),
                tab.stop_idx[:, s].reshape(B * K),
                tab.correct[:, s].reshape(B * K, -1),
                tab.answered[:, s].reshape(B * K, -1),
                np.repeat(deadline, K),
            )
            solved = (deadline > 0)[:, None]
            seconds[:, s] = np.where(solved, used.reshape(B, K), 0.0)
            right[:, s] = np.where(solved, ok.reshape(B, K), fallback[:, s, None])
            early[:, s] = solved & stopped.reshape(B, K)
            answered[:, s] = solved & any_valid.reshape(B, K)
            squeezed[:, s] = deadline < t_dem[:, s, 0]
            now += seconds[:, s, 0] + cfg.overhead_s
            for budget in budgets:
                budget.finish()
        lo_q, hi_q = (1 - cfg.confidence) / 2, 1 - (1 - cfg.confidence) / 2

        def interval(x: np.ndarray) -> tuple[float, float, float]:
            return float(x.mean()), float(np.quantile(x, lo_q)), float(np.quantile(x, hi_q))

        acc = interval(right.mean(axis=(1, 2)))
        wall = cfg.startup_s + (seconds[..., 0] + cfg.overhead_s).sum(axis=1)
        demand = interval(cfg.startup_s + (t_dem.mean(axis=2) + cfg.overhead_s).sum(axis=1))
        rows_b = np.arange(B)[:, None]
        new_run = cfg.startup_s + (t_dem[rows_b, self.predict, 0] + cfg.overhead_s).sum(axis=1)
        score = right[rows_b, self.predict, 0].sum(axis=1)
        usable = cfg.time_limit_s - self.budget.safety_s
        return CandidateResult(
            candidate=cand,
            accuracy=acc[0],
            acc_lo=acc[1],
            acc_hi=acc[2],
            score_lo=float(np.quantile(score, lo_q)),
            score_hi=float(np.quantile(score, hi_q)),
            time_s=float(wall.mean()),
            time_hi=float(np.quantile(wall, hi_q)),
            demand_s=demand[0],
            demand_lo=demand[1],
            demand_hi=demand[2],
            p_overrun=float((new_run > usable).mean()),
            p_over_limit=float((wall > cfg.time_limit_s).mean()),
            accuracy_unhurried=float(ok_dem.mean()),
            early_stop_share=float(early.mean()),
            squeezed_share=float(squeezed.mean()),
            fallback_share=float(1 - answered.mean()),
            cut_share=cut_share,
        )


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(total, i + size)) for i in range(0, total, size)]
