"""How often the promotion gate promotes noise, how often it finds a real improvement, and whether its
intervals cover, under kind and unkind data (issues 18 and 28).

Feeds the shipped gate (`evaluation.gate.evaluate_run`: challenger pick, paired comparison with the
champion row, decision; the default `PromotionGate` but for min_paired_questions) judge-like scores
in the test-set layouts the pipeline produces, one or two candidate arms, and reads its decision and
the challenger-vs-champion intervals it reports. Nothing is patched.

Data models (`MODELS`): issue 18's default (question effect SD 1.2, turn effect SD 0.5, answer noise
SD 1.0, four integer criteria with their own noise SD 0.5, averaged and clipped to 1-10;
`statistics.judge_scores`); categories whose answer noise differs by 2x or 4x (SD 0.71 vs 1.41,
0.5 vs 2.0), the smaller categories noisier or the bigger ones (in layouts of equal categories: the
second half or the first half); a ceiling (mean quality 8.5); one integer score per answer; heavy
tails (t, 3 df, same SD); training-seed noise (each training run's quality shifted by N(0, 0.3), the
arm trained K = 2 or 3 times; K = 1 is the default model read at the checkpoint level: what is
promoted is that checkpoint, and its own quality is the truth). Hidden regression: one category
-1.0 while the overall is +0.3 better.

    python benchmarks/gate_simulation.py                    # every block at --reps 4000 (docs/evaluation.md's tables)
    python benchmarks/gate_simulation.py --quick            # a smoke run (tests)
    python benchmarks/gate_simulation.py --blocks rules     # the per-category rule, old and new side by side

Blocks: `null` (no true difference: false promotion per model x layout x arms; the coverage of the
overall and per-category 95% intervals of the challenger-vs-champion difference from the one-arm
runs, and of every row's own per-category and overall intervals, the report's scores table, from
all runs; and how often the gate's one-sided decision bound on the overall, at alpha / arms, lies at or
below the picked arm's truth), `power` (+0.5 and +1.0),
`rules` (old vs new per-category rule: false promotion, power at +0.5 on 80 x 2, a -1.0 regression
caught), `regression` (the chosen rule under every model, with the coverage of the intervals when
one category is truly -1.0 and the others better), `fallback` (the unpaired fallback with
the champion's logged figures from another draw of questions). The last line starts with RESULT.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing import Pool
from typing import Sequence

import numpy as np

from selfguided.components.evaluation.decision import PromotionGate
from selfguided.components.evaluation.gate import evaluate_run
from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.evaluation.statistics import ANSWER_SD, QUESTION_SD, TURN_SD, judge_scores

LAYOUTS: dict[str, tuple[tuple[int, ...], int]] = {  # name: (questions per category, turns)
    "bundled sample questions, 6 x 7": ((7,) * 6, 1),
    "make run's hold-out, 14/14/3/2/3/5": ((14, 14, 3, 2, 3, 5), 1),
    "eval_fraction 0.1 on the bundled seed, 14/14/1/1/1": ((14, 14, 1, 1, 1), 1),
    "80 questions x 2 turns (8 x 10)": ((10,) * 8, 2),
}
SHORT = {"bundled sample questions, 6 x 7": "6x7", "make run's hold-out, 14/14/3/2/3/5": "14/14/3/2/3/5",
         "eval_fraction 0.1 on the bundled seed, 14/14/1/1/1": "14/14/1/1/1", "80 questions x 2 turns (8 x 10)": "80x2"}
JUDGE = "sim-judge/v1"
SEED_SD = 0.3


@dataclass(frozen=True)
class DataModel:
    """How the simulated judge scores answers (see the module docstring)."""

    noise_ratio: float = 1.0  # SD of the noisy categories' answer noise / the quiet ones' (geometric mean ANSWER_SD)
    noisy: str = "small"  # which categories are the noisy ones: "small" or "big"
    mean: float = 5.5  # mean question quality (8.5: against the ceiling)
    criteria: int = 4  # integer criteria averaged into the score (1: one integer score)
    tails: float = math.inf  # answer noise: Student t with this many df (inf: normal)
    seed_sd: float = 0.0  # SD of a training run's shift around its arm's mean
    replicates: int = 1  # training seeds per arm


MODELS: dict[str, DataModel] = {
    "default": DataModel(),
    "noise x2, small categories noisier": DataModel(noise_ratio=2.0, noisy="small"),
    "noise x2, big categories noisier": DataModel(noise_ratio=2.0, noisy="big"),
    "noise x4, small categories noisier": DataModel(noise_ratio=4.0, noisy="small"),
    "noise x4, big categories noisier": DataModel(noise_ratio=4.0, noisy="big"),
    "ceiling (mean 8.5)": DataModel(mean=8.5),
    "one integer score": DataModel(criteria=1),
    "heavy tails (t, 3 df)": DataModel(tails=3.0),
    "seeds K=2 (seed SD 0.3)": DataModel(seed_sd=SEED_SD, replicates=2),
    "seeds K=3 (seed SD 0.3)": DataModel(seed_sd=SEED_SD, replicates=3),
}


def category_sd(layout: Sequence[int], model: DataModel) -> list[float]:
    """Answer noise SD per category: ANSWER_SD, or the quiet / noisy split of `model.noise_ratio`."""
    if model.noise_ratio == 1:
        return [ANSWER_SD] * len(layout)
    quiet, loud = ANSWER_SD / math.sqrt(model.noise_ratio), ANSWER_SD * math.sqrt(model.noise_ratio)
    big = max(layout)
    if all(n == big for n in layout):
        noisy = [c >= len(layout) // 2 for c in range(len(layout))]
    else:
        noisy = [n < big for n in layout]
    if model.noisy == "big":
        noisy = [not x for x in noisy]
    return [loud if x else quiet for x in noisy]


def regression_category(layout: Sequence[int]) -> int:
    """The category that hides the regression: the first of the largest."""
    return int(np.argmax(layout))


def simulate_rows(rng: np.random.Generator, layout: Sequence[int], turns: int, shifts: Sequence[float],
                  replicates: int = 1, seed_sd: float = 0.0, model: DataModel | None = None,
                  category_shift: dict[int, float] | None = None, truths: dict[str, list[float]] | None = None
                  ) -> list[RowJudgments]:
    """The champion row and one trained row per arm (x replicates) on the same questions.

    shifts: each arm's true difference; category_shift: per category, added to every arm's shift.
    truths: filled with each row's true quality shift per category (arm shift, its seed's, the category's)."""
    model = model or DataModel(seed_sd=seed_sd, replicates=replicates)
    replicates, seed_sd = model.replicates, model.seed_sd
    sds = category_sd(layout, model)
    quality = [model.mean + rng.normal(0.0, QUESTION_SD, size=n)[:, None] + rng.normal(0.0, TURN_SD, size=(n, turns))
               for n in layout]

    def row(name: str, kind: str, shift: float, arm: str = "", replicate: int = 0) -> RowJudgments:
        judgments = []
        if truths is not None:
            truths[name] = [shift + ((category_shift or {}).get(c, 0.0) if kind == "trained" else 0.0)
                            for c in range(len(layout))]
        for c, q_turns in enumerate(quality):
            extra = (category_shift or {}).get(c, 0.0) if kind == "trained" else 0.0
            scores = judge_scores(rng, q_turns + shift + extra, sds[c], criteria=model.criteria, tails=model.tails)
            judgments += [{"question_id": f"c{c}-q{q}", "turn": t + 1, "category": f"cat{c}", "score": float(s)}
                          for q, per_turn in enumerate(scores) for t, s in enumerate(per_turn)]
        return RowJudgments(name, kind, judgments, base_model="sim", arm=arm, judge=JUDGE, replicate=replicate)

    rows = [row("champion", "champion", 0.0)]
    arms = ("self_guided", "unscored")
    for a, shift in enumerate(shifts):
        for r in range(replicates):
            seed_shift = rng.normal(0.0, seed_sd) if seed_sd else 0.0
            rows.append(row(f"sim/{arms[a]}" + (f"#{r}" if replicates > 1 else ""), "trained", shift + seed_shift,
                            arms[a], r))
    return rows


