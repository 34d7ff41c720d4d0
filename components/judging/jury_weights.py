"""Jury weights learned from the editors: fit on one half of the labels, checked on the other.

`calibrate` (calibration.py) says which judge is closest to the editors; this module turns the
labels into the jury's weights and measures, on labels the weights never saw, whether the weighted
jury agrees with the editors better than the jury as it graded (equal weights) and than each judge.

The rule (chosen by simulation, benchmarks/jury_weights_simulation.py, docs/flywheel.md): the
convex combination of the judges' overall scores closest to the editors' in squared error on the
fit half (weights >= 0, summing to 1: the jury's score stays on the 1-10 scale; non-negative
least squares with the sum as a heavily weighted extra equation). A judge the editors do not back
gets weight 0: excluded. With fewer than `MIN_FIT` complete items the weights stay equal.

The split is by a hash of each labelled answer's id, within each category (stratified,
deterministic, the same split on every run over the same labels). The weights are shipped
(`JuryWeights.shipped`) only when the weighted jury's mean absolute difference from the editors
on the check half is no larger than the unweighted jury's; otherwise equal weights stay.

`--jury-weights fair=0.8,long=0,noisy=0.2` (`format_weights` / `parse_weights`) is how the
pipeline (`jury_weights`) and the jury (jury.JuryConfig.weights) take them.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from selfguided.components.judging.calibration import JURY, CalibrationResult, LabelledItem, calibrate

MIN_FIT = 8
"""Fewest fit-half items with every judge's score for weights other than equal."""
EXCLUDE_BELOW = 0.25
"""A judge whose fit weight is below this is excluded (weight 0): small weights are mostly the fit
half's noise, and cost held-out agreement (the simulation's t10/t25 comparison)."""
WEIGHTED = "jury (weighted)"
"""The weighted jury's row name in the held-out table."""


def parse_weights(text: str | Mapping[str, float]) -> dict[str, float]:
    """`a=0.7,b=0.3` (or a mapping) -> {judge: weight}; "" -> {} (no weights: the plain mean).

    Weights must be finite, >= 0 and not all 0; they are normalised to sum to 1.
    """
    if isinstance(text, Mapping):
        pairs = list(text.items())
    else:
        pairs = []
        for entry in (e.strip() for e in text.split(",") if e.strip()):
            name, eq, value = entry.rpartition("=")
            if not eq or not name.strip():
                raise ValueError(f"jury weight {entry!r}: write judge=weight, e.g. gpt-4o=0.7")
            try:
                pairs.append((name.strip(), float(value)))
            except ValueError:
                raise ValueError(f"jury weight {entry!r}: {value!r} is not a number") from None
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"jury weights name a judge twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if any(not math.isfinite(w) or w < 0 for _, w in pairs):
        raise ValueError("jury weights must be finite numbers >= 0")
    total = sum(w for _, w in pairs)
    if pairs and total <= 0:
        raise ValueError("jury weights are all 0: at least one judge must count")
    return {n: w / total for n, w in pairs}


def check_weights(weights: Mapping[str, float], judges: Sequence[str]) -> None:
    """Weights must name exactly the jury's judges (a judge left out would silently count 0)."""
    if weights and set(weights) != set(judges):
        raise ValueError(f"jury weights name {', '.join(sorted(weights))} but the jury is {', '.join(sorted(judges))}: "
                         "give every judge a weight (0 excludes it)")


def format_weights(weights: Mapping[str, float]) -> str:
    """{judge: weight} -> `a=0.7,b=0.3` (sorted by judge, 3 decimals)."""
    return ",".join(f"{name}={weights[name]:.3g}" for name in sorted(weights))


def weighted_score(scores: Mapping[str, float], weights: Mapping[str, float]) -> float | None:
    """The weighted mean of the judges that scored (weights renormalised over them); None when no
    judge with a weight above 0 scored."""
    have = [(scores[n], w) for n, w in weights.items() if n in scores and w > 0]
    total = sum(w for _, w in have)
    return sum(s * w for s, w in have) / total if total > 0 else None


