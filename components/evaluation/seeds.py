"""The training-seed term of a paired difference whose challenger was trained with K seeds (replicates).

The difference of each item is the mean over the challenger's replicates; its variance is the
between-replicate variance of the per-replicate estimates / K (seed and the challenger's answer noise,
a scaled chi-square on K - 1 df) plus the question variance less the challenger's answer-noise part
(`replicate_noise`), so nothing is counted twice. The K - 1 df enter Satterthwaite's formula with the
seed variance at an upper confidence limit (`seed_df`), at one level for the printed 95% interval
(`shown_quantile`) and at a more conservative one for the gate's one-sided bound
(`decision_quantile`, `PairedDiff.decision_df` in paired.py): measured by benchmarks/gate_simulation.py
(docs/evaluation.md).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from selfguided.components.evaluation.statistics import CONFIDENCE, Estimate, clusters, combine, t_quantile

_NAN = float("nan")


def replicate_noise(per_rep: Mapping[str, list[list[tuple[str, float]]]], order: Sequence[str]) -> dict[str, float]:
    """Per category, the part of one replicate's category mean that is answer noise, not seed:
    sum over its questions of their answer-noise variance / n^2, each question's from its values across
    replicates after the replicates' common shifts are removed (two-way residuals, (K-1)(N-1) df)."""
    values = {c: np.stack([(lambda x: x[:, 0] / x[:, 1])(clusters(rep)) for rep in per_rep[c]]) for c in order}
    x = np.concatenate([values[c] for c in order], axis=1)
    k, n = x.shape
    if k < 2 or n < 2:
        return {c: 0.0 for c in order}
    residual = x - x.mean(axis=0, keepdims=True) - (x.mean(axis=1, keepdims=True) - x.mean())
    per_question = (residual ** 2).sum(axis=0) / (k - 1) * n / (n - 1)
    out, start = {}, 0
    for c in order:
        size = values[c].shape[1]
        out[c] = float(per_question[start:start + size].sum()) / size ** 2
        start += size
    return out


SEED_DF_QUANTILE = {1.0: 0.1, 2.0: 0.2}  # the gate's bound, by the seed term's df (K - 1); more seeds: 0.2
SHOWN_QUANTILE = (0.25, 0.5, 0.5)  # the printed interval with two seeds: 0.25 + 0.5 / rest df, at most 0.5


def decision_quantile(seed_df_: float, rest_df: float) -> float:
    """q of the seed term's upper limit for the gate's one-sided bound: 0.1 with two seeds, 0.2 with
    more, so that two arms' one-sided 1% bounds fail <= 1.25% where the seed term dominates (0.15 and
    0.2 let 80 x 2 with two arms promote noise 2.4% and 4% of the time; plain Satterthwaite 5-7%)."""
    return SEED_DF_QUANTILE.get(float(seed_df_), 0.2)


def shown_quantile(seed_df_: float, rest_df: float) -> float:
    """q of the seed term's upper limit for the printed 95% interval: 0.2 with three or more seeds
    (covers 95-96.7%); with two, 0.25 + 0.5 / rest_df, at most 0.5: a rest with few df (the
    1-question categories' spread under Banerjee's bound) is wide already, and a fixed q 0.25-0.35
    on top of it covered 97.4-97.5% on 14/14/1/1/1. On a Behrens-Fisher simulation over every share
    of the seed term (0.05-0.95) this covers about 93-97% for the rest's df from 2 to 100 (q 0.1,
    the gate's, covered up to 98.9%; plain Satterthwaite down to 87% where the seed term dominates)."""
    if float(seed_df_) != 1.0:
        return 0.2
    base, slope, most = SHOWN_QUANTILE
    return min(most, base + slope / rest_df) if math.isfinite(rest_df) and rest_df > 0 else base


def seed_df(rest: float, rest_df: float, seed: float, seed_df_: float,
            quantile: Callable[[float, float], float] = decision_quantile) -> float:
    """Degrees of freedom of rest + seed (independent variance estimates; the seed term on K - 1 df).

    Satterthwaite's formula with the seed variance at an upper confidence limit (seed_df /
    chi^2_{seed_df, q} times the estimate, q = quantile(seed_df_, rest_df); statistics.combine's
    `limit`, the same rule the printed difference uses for its 1-question categories): plain Satterthwaite reads
    a seed spread that came out small by chance as many df. The gate's bound takes
    `decision_quantile`, the printed interval `shown_quantile`; both chosen on a Behrens-Fisher
    simulation over every share of the seed term and checked in the gate simulation
    (docs/evaluation.md)."""
    if not (seed > 0 and seed_df_ > 0):
        return rest_df
    return combine([(rest, rest_df)], [(seed, seed_df_)], limit=quantile(seed_df_, rest_df))[1]


def with_seed_variance(est: Estimate, per_replicate: Sequence[float], show: bool,
                        answer_var: float = 0.0) -> tuple[Estimate, float, float]:
    """(estimate, seed_se, decision_df): `est` (on replicate-mean differences) with the between-replicate
    variance of `per_replicate` / K added (seed and the challenger's answer noise: a scaled chi-square
    on K - 1 df), and the part of `est`'s variance that is the challenger's answer noise
    (`answer_var` / K) taken out, so it is not counted twice (that made the interval cover 97-100%);
    its df and interval by `shown_quantile`, the gate's df (decision_df) by `decision_quantile`."""
    k = len(per_replicate)
    if k < 2 or not math.isfinite(est.mean):
        return est, _NAN, _NAN
    seed_var = float(np.var(per_replicate, ddof=1)) / k
    q_var = max(0.0, est.se ** 2 - answer_var / k) if math.isfinite(est.se) else _NAN
    if not math.isfinite(q_var):
        return Estimate(est.mean, _NAN, _NAN, est.n, est.n_questions, _NAN, _NAN), math.sqrt(seed_var), _NAN
    variance = q_var + seed_var
    df = seed_df(q_var, est.df, seed_var, k - 1.0, shown_quantile)
    decision_df = seed_df(q_var, est.df, seed_var, k - 1.0, decision_quantile)
    se = math.sqrt(variance) if math.isfinite(variance) else _NAN
    low = high = _NAN
    if show and math.isfinite(se) and se > 0 and df > 0:
        half = t_quantile(1 - (1 - CONFIDENCE) / 2, df) * se
        low, high = est.mean - half, est.mean + half
    return Estimate(est.mean, low, high, est.n, est.n_questions, se, df), math.sqrt(seed_var), decision_df