GATE = PromotionGate(min_paired_questions=1)


def expected_score(shift: float, sd: float, model: DataModel) -> float:
    """The population mean of what `judge_scores` prints for a category whose questions' true quality
    is model.mean + shift (+ question and turn effects), answer noise SD `sd`: what a row's category
    interval estimates. Each criterion is clip(rint(u), 1, 10), so E = 1 + sum_k P(u >= k + 1/2);
    u is normal around the quality but for the answer noise, which is integrated on a grid for t tails."""
    from scipy import special, stats

    spread = math.sqrt(QUESTION_SD ** 2 + TURN_SD ** 2 + 0.5 ** 2)  # question, turn, a criterion's own noise
    if math.isinf(model.tails):
        answer, scale = np.zeros(1), math.hypot(spread, sd)
    else:
        p = (np.arange(2000) + 0.5) / 2000
        answer, scale = stats.t.ppf(p, model.tails) / math.sqrt(model.tails / (model.tails - 2)) * sd, spread
    steps = np.arange(1, 10)[:, None] + 0.5
    centre = model.mean + shift + answer[None, :]
    return float(1 + special.ndtr((centre - steps) / scale).sum(axis=0).mean())


@dataclass
class Tally:
    runs: int = 0
    promoted: int = 0
    overall_covered: int = 0  # one-arm runs only: the challenger-vs-champion overall interval covers the truth
    overall_intervals: int = 0
    category_covered: int = 0
    category_intervals: int = 0
    regression_blocked: int = 0  # runs where the hidden-regression category is named among the blocking reasons
    row_overall_covered: int = 0  # every row's own overall interval (the report's scores table) covers its truth
    row_overall_intervals: int = 0
    row_category_covered: int = 0
    row_category_intervals: int = 0
    bound_held: int = 0  # the gate's one-sided decision bound (overall, the picked arm) at or below the truth
    bounds: int = 0


