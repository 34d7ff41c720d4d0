"""Which jury-weighting rule to ship: simulated judges and editors, weights fit on one half of the
labels, agreement with the editors measured on the other half.

    python benchmarks/jury_weights_simulation.py [--reps 200] [--labels 40 80]

Data models (hidden truth per answer, uniform 2-9; editors grade truth + N(0, 0.8) in whole points):
  issue      fair (truth + N(0,0.5)), long (rewards length), noisy (truth + N(0,2.5))  [issue 30]
  all_fair   three fair judges, noise 0.5 / 0.7 / 0.9: no bad judge, weights must not hurt
  two_long   fair, long, and a second length-rewarding judge
  generous   fair but +1.5 generous, long, noisy
  two_mid    two judges with noise 1.0 each, and long: their mean beats either
Rules: equal (the jury today), nnls (convex least squares, the shipped rule), inverse_mse
(w ~ 1/MSE on the fit half), best_single (only the judge closest on the fit half).
nnls_tNN: nnls with a judge below NN% weight excluded (the shipped rule is nnls_t25).
Every rule but best_single is guarded as shipped: its weights are used only if, on the check half,
their mean abs diff is no larger than equal weights'. Then each rep's weights grade `--fresh` new
answers (the ones the jury grades next). Printed per model and label count: on those fresh answers,
the mean abs diff and Spearman per rule, the best single judge's (the one closest on them), and
how often each rule's MAD is within 0.02 of that best judge's. The last line (RESULT) gives the
shipped rule's MAD minus the best judge's per model and label count.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from scipy.stats import spearmanr

from selfguided.components.judging.calibration import LabelledItem
from selfguided.components.judging.jury_weights import fit_weights, split_half, weighted_score

clip = lambda v: float(min(10.0, max(1.0, v)))  # noqa: E731


def panel(model: str, truth: float, length: float, rng: random.Random) -> dict[str, float]:
    fair = lambda sd, bias=0.0: clip(truth + bias + rng.gauss(0, sd))  # noqa: E731
    long = lambda: clip(3.0 + 6.0 * length + 0.2 * (truth - 5.5) + rng.gauss(0, 0.5))  # noqa: E731
    if model == "issue":
        return {"fair": fair(0.5), "long": long(), "noisy": fair(2.5)}
    if model == "all_fair":
        return {"a": fair(0.5), "b": fair(0.7), "c": fair(0.9)}
    if model == "two_long":
        return {"fair": fair(0.5), "long": long(), "long2": long()}
    if model == "generous":
        return {"fair": fair(0.5, 1.5), "long": long(), "noisy": fair(2.5)}
    if model == "two_mid":
        return {"mid1": fair(1.0), "mid2": fair(1.0), "long": long()}
    raise ValueError(model)


def items(model: str, n: int, rng: random.Random) -> list[LabelledItem]:
    out = []
    for i in range(n):
        truth, length = rng.uniform(2, 9), rng.random()
        judges = panel(model, truth, length, rng)
        human = float(min(10, max(1, round(truth + rng.gauss(0, 0.8)))))
        out.append(LabelledItem(f"i{i}", ("poem", "news", "blog")[i % 3], human, judges))
    return out


def rule_weights(rule: str, fit: list[LabelledItem], judges: list[str]) -> dict[str, float]:
    if rule == "equal":
        return {j: 1 / len(judges) for j in judges}
    if rule.startswith("nnls"):
        return fit_weights(fit, judges, exclude_below=float(rule[6:] or 0) / 100)
    mse = {j: np.mean([(it.judges[j] - it.human) ** 2 for it in fit]) for j in judges}
    if rule == "inverse_mse":
        total = sum(1 / m for m in mse.values())
        return {j: (1 / m) / total for j, m in mse.items()}
    best = min(mse, key=mse.get)
    return {j: float(j == best) for j in judges}


def agreement(scores: list[float], human: list[float]) -> tuple[float, float]:
    s, h = np.array(scores), np.array(human)
    return float(np.mean(np.abs(s - h))), float(spearmanr(s, h).statistic)


RULES = ("equal", "nnls", "nnls_t15", "nnls_t25", "inverse_mse", "best_single")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--labels", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", type=int, default=400, help="fresh answers each rep's weights are scored on")
    args = parser.parse_args()
    print("| model | labels | best single judge on the fresh answers MAD / rho | " +
          " | ".join(f"{r} MAD / rho / within 0.02 of best" for r in RULES) + " |")
    print("|---" * (3 + len(RULES)) + "|")
    summary = []
    for model in ("issue", "all_fair", "two_long", "generous", "two_mid"):
        for n in args.labels:
            rng = random.Random(f"{args.seed}-{model}-{n}")
            res = {r: [] for r in RULES}
            best = []
            for rep in range(args.reps):
                data = items(model, n, rng)
                judges = sorted(data[0].judges)
                fit, check = split_half(data, seed=rep)
                fresh = items(model, args.fresh, rng)  # the answers the jury grades next
                human = [it.human for it in fresh]
                singles = [agreement([it.judges[j] for it in fresh], human) for j in judges]
                best.append(min(singles))  # the judge with the smallest MAD on the fresh answers
                equal = {j: 1 / len(judges) for j in judges}
                for rule in RULES:
                    w = rule_weights(rule, fit, judges)
                    if rule != "best_single":  # the guard: shipped only if the check half agrees
                        held = [agreement([weighted_score(it.judges, v) for it in check], [it.human for it in check])[0]
                                for v in (w, equal)]
                        w = w if held[0] <= held[1] else equal
                    mad, rho = agreement([weighted_score(it.judges, w) for it in fresh], human)
                    res[rule].append((mad, rho, mad <= best[-1][0] + 0.02))
            b = np.array(best)
            cells = []
            for rule in RULES:
                a = np.array(res[rule], dtype=float)
                cells.append(f"{a[:, 0].mean():.3f} / {a[:, 1].mean():.3f} / {a[:, 2].mean():.0%}")
            print(f"| {model} | {n} | {b[:, 0].mean():.3f} / {b[:, 1].mean():.3f} | " + " | ".join(cells) + " |")
            shipped = np.array(res["nnls_t25"], dtype=float) if "nnls_t25" in res else None
            if shipped is not None:
                summary.append(f"{model}@{n}={shipped[:, 0].mean() - b[:, 0].mean():+.3f}")
    print(f"RESULT shipped_rule_mad_minus_best_judge {' '.join(summary)} reps={args.reps} fresh={args.fresh}")


if __name__ == "__main__":
    main()