def split_half(items: Sequence[LabelledItem], seed: int = 0) -> tuple[list[LabelledItem], list[LabelledItem]]:
    """(fit half, check half): within each category, items ordered by a hash of their id and dealt
    alternately, so both halves cover every category."""
    by_category: dict[str, list[LabelledItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    halves: tuple[list[LabelledItem], list[LabelledItem]] = ([], [])
    dealt = 0
    for category in sorted(by_category):
        for item in sorted(by_category[category],
                           key=lambda it: hashlib.sha256(f"{seed}:{it.item_id}".encode()).hexdigest()):
            halves[dealt % 2].append(item)
            dealt += 1
    return halves


def fit_weights(items: Sequence[LabelledItem], judges: Sequence[str], *,
                exclude_below: float = EXCLUDE_BELOW) -> dict[str, float]:
    """The convex weights of `judges` closest to the editors in squared error over `items` (those
    every judge scored), a judge below `exclude_below` set to 0 (the largest always stays) and the
    rest renormalised; equal weights with fewer than MIN_FIT such items."""
    from scipy.optimize import nnls

    judges = sorted(judges)
    complete = [it for it in items if all(j in it.judges for j in judges)]
    if len(judges) < 2 or len(complete) < MIN_FIT:
        return {j: 1.0 / len(judges) for j in judges}
    scores = np.array([[it.judges[j] for j in judges] for it in complete], dtype=float)
    human = np.array([it.human for it in complete], dtype=float)
    penalty = 100.0 * math.sqrt(len(complete)) * max(1.0, float(np.abs(scores).max()))
    design = np.vstack([scores, np.full(len(judges), penalty)])
    weights, _ = nnls(design, np.append(human, penalty))
    weights = weights / weights.sum()
    weights = np.where((weights < exclude_below) & (weights < weights.max()), 0.0, weights)
    return {j: float(w) for j, w in zip(judges, weights / weights.sum())}


@dataclass
class JuryWeights:
    """Weights fit on one half of the labels and the agreement they reach on the other."""

    weights: dict[str, float]
    fit_items: int
    check: CalibrationResult
    """Agreement on the check half: each judge, the jury as graded (`jury`) and the weighted one."""
    shipped: bool
    """True when the weighted jury's check-half mean absolute difference is no larger than the jury's."""
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def agreement(self, name: str) -> dict[str, float | None]:
        return next((a.estimates for a in self.check.overall if a.judge == name), {})

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "jury_weights": format_weights(self.weights) if self.shipped else "",
                "shipped": self.shipped, "reason": self.reason, "fit_items": self.fit_items,
                "check": self.check.to_dict()}


def _with_weighted(item: LabelledItem, weights: Mapping[str, float]) -> LabelledItem:
    jury = item.jury if item.jury is not None else (
        sum(item.judges.values()) / len(item.judges) if item.judges else None)
    weighted = weighted_score(item.judges, weights)
    judges = {**item.judges, **({WEIGHTED: weighted} if weighted is not None else {})}
    return LabelledItem(item.item_id, item.category, item.human, judges, jury=jury, row=item.row)


def learn_weights(items: Sequence[LabelledItem], *, seed: int = 0, n_resamples: int = 1000,
                  min_labels: int = 10) -> JuryWeights:
    """Fit weights on one half of `items`, check them on the other (see the module docstring)."""
    judges = sorted({name for it in items for name in it.judges})
    fit, check = split_half(items, seed)
    weights = fit_weights(fit, judges) if judges else {}
    result = calibrate([_with_weighted(it, weights) for it in check], min_labels=min_labels,
                       n_resamples=n_resamples, seed=seed)
    out = JuryWeights(weights, len(fit), result, False)
    weighted, equal = out.agreement(WEIGHTED).get("mad"), out.agreement(JURY).get("mad")
    if sum(all(j in it.judges for j in judges) for it in fit) < MIN_FIT or len(judges) < 2:
        out.reason = f"fewer than {MIN_FIT} fit-half answers scored by every judge (or one judge): equal weights stay"
    elif weighted is None or equal is None:
        out.reason = "too few labels to check weights on held-out answers"
    elif weighted <= equal:
        out.shipped, out.reason = True, f"held-out mean abs diff {weighted:.2f} <= the jury's {equal:.2f}"
    else:
        out.reason = f"held-out mean abs diff {weighted:.2f} > the jury's {equal:.2f}: equal weights stay"
    return out


def weights_markdown(learned: JuryWeights) -> str:
    """The weights, the rule that shipped them or not, and the held-out agreement table."""
    from selfguided.components.judging.calibration import _table

    check = learned.check
    lines = ["## Jury weights from the editors (fit on one half of the labels, checked on the other)", ""]
    if not check.n_items:
        return "\n".join(lines + ["Too few labelled answers to split.", ""])
    lines += [f"Fit on {learned.fit_items} labelled answers; checked on {check.n_items} others "
              "(split by a hash of the answer, within each category). Weights: "
              + ", ".join(f"{n} {w:.2f}" for n, w in sorted(learned.weights.items())) + ".", ""]
    lines += _table(check.overall)
    lines += ["", f"`{JURY}`: the jury as it graded (equal weights); `{WEIGHTED}`: the fit weights, on the check half.",
              "", ("**Shipped**: " if learned.shipped else "**Not shipped**: ") + learned.reason + "."]
    if learned.shipped:
        lines += ["", f"Use them: `--jury-weights {format_weights(learned.weights)}` (pipeline parameter "
                  f"`jury_weights`)."]
    return "\n".join(lines) + "\n"