def _cell(job: tuple) -> Tally:
    layout, turns, shifts, reps, seed, model, gate, category_shift, truth = job
    rng = np.random.default_rng(seed)
    tally = Tally()
    sds = category_sd(layout, model)
    expected = {}  # (category, shift) -> expected score; seeds make the shifts continuous, so no reuse then

    def score(c: int, shift: float) -> float:
        if (c, shift) not in expected:
            expected[c, shift] = expected_score(shift, sds[c], model)
        return expected[c, shift]

    champion = [score(c, 0.0) for c in range(len(layout))]
    for _ in range(reps):
        truths: dict[str, list[float]] = {}
        rows = simulate_rows(rng, layout, turns, shifts, model=model, category_shift=category_shift, truths=truths)
        evaluation = evaluate_run(rows, gate, existing_champion="1")
        tally.runs += 1
        tally.promoted += evaluation.decision.promote
        if truth is not None:  # coverage measured: every row's own intervals against its true expected score
            for summary in evaluation.comparison.rows:
                true = [score(c, x) for c, x in enumerate(truths[summary.row])]
                if summary.overall.has_interval:
                    tally.row_overall_intervals += 1
                    tally.row_overall_covered += summary.overall.ci_low <= np.mean(true) <= summary.overall.ci_high
                for name, cat in summary.categories.items():
                    est = cat.overall
                    if est.has_interval:
                        tally.row_category_intervals += 1
                        tally.row_category_covered += est.ci_low <= true[int(name[3:])] <= est.ci_high
        bound = evaluation.decision.figures.get("overall_lower_bound", math.nan)
        if truth is not None and math.isfinite(bound):  # every arm has the same true shift here
            true_diff = np.mean([score(c, shifts[0] + (category_shift or {}).get(c, 0.0)) - champion[c]
                                 for c in range(len(layout))])
            tally.bounds += 1
            tally.bound_held += bound <= true_diff
        if truth is not None and len(shifts) == 1:
            # the difference's truth: the arm's expected score less the champion's (the arm's mean over
            # its seeds, which average to no shift)
            arm = [score(c, shifts[0] + (category_shift or {}).get(c, 0.0)) - champion[c] for c in range(len(layout))]
            pair = evaluation.comparison.pairs[-1]
            est = pair.overall.estimate
            if est.has_interval:
                tally.overall_intervals += 1
                tally.overall_covered += est.ci_low <= np.mean(arm) <= est.ci_high
            for name, diff in pair.categories.items():
                if diff.estimate.has_interval:
                    tally.category_intervals += 1
                    tally.category_covered += diff.estimate.ci_low <= arm[int(name[3:])] <= diff.estimate.ci_high
        if category_shift:
            name = f"cat{next(iter(category_shift))}"
            tally.regression_blocked += any(r.startswith(f"category {name} ") for r in evaluation.decision.reasons
                                            ) and not evaluation.decision.promote
    return tally


