"""The promotion gate: which trained row is the challenger, and whether it replaces the champion.

The rule (one rule for every bar a challenger must clear):

- *The bar.* The champion row of the same run (the registry's champion re-evaluated on the same
  questions by the same judge). With no champion yet, the untuned base row of the challenger's
  base model: a trained model worse than the model it was trained from is never the first champion.
  With a champion that could not be re-evaluated, its logged metrics (an unpaired fallback, said so).
- *Paired.* Differences challenger - bar on the shared (question, turn) items; at least
  `min_paired_questions` shared questions.
- *Better overall.* The one-sided lower confidence bound of the overall difference (mean over
  categories, t interval carrying every category's variance, statistics.stratified_mean) at level
  `alpha / k` must exceed `min_improvement`, k being the number of candidate arms the challenger
  was picked from (Bonferroni). Selection and confirmation use the same questions; the bound holds
  for every candidate at once, so picking the best cannot inflate the false-promotion rate above
  `alpha`. A split of the questions (pick on one half, confirm on the other) would do the same at
  the price of half the questions; on test sets of 30-40 questions that costs far more power than
  the Bonferroni factor (z 1.96 -> 2.24 for two arms). All questions alike (no spread): the exact
  sign test decides, 2^-n against `alpha / k`.
- *Every category within the tolerance* (issue 28, `_category_rule`). Each category with at least
  `min_category_questions` questions must show it is not worse than -promotion_tolerance: its
  one-sided (1 - noninferiority_alpha) bound above it (at the default 0.6: not worse at 60%
  confidence, its one-sided 60% upper bound above it; at 0.5 its paired difference, below 0.5 a
  lower bound); one that does not blocks, named with the questions it would need. Smaller
  categories do not vote (their variance is in the overall); each is listed with the largest
  regression it could hide. A category present in either row without shared items blocks. The rule
  before issue 28 (block only when credibly worse, Holm at `alpha`) let a -1.0 regression in one
  10-question category through 61% of the time; it stays as `category_rule="credibly_worse"`.
- *Replicates.* With several training seeds of the challenger's arm, the differences are of the
  replicates' mean and the interval adds the seed variance with its K - 1 df; the bound and the
  category rule take its df at a more conservative limit than the printed interval (paired.PairedDiff.decision).

Its false-promotion rate under no true difference is measured with this code by
`benchmarks/gate_simulation.py` (docs/evaluation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from selfguided.components.evaluation.decision import Challenger, GateDecision, PromotionGate
from selfguided.components.evaluation.paired import (
    Comparison, PairedComparison, compare_rows, default_comparisons, paired_comparison, paired_comparisons,
    replicate_groups,
)
from selfguided.components.evaluation.rows import RowJudgments, decision_rows, parse_row
from selfguided.components.evaluation.statistics import (
    Estimate, holm, no_interval_reason, one_question_spread, p_above, p_below, questions_needed, t_quantile,
)
from selfguided.components.evaluation.summaries import RowSummary, summarise_row

CANDIDATE_ARMS = ("unscored", "self_guided")  # `control` is a yardstick, never a candidate


def pick_challenger(rows: Sequence[RowJudgments], summaries: Sequence[RowSummary]) -> Challenger:
    """The candidate arm (trained, of CANDIDATE_ARMS) with the highest overall (summaries.RowSummary:
    mean of category means; with replicates, their mean); the first of equals in row order."""
    return best_candidate(rows, {s.row: s.overall.mean for s in summaries})


def best_candidate(rows: Sequence[RowJudgments], overall: Mapping[str, float]) -> Challenger:
    """The candidate arm with the highest `overall` (row -> its overall; with replicates, their mean) and
    its best replicate: the one rule of "which row would be promoted" (the challenger, and each
    judge's pick in the agreement statistics)."""
    groups = {key: members for key, members in replicate_groups(rows).items() if key[1] in CANDIDATE_ARMS}
    if not groups:
        raise ValueError(f"no trained row of the arms {', '.join(CANDIDATE_ARMS)} to choose a challenger from")

    def score(members: list[RowJudgments]) -> float:
        values = [overall.get(r.row, math.nan) for r in members]
        values = [v for v in values if math.isfinite(v)]
        return sum(values) / len(values) if values else -math.inf

    (base, arm), members = max(groups.items(), key=lambda kv: score(kv[1]))
    best = max(members, key=lambda r: overall.get(r.row, -math.inf) if math.isfinite(overall.get(r.row, math.nan))
               else -math.inf)
    return Challenger(base, arm, [r.row for r in members], best.row, score(members), len(groups))


def _signed(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:+.2f}"


def ci_text(est: Estimate) -> str:
    if not est.has_interval:
        return f"{_signed(est.mean)} ({no_interval_reason(est)})"
    return f"{_signed(est.mean)} [95% CI {_signed(est.ci_low)}, {_signed(est.ci_high)}]"


def _as_list(rows: RowJudgments | Sequence[RowJudgments]) -> list[RowJudgments]:
    return [rows] if isinstance(rows, RowJudgments) else list(rows)


def decide_promotion(challenger: RowJudgments | Sequence[RowJudgments], champion: RowJudgments | None,
                     gate: PromotionGate = PromotionGate(), *, base: RowJudgments | None = None,
                     fallback_champion_metrics: Mapping[str, float] | None = None,
                     fallback_champion_judge: str | None = None, n_candidates: int = 1,
                     pair: PairedComparison | None = None) -> GateDecision:
    """Promote `challenger` (one trained row, or the replicates of one arm) only on evidence.

    Against `champion` when there is one (paired), else against the logged `fallback_champion_metrics`
    (unpaired, weaker, said so), else against `base` (the first champion must beat its untuned base,
    paired, by the same rule); with none of them nothing is promoted. `pair`: the challenger - bar
    comparison when already computed (compare_rows), so it is computed once.
    """
    members = _as_list(challenger)
    if any(r.row_kind != "trained" for r in members):
        raise ValueError(f"only trained rows are candidates for promotion; got {[(r.row, r.row_kind) for r in members]}")
    figures: dict[str, Any] = {"challenger": " + ".join(r.row for r in members),
                               "min_improvement": gate.min_improvement, "promotion_tolerance": gate.promotion_tolerance,
                               "min_paired_questions": gate.min_paired_questions,
                               "min_category_questions": gate.min_category_questions, "alpha": gate.alpha,
                               "n_candidates": n_candidates, "replicates": len(members)}
    if champion is not None:
        figures.update(mode="paired", champion=champion.row)
        return _decide_paired(members, champion, gate, figures, n_candidates, pair, "the champion row")
    if fallback_champion_metrics is not None:
        return _decide_fallback(members, fallback_champion_metrics, fallback_champion_judge, gate, figures, n_candidates)
    figures["mode"] = "first_champion"
    if base is None:
        return GateDecision(False, ["no champion yet and no base row of "
                                    f"{members[0].base_model or 'its base model'} to compare with: the first champion must "
                                    "beat its untuned base; promote by hand with `selfguided promote --force` if intended"],
                            figures)
    figures["base"] = base.row
    decision = _decide_paired(members, base, gate, figures, n_candidates, pair, "its untuned base row")
    first = "no champion yet: the first champion must beat its untuned base, paired, by the same rule"
    return GateDecision(decision.promote, [first + ("; it does" if decision.promote else "; it does not")]
                        + decision.reasons, decision.figures)


def _decide_paired(members: list[RowJudgments], bar: RowJudgments, gate: PromotionGate, figures: dict[str, Any],
                   k: int, pair: PairedComparison | None, bar_name: str) -> GateDecision:
    judges = {r.judge for r in members}
    figures.update(challenger_judge=members[0].judge, bar_judge=bar.judge)
    if judges != {bar.judge}:
        return GateDecision(False, [
            f"{members[0].row} was judged by {members[0].judge or 'an unknown judge'}, {bar_name} {bar.row} by "
            f"{bar.judge or 'an unknown judge'}: the scores are not comparable, nothing is promoted; "
            "re-judge both with the same judge"], figures)
    if pair is None:
        pair = paired_comparison([(r, parse_row(r)) for r in members], (bar, parse_row(bar)), "challenger vs bar",
                                 min_questions=gate.min_category_questions)
    alpha = gate.alpha / max(1, k)
    overall = pair.overall.estimate
    bound = pair.overall.decision.lower_bound(alpha)  # with training seeds: the seed-conservative df (paired.py)
    figures.update(n_pairs=pair.n_pairs, n_questions=pair.n_questions, overall_difference=overall.to_dict(),
                   overall_lower_bound=bound, overall_alpha=alpha, overall_p_value=pair.overall.p_value)
    if pair.n_questions < gate.min_paired_questions:
        return GateDecision(False, [
            f"only {pair.n_questions} shared questions ({pair.n_pairs} scored (question, turn) pairs) between "
            f"{figures['challenger']} and {bar_name} {bar.row}, fewer than min_paired_questions "
            f"{gate.min_paired_questions}: too few to compare, nothing is promoted"], figures)
    blocking: list[str] = []
    passing: list[str] = []
    seed_df = pair.overall.decision_df
    term = ("the seed term's df at its conservative limit" if pair.replicates > 1 else
            "the df with the 1-question categories by Banerjee's bound")
    level = f"one-sided {100 * (1 - alpha):.4g}% lower bound" + (
        f" ({term}: {seed_df:.1f}, the interval's {overall.df:.1f})"
        if math.isfinite(seed_df) and f"{seed_df:.1f}" != f"{overall.df:.1f}" else "")
    why = f"alpha {gate.alpha:g}" + (f" / {k} candidate arms" if k > 1 else "")
    seeds = f", {pair.replicates} training seeds averaged" if pair.replicates > 1 else ""
    head = (f"overall paired difference {ci_text(overall)} against {bar_name} over {pair.n_questions} shared questions "
            f"({pair.n_pairs} (question, turn) pairs{seeds}); {level} {_signed(bound)} ({why})")
    if math.isfinite(bound) and bound > gate.min_improvement:
        passing.append(f"{head} > min_improvement {gate.min_improvement:.2f}")
    elif overall.no_spread and pair.n_questions >= 1:
        # every question moved alike: no interval, but the exact sign test says how sure (issue 28)
        p_sign = p_above(overall, gate.min_improvement)
        figures["overall_sign_test_p"] = p_sign
        if overall.mean <= gate.min_improvement:
            blocking.append(f"{head}: no interval ({no_interval_reason(overall)}) and no question above min_improvement "
                            f"{gate.min_improvement:.2f}, cannot show an improvement")
        elif p_sign < alpha:
            passing.append(f"{head}; all {overall.n_questions} questions alike above min_improvement "
                           f"{gate.min_improvement:.2f}: exact sign test p {p_sign:.3g} (2^-{overall.n_questions}) < "
                           f"{alpha:g}")
        else:
            blocking.append(f"{head}; all {overall.n_questions} questions alike above min_improvement "
                            f"{gate.min_improvement:.2f}, but the exact sign test p {p_sign:.3g} "
                            f"(2^-{overall.n_questions}) is not below {alpha:g}: too few questions to show an improvement")
    elif not math.isfinite(bound):
        blocking.append(f"{head}: no interval ({no_interval_reason(overall)}), cannot show an improvement")
    else:
        blocking.append(f"{head}: not above min_improvement {gate.min_improvement:.2f}, no evidence of an improvement")
    if pair.missing:
        blocking.append(f"categories {', '.join(pair.missing)} have no shared scored (question, turn) pairs: they cannot be "
                        "compared and could hide a regression")
    blocking += _category_rule(pair, gate, figures, bar_name, passing)
    lc = pair.overall.length_controlled
    if lc is not None:
        figures["overall_length_controlled"] = lc.to_dict()
        passing.append(f"for information: length-controlled overall difference {ci_text(lc)} "
                       "(the difference expected at equal answer length)")
    return GateDecision(not blocking, blocking + passing, figures)


def _category_rule(pair: PairedComparison, gate: PromotionGate, figures: dict[str, Any], bar_name: str,
                   passing: list[str]) -> list[str]:
    """The per-category rule: the blocking reasons (passing ones appended to `passing`).

    non_inferior (issue 28): a category with at least min_category_questions questions must show it is
    within -promotion_tolerance of the bar (one-sided (1 - noninferiority_alpha) lower bound above it;
    above 0.5, e.g. the default 0.6: it must not be worse at 60% confidence, its one-sided 60% upper
    bound above it; exact sign test when its questions are all alike); one that does not blocks,
    named with the questions it would need. Smaller categories do not vote; each is listed with the largest
    regression it could hide (its one-sided 97.5% lower bound: own spread, or for 1-question
    categories the spread between them). credibly_worse: the rule before issue 28."""
    tol = gate.promotion_tolerance
    m = gate.min_category_questions
    voting = {c: d.decision for c, d in pair.categories.items() if d.estimate.n_questions >= m}
    p_worse = dict(zip(voting, holm([p_below(e, -tol) for e in voting.values()])))
    beta = gate.noninferiority_alpha
    p_within = {c: p_above(e, -tol) for c, e in voting.items()}
    blocking: list[str] = []
    if gate.category_rule == "credibly_worse":
        failing = [c for c, p in p_worse.items() if math.isfinite(p) and p < gate.alpha]
        for c in failing:
            blocking.append(f"category {c} is credibly worse than -{tol:.2f}: paired difference {ci_text(voting[c])} "
                            f"over {voting[c].n_questions} questions (Holm-adjusted one-sided p {p_worse[c]:.3g} < "
                            f"{gate.alpha:g})")
        if not failing and voting:
            lowest = min(voting, key=lambda c: voting[c].mean)
            passing.append(f"no category credibly worse than -{tol:.2f} (Holm across {len(voting)} categories; lowest: "
                           f"{lowest} {ci_text(voting[lowest])})")
    else:
        failing = [c for c, p in p_within.items() if not (math.isfinite(p) and p < beta)]
        what = (f"its paired difference must lie above -{tol:.2f}" if beta == 0.5 else
                f"its one-sided {100 * (1 - beta):.4g}% lower bound must lie above -{tol:.2f}" if beta < 0.5 else
                f"it must not be worse than -{tol:.2f} at {100 * beta:.4g}% confidence: its one-sided "
                f"{100 * beta:.4g}% upper bound must lie above -{tol:.2f}")
        for c in failing:
            est = voting[c]
            need = questions_needed(est, tol, beta) if not est.no_spread else math.nan
            more = (f"; about {need:.0f} questions would show it for a category truly no worse (80% power)"
                    if math.isfinite(need) else "")
            blocking.append(f"category {c} does not show it is within -{tol:.2f} of {bar_name} ({what}): "
                            f"{ci_text(est)} over {est.n_questions} questions, one-sided "
                            f"p {p_within[c]:.3g} >= {beta:g}{more}")
        if not failing and voting:
            lowest = min(voting, key=lambda c: voting[c].mean)
            passing.append(f"every category with {m} or more questions shows it is within -{tol:.2f} ({what}; "
                           f"lowest: {lowest} {ci_text(voting[lowest])})")
    small = {c: d.decision for c, d in pair.categories.items() if c not in voting}
    ones = [e.mean for e in small.values() if e.n_questions == 1]
    hide: dict[str, float] = {}
    for c, est in small.items():
        se, df = (est.se, est.df) if est.n_questions >= 2 else one_question_spread(ones)
        hide[c] = est.mean - t_quantile(0.975, df) * se if math.isfinite(se) and se > 0 and df > 0 else math.nan
    figures["categories"] = {c: {**d.estimate.to_dict(), "votes": c in voting, "p_worse_holm": p_worse.get(c),
                                 "p_within_tolerance": p_within.get(c), "could_hide": hide.get(c)}
                             for c, d in pair.categories.items()}
    if small:
        def could_hide(c: str, n: int) -> str:
            if not math.isfinite(hide[c]):
                return f"{c} (n={n}: any, no spread to bound it)"
            return f"{c} (n={n}: down to {_signed(hide[c])})" if hide[c] < 0 else \
                f"{c} (n={n}: none, lower bound {_signed(hide[c])})"

        listed = ", ".join(could_hide(c, e.n_questions) for c, e in small.items())
        passing.append(f"categories with fewer than {m} questions do not vote, their variance is in the overall "
                       f"interval; the largest regression each could hide (one-sided 97.5% lower bound): {listed}")
    return blocking


def _valid_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _decide_fallback(members: list[RowJudgments], metrics: Mapping[str, float], champion_judge: str | None,
                     gate: PromotionGate, figures: dict[str, Any], k: int) -> GateDecision:
    from selfguided.components.evaluation.metrics import OVERALL, judge_metric

    figures["mode"] = "fallback_unpaired"
    note = ("fallback: the champion could not be re-evaluated in this run, so this is an unpaired comparison "
            "against its logged MLflow metrics, weaker evidence than a paired one")
    if len(members) > 1:
        # The unpaired fallback sees one row: it cannot carry the seed-to-seed variance that
        # replicates exist to measure, so it must not pick one seed and promote it.
        return GateDecision(False, [note, f"{len(members)} training replicates cannot be compared unpaired with "
                                          "logged metrics: nothing is promoted; rerun when the champion can be "
                                          "re-evaluated, or promote by hand"], figures)
    challenger = members[0]
    if not champion_judge or not challenger.judge:
        return GateDecision(False, [note, "the judge of the champion's logged metrics (or of the challenger) is not "
                                          "recorded: the scores may come from different judges, nothing is promoted"],
                            figures)
    if champion_judge != challenger.judge:
        return GateDecision(False, [note, f"{challenger.row} was judged by {challenger.judge}, the champion by "
                                          f"{champion_judge}: the scores are not comparable, nothing is promoted"], figures)
    parsed = parse_row(challenger)
    summary = summarise_row(challenger, parsed, parsed.categories, parsed.seen, min_questions=gate.min_category_questions)
    figures["challenger_overall"] = summary.overall.to_dict()
    blocking: list[str] = []
    passing: list[str] = []
    unscored = [c for c, s in summary.categories.items() if s.overall.n == 0]
    if unscored:
        blocking.append(f"{challenger.row} has no scored judgment in {', '.join(unscored)}")
    champion_overall = _valid_number(metrics.get(OVERALL))
    figures["champion_overall"] = champion_overall
    alpha = gate.alpha / max(1, k)
    # The champion's logged overall came from its own draw of questions: it carries its own
    # uncertainty, read from its logged 95% interval (as a normal one: a t interval's se is smaller,
    # so this errs wide). Treating it as a known constant promoted noise 6.5% of the time (issue 28).
    low, high = (_valid_number(metrics.get(f"{OVERALL}_ci_{end}")) for end in ("low", "high"))
    champion_se = (high - low) / 2 / t_quantile(0.975, math.inf) if low is not None and high is not None else math.nan
    figures["champion_se"] = champion_se
    own = summary.overall
    if champion_overall is None:
        blocking.append("the champion's metrics have no judge/overall to compare against; promote by hand")
    elif not math.isfinite(champion_se):
        blocking.append(f"the champion's logged overall {champion_overall:.2f} has no interval ({OVERALL}_ci_low / "
                        "_ci_high): its own uncertainty is unknown, so an unpaired comparison cannot be made; promote "
                        "by hand")
    else:
        diff_se = math.sqrt(own.se ** 2 + champion_se ** 2) if math.isfinite(own.se) else math.nan
        df = (diff_se ** 4 / (own.se ** 4 / own.df)) if math.isfinite(diff_se) and own.se > 0 and own.df > 0 \
            else math.nan
        diff = Estimate(own.mean - champion_overall, math.nan, math.nan, own.n, own.n_questions, diff_se, df)
        bound = diff.lower_bound(alpha)
        figures["fallback_difference"] = diff.to_dict()
        head = (f"challenger overall {ci_text(own).lstrip('+')} vs the champion's logged overall {champion_overall:.2f} "
                f"[95% CI {low:.2f}, {high:.2f}]: difference {_signed(diff.mean)}, its one-sided "
                f"{100 * (1 - alpha):.4g}% lower bound {_signed(bound)} (both uncertainties)")
        if math.isfinite(bound) and bound > gate.min_improvement:
            passing.append(f"{head} > min_improvement {gate.min_improvement:.2f}")
        else:
            blocking.append(f"{head}, not above min_improvement {gate.min_improvement:.2f}")
    for category, cat in summary.categories.items():
        logged = _valid_number(metrics.get(judge_metric(category, "overall")))
        est = cat.overall
        if logged is not None and est.has_interval and est.ci_high < logged - gate.promotion_tolerance:
            blocking.append(f"category {category} is credibly worse: {ci_text(est)}, upper bound below the champion's "
                            f"{logged:.2f} - promotion_tolerance {gate.promotion_tolerance:.2f}")
    return GateDecision(not blocking, [note] + blocking + passing, figures)


# ---------------------------------------------------------------------------------------------
# The whole evaluation of a run: summaries, challenger, comparisons, decision (computed once each)
# ---------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """What the compare step decides: the comparison, the challenger and the gate's decision."""

    comparison: Comparison
    challenger: Challenger
    decision: GateDecision


def evaluate_run(rows: Sequence[RowJudgments], gate: PromotionGate = PromotionGate(), *,
                 existing_champion: str | None = None, fallback: Mapping[str, Any] | None = None,
                 gpu_hour_usd: float = 0.0, rules: Sequence[Callable[[GateDecision], GateDecision]] = ()
                 ) -> Evaluation:
    """Summarise every row, pick the challenger, compare it with its bar once, and decide.

    existing_champion: the registry champion's version when there is one (its row may be missing:
        it could not be re-evaluated). fallback: {"metrics", "judge"} logged for that champion.
    rules: the gate's rules on what lies outside the scores (gate_rules.py, e.g. the jury's
        agreement), each taking the decision and returning it, applied in order.
    """
    rows = decision_rows(rows)  # fixed + unseen questions; harvested `seen` ones never decide (slices.py)
    parsed = {r.row: parse_row(r) for r in rows}
    comparison = compare_rows(rows, comparisons=[], gpu_hour_usd=gpu_hour_usd,
                              min_category_questions=gate.min_category_questions, parsed=parsed)
    challenger = pick_challenger(rows, comparison.rows)
    by_name = {r.row: r for r in rows}
    members = [by_name[name] for name in challenger.rows]
    champion = next((r for r in rows if r.row_kind == "champion"), None)
    base_row = next((r for r in rows if r.row_kind == "base" and r.base_model == challenger.base_model), None)
    bar = champion or (None if existing_champion else base_row)
    label = "challenger vs champion" if champion is not None else "challenger vs base (first champion)"
    comparison.pairs = paired_comparisons(
        rows, default_comparisons(rows) + ([(challenger.rows, bar.row, label)] if bar is not None else []),
        min_category_questions=gate.min_category_questions, parsed=parsed)
    pair = comparison.pairs[-1] if bar is not None else None
    fallback = fallback or {}
    if champion is None and existing_champion and not fallback.get("metrics"):
        decision = GateDecision(False, [f"champion v{existing_champion} exists but could not be re-evaluated and has no "
                                        "logged judge metrics; promote by hand with `selfguided promote --force` if "
                                        "intended"])
    else:
        decision = decide_promotion(members, champion, gate, base=None if existing_champion else base_row,
                                    fallback_champion_metrics=fallback.get("metrics") if champion is None and fallback
                                    else None, fallback_champion_judge=fallback.get("judge"),
                                    n_candidates=challenger.n_candidates, pair=pair)
    for rule in rules:
        decision = rule(decision)
    return Evaluation(comparison, challenger, decision)