def run_cells(jobs: list[tuple], processes: int) -> list[Tally]:
    """Each job split into chunks so that `processes` workers share the load."""
    chunks, owners = [], []
    for i, job in enumerate(jobs):
        reps, seed = job[3], job[4]
        size = max(50, math.ceil(reps / max(1, processes * 2)))
        for j, start in enumerate(range(0, reps, size)):
            chunks.append((*job[:3], min(size, reps - start), [seed, j], *job[5:]))
            owners.append(i)
    if processes > 1:
        with Pool(processes) as pool:
            parts = pool.map(_cell, chunks, chunksize=1)
    else:
        parts = [_cell(c) for c in chunks]
    out = [Tally() for _ in jobs]
    for i, part in zip(owners, parts):
        for field in vars(part):
            setattr(out[i], field, getattr(out[i], field) + getattr(part, field))
    return out


def promotion_rate(layout: Sequence[int], turns: int, shifts: Sequence[float], reps: int, seed: int,
                   gate: PromotionGate = GATE, **kwargs) -> tuple[int, int]:
    """(promotions, runs): the shipped evaluate_run on `reps` simulated runs (kwargs: simulate_rows')."""
    rng = np.random.default_rng(seed)
    promoted = 0
    for _ in range(reps):
        evaluation = evaluate_run(simulate_rows(rng, layout, turns, shifts, **kwargs), gate, existing_champion="1")
        promoted += evaluation.decision.promote
    return promoted, reps


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return low, high


def _rate(k: int, n: int) -> str:
    low, high = clopper_pearson(k, n)
    return f"{k / n:.1%} [{low:.1%}, {high:.1%}]" if n else "-"


def _pct(k: int, n: int) -> str:
    return f"{k / n:.1%}" if n else "-"


def regression_shifts(layout: Sequence[int], effect: float = 0.3, drop: float = -1.0) -> tuple[float, dict[int, float]]:
    """(arm shift, {category: extra}) with the category at `drop` and the overall (mean of categories) at `effect`."""
    k = len(layout)
    others = (effect * k - drop) / (k - 1)
    c = regression_category(layout)
    return others, {c: drop - others}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=4000, help="simulated runs per no-difference cell")
    parser.add_argument("--power-reps", type=int, default=1000, help="simulated runs per power / regression cell")
    parser.add_argument("--seed", type=int, default=28)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 runs per cell, 2 models")
    parser.add_argument("--blocks", nargs="*", default=["rules", "null", "power", "regression", "fallback"],
                        choices=["rules", "null", "power", "regression", "fallback"])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--layouts", nargs="*", default=list(SHORT.values()), choices=list(SHORT.values()))
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.power_reps, args.jobs = 10, 10, 1
        args.models = [m for m in args.models if m in ("default", "noise x4, small categories noisier")]
    layouts = {name: LAYOUTS[name] for name, short in SHORT.items() if short in args.layouts}
    start = time.perf_counter()
    results: list[str] = []
    if "rules" in args.blocks:
        results += rules_block(args, layouts)
    if "null" in args.blocks:
        results += null_block(args, layouts)
    if "power" in args.blocks:
        power_block(args, layouts)
    if "regression" in args.blocks:
        results += regression_block(args, layouts)
    if "fallback" in args.blocks:
        results += fallback_block(args)
    print(f"RESULT {' '.join(results)} reps={args.reps} power_reps={args.power_reps} "
          f"seconds={time.perf_counter() - start:.1f}")
    return 0


LOUD_BIG = "noise x4, big categories noisier"  # the data model where a regression is hardest to see
RULES = {
    "old: no category credibly worse (Holm, alpha 0.02)": PromotionGate(min_paired_questions=1,
                                                                         category_rule="credibly_worse"),
    "non-inferior at 0.5: each category's difference above -0.25": PromotionGate(min_paired_questions=1,
                                                                                  noninferiority_alpha=0.5),
    "non-inferior at 0.6 (shipped): not worse than -0.25 at 60% confidence": PromotionGate(min_paired_questions=1,
                                                                                           noninferiority_alpha=0.6),
    "non-inferior at 0.7: not worse than -0.25 at 70% confidence": PromotionGate(min_paired_questions=1,
                                                                                 noninferiority_alpha=0.7),
    "non-inferior at 0.3: its 70% lower bound above -0.25": PromotionGate(min_paired_questions=1,
                                                                          noninferiority_alpha=0.3),
}


def rules_block(args, layouts) -> list[str]:
    """Old vs new per-category rule, default model: false promotion (every layout, 1 arm, pooled),
    power at +0.5 on 80 x 2 (1 and 2 arms), a -1.0 regression caught in a 10-question category of
    80 x 2 and a 14-question one of 14/14/3/2/3/5 (overall +0.3)."""
    print("| per-category rule | false promotion, no difference (4 layouts, 1 arm, pooled) | power +0.5, 80 x 2, "
          "1 arm | 2 arms | -1.0 in one 10-question category (80 x 2) blocked | -1.0 in one 14-question category "
          "(14/14/3/2/3/5) blocked | the 80 x 2 one, 4x noisier big categories, blocked |")
    print("|---|---|---|---|---|---|---|")
    model = MODELS["default"]
    out = []
    for r, (label, gate) in enumerate(RULES.items()):
        jobs = [(layout, turns, [0.0], args.power_reps, args.seed * 1000 + 700 + i, model, gate, None, None)
                for i, (layout, turns) in enumerate(LAYOUTS.values())]
        layout80, turns80 = LAYOUTS["80 questions x 2 turns (8 x 10)"]
        jobs += [(layout80, turns80, [0.5] * arms, args.power_reps, args.seed * 1000 + 750 + arms, model, gate, None,
                  None) for arms in (1, 2)]
        for j, name in enumerate(("80 questions x 2 turns (8 x 10)", "make run's hold-out, 14/14/3/2/3/5")):
            layout, turns = LAYOUTS[name]
            shift, extra = regression_shifts(layout)
            jobs.append((layout, turns, [shift], args.power_reps, args.seed * 1000 + 760 + j, model, gate, extra, None))
        shift, extra = regression_shifts(layout80)
        jobs.append((layout80, turns80, [shift], args.power_reps, args.seed * 1000 + 770, MODELS[LOUD_BIG], gate, extra,
                     None))
        t = run_cells(jobs, args.jobs)
        null_k, null_n = sum(x.promoted for x in t[:4]), sum(x.runs for x in t[:4])
        print(f"| {label} | {_rate(null_k, null_n)} | {_pct(t[4].promoted, t[4].runs)} | {_pct(t[5].promoted, t[5].runs)} "
              f"| {_pct(t[6].runs - t[6].promoted, t[6].runs)} | {_pct(t[7].runs - t[7].promoted, t[7].runs)} "
              f"| {_pct(t[8].runs - t[8].promoted, t[8].runs)} |", flush=True)
        out.append(f"rule{r}_power80x2={t[4].promoted / t[4].runs:.3f} rule{r}_caught10={1 - t[6].promoted / t[6].runs:.3f}")
    print()
    return out


def null_block(args, layouts) -> list[str]:
    print("| data model | test-set layout | arms | promoted, no true difference [95% CI] | difference: overall 95% "
          "interval covers | difference: category intervals cover | rows: overall intervals cover | rows: category "
          "intervals cover | the gate's one-sided bound holds (98% one arm, 99% two) |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst, coverage = (0.0, 0, 1, ""), []
    for model_name in args.models:  # one model at a time, in the order asked, printed as it is done
        m = list(MODELS).index(model_name)
        jobs, labels = [], []
        for i, (name, (layout, turns)) in enumerate(layouts.items()):
            for arms in (1, 2):
                jobs.append((layout, turns, [0.0] * arms, args.reps, args.seed * 1000 + m * 100 + i * 10 + arms,
                             MODELS[model_name], GATE, None, 0.0))
                labels.append((model_name, SHORT[name], arms))
        for label, t in zip(labels, run_cells(jobs, args.jobs)):
            worst, coverage = _null_row(label, t, worst, coverage)
    print()
    rate, k, n, where = worst
    return [f"false_promotion_max={rate:.4f} ci_high={clopper_pearson(k, n)[1]:.4f} at={where.replace(' ', '_')}",
            f"coverage_min={min(coverage):.4f} coverage_max={max(coverage):.4f}"]


def _null_row(label: tuple, t: Tally, worst: tuple, coverage: list[float]) -> tuple[tuple, list[float]]:
    model_name, layout, arms = label
    cov = _pct(t.overall_covered, t.overall_intervals) if arms == 1 else ""
    cat = _pct(t.category_covered, t.category_intervals) if arms == 1 else ""
    print(f"| {model_name} | {layout} | {arms} | {_rate(t.promoted, t.runs)} | {cov} | {cat} | "
          f"{_pct(t.row_overall_covered, t.row_overall_intervals)} | "
          f"{_pct(t.row_category_covered, t.row_category_intervals)} | {_pct(t.bound_held, t.bounds)} |")
    if t.promoted / t.runs >= worst[0]:
        worst = (t.promoted / t.runs, t.promoted, t.runs, f"{model_name}/{layout}/{arms}")
    coverage += _coverages(t, arms == 1)
    sys.stdout.flush()
    return worst, coverage


def _coverages(t: Tally, difference: bool) -> list[float]:
    """The coverages measured in `t`: every row's own intervals, and (`difference`) the difference's."""
    pairs = [(t.row_overall_covered, t.row_overall_intervals), (t.row_category_covered, t.row_category_intervals)]
    if difference:
        pairs += [(t.overall_covered, t.overall_intervals), (t.category_covered, t.category_intervals)]
    return [k / n for k, n in pairs if n]


def power_block(args, layouts) -> None:
    print("| data model | test-set layout | arms | +0.5 promoted | +1.0 promoted |")
    print("|---|---|---|---|---|")
    jobs, labels = [], []
    for model_name in args.models:  # each cell's seed by the model's place in MODELS: a subset reruns the same cells
        m = list(MODELS).index(model_name)
        if model_name not in ("default", "seeds K=2 (seed SD 0.3)", "seeds K=3 (seed SD 0.3)"):
            continue
        for i, (name, (layout, turns)) in enumerate(layouts.items()):
            for arms in (1, 2):
                for e, effect in enumerate((0.5, 1.0)):
                    jobs.append((layout, turns, [effect] * arms, args.power_reps,
                                 args.seed * 1000 + 5000 + m * 100 + i * 10 + arms * 2 + e, MODELS[model_name], GATE,
                                 None, None))
                labels.append((model_name, SHORT[name], arms))
    tallies = run_cells(jobs, args.jobs)
    for j, (model_name, layout, arms) in enumerate(labels):
        half, one = tallies[2 * j], tallies[2 * j + 1]
        print(f"| {model_name} | {layout} | {arms} | {_pct(half.promoted, half.runs)} | {_pct(one.promoted, one.runs)} |")
    print()


def regression_block(args, layouts) -> list[str]:
    print("| data model | test-set layout | arms | -1.0 in one category (overall +0.3): blocked | named as the reason | "
          "difference: overall / category intervals cover | rows: overall / category intervals cover | the gate's "
          "one-sided bound holds |")
    print("|---|---|---|---|---|---|---|---|")
    jobs, labels = [], []
    for model_name in args.models:  # each cell's seed by the model's place in MODELS (as in null_block)
        m = list(MODELS).index(model_name)
        for i, (name, (layout, turns)) in enumerate(layouts.items()):
            if max(layout) < 10:
                continue
            shift, extra = regression_shifts(layout)
            for arms in (1, 2):
                jobs.append((layout, turns, [shift] * arms, args.power_reps, args.seed * 1000 + 8000 + m * 100 + i * 10
                             + arms, MODELS[model_name], GATE, extra, 0.0))
                labels.append((model_name, SHORT[name], arms))
    tallies = run_cells(jobs, args.jobs)
    lowest, coverage = 1.0, []
    for (model_name, layout, arms), t in zip(labels, tallies):
        blocked = t.runs - t.promoted
        diff = (f"{_pct(t.overall_covered, t.overall_intervals)} / {_pct(t.category_covered, t.category_intervals)}"
                if arms == 1 else "")
        print(f"| {model_name} | {layout} | {arms} | {_pct(blocked, t.runs)} | {_pct(t.regression_blocked, t.runs)} | "
              f"{diff} | {_pct(t.row_overall_covered, t.row_overall_intervals)} / "
              f"{_pct(t.row_category_covered, t.row_category_intervals)} | {_pct(t.bound_held, t.bounds)} |")
        lowest = min(lowest, blocked / t.runs)
        coverage += _coverages(t, arms == 1)
    print()
    return [f"regression_blocked_min={lowest:.3f} regression_coverage_min={min(coverage, default=math.nan):.4f} "
            f"regression_coverage_max={max(coverage, default=math.nan):.4f}"]


def fallback_block(args) -> list[str]:
    """The champion could not be re-evaluated: the gate compares the challenger's overall with the
    champion's logged overall and interval, which came from another draw of questions (6 x 7,
    default model, no true difference)."""
    from selfguided.components.evaluation.gate import decide_promotion
    from selfguided.components.evaluation.paired import compare_rows

    layout, turns = LAYOUTS["bundled sample questions, 6 x 7"]
    rng = np.random.default_rng(args.seed * 1000 + 9000)
    promoted = 0
    for _ in range(args.reps):
        champion_run = simulate_rows(rng, layout, turns, [0.0])
        logged_row = RowJudgments("champion", "trained", champion_run[1].judgments, base_model="sim", arm="self_guided",
                                  judge=JUDGE)
        summary = compare_rows([logged_row], comparisons=[]).rows[0]
        metrics = {"judge/overall": summary.overall.mean}
        if summary.overall.has_interval:
            metrics.update({"judge/overall_ci_low": summary.overall.ci_low, "judge/overall_ci_high": summary.overall.ci_high})
        challenger = simulate_rows(rng, layout, turns, [0.0])[1]
        decision = decide_promotion(challenger, None, GATE, fallback_champion_metrics=metrics,
                                    fallback_champion_judge=JUDGE)
        promoted += decision.promote
    print("| unpaired fallback (champion's logged overall from another draw of questions, 6 x 7) | promoted, no true "
          "difference |")
    print("|---|---|")
    print(f"| the champion's logged interval carried | {_rate(promoted, args.reps)} |")
    print()
    return [f"fallback_false_promotion={promoted / args.reps:.4f}"]


if __name__ == "__main__":
    sys.exit(main())
