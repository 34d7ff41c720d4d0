"""How often the monitor's drift rule (components/evaluation/drift.py) raises a false alarm, and how
often it sees a real drop, at the sample sizes the monitor uses.

Traffic model (evaluation/drift.simulate_drift): per category a level N(5.5, 0.5) shared by the
offline questions and the live prompts, each question/prompt quality level + N(0, QUESTION_SD), the
jury's score statistics.judge_scores (integer criteria, rounded, clipped to 1-10). Every execution
draws a new offline evaluation (the offline layout: questions per category) and `live` fresh
prompts per category; "drop" shifts one category's live quality by -1.5 (in a category of the
largest offline size, and in one of the smallest). Rates are per monitor execution.

Table 1: the shipped rule over layouts, live sample sizes and tolerances. Table 2: the rule against
the alternatives it was chosen over, at the bundled sample's layout: plain Welch-Satterthwaite for
the difference (anti-conservative with 2-3 offline df), and "the live 95% upper bound below the
offline mean - tolerance" (ignores the offline estimate's own noise).

    python benchmarks/monitor_simulation.py            # 400 executions per cell
    python benchmarks/monitor_simulation.py --quick    # 20: the smoke test's setting

Prints the tables and a final RESULT line.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from selfguided.components.evaluation.canary_decision import welch_difference
from selfguided.components.evaluation.drift import DriftSettings, simulate_drift
from selfguided.components.evaluation.statistics import holm, p_below

BUNDLED = (14, 14, 4, 4, 3, 3)  # the local pipeline's test split: 14 per held-out category, 3-4 per seen one
LAYOUTS = {"bundled sample (14,14,4,4,3,3)": BUNDLED, "14 per category": (14,) * 6, "40 per category": (40,) * 6}
DROP = -1.5


def _welch_rule(settings: DriftSettings):
    def rule(live, offline):
        tested = [c for c in live if live[c].n_questions >= settings.min_live]
        diffs = {c: welch_difference(live[c], offline[c]) for c in tested}
        tested = [c for c in tested if math.isfinite(diffs[c].se)]
        adjusted = holm([p_below(diffs[c], -settings.tolerance) for c in tested])
        return {c for c, p in zip(tested, adjusted) if p < settings.alpha}
    return rule


def _live_upper_rule(settings: DriftSettings):
    def rule(live, offline):
        return {c for c in live if live[c].has_interval and live[c].ci_high < offline[c].mean - settings.tolerance}
    return rule


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=400, help="executions per cell (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="20 executions per cell, fewer cells (smoke test)")
    parser.add_argument("--random-seed", type=int, default=29)
    args = parser.parse_args(argv)
    reps = 20 if args.quick else args.reps
    live_sizes = (20,) if args.quick else (20, 50)
    tolerances = (0.25,) if args.quick else (0.0, 0.25, 0.5)
    layouts = dict(list(LAYOUTS.items())[:1]) if args.quick else LAYOUTS
    started = time.monotonic()
    print(f"Table 1: the shipped rule (Holm over categories at alpha 0.05, offline term by Banerjee's bound), "
          f"{reps} executions per cell, drop {DROP} in one category")
    print(f"{'offline layout':<32} {'live/cat':>8} {'tol':>5} {'false alarm':>12} {'drop seen (big cat)':>20} "
          f"{'drop seen (small cat)':>22} {'other flagged':>14}")
    worst_false_alarm, bundled_power = 0.0, {}
    for name, layout in layouts.items():
        small = min(range(len(layout)), key=lambda i: (layout[i], -i))
        for live in live_sizes:
            for tol in tolerances:
                settings = DriftSettings(tolerance=tol)
                null = simulate_drift(layout, live, settings=settings, reps=reps, seed=args.random_seed)
                big = simulate_drift(layout, live, shift=DROP, shifted=0, settings=settings, reps=reps, seed=args.random_seed)
                little = simulate_drift(layout, live, shift=DROP, shifted=small, settings=settings, reps=reps,
                                        seed=args.random_seed)
                worst_false_alarm = max(worst_false_alarm, null["any"])
                if layout == BUNDLED:
                    bundled_power[(live, tol)] = big["shifted"]
                print(f"{name:<32} {live:>8} {tol:>5g} {_pct(null['any']):>12} {_pct(big['shifted']):>20} "
                      f"{_pct(little['shifted']):>22} {_pct(big['others']):>14}", flush=True)
    print()
    print(f"Table 2: false alarms of the rules compared, bundled layout, {reps} executions per cell")
    print(f"{'rule':<44} {'live/cat':>8} {'tol':>5} {'false alarm':>12} {'drop seen (big cat)':>20}")
    for label, make in (("shipped (Banerjee offline term, Holm)", None), ("plain Welch-Satterthwaite, Holm", _welch_rule),
                        ("live upper bound < offline mean - tol", _live_upper_rule)):
        for live in live_sizes[-1:]:
            for tol in tolerances[:2]:
                settings = DriftSettings(tolerance=tol)
                rule = make(settings) if make else None
                null = simulate_drift(BUNDLED, live, settings=settings, reps=reps, seed=args.random_seed + 1, rule=rule)
                drop = simulate_drift(BUNDLED, live, shift=DROP, settings=settings, reps=reps, seed=args.random_seed + 1,
                                      rule=rule)
                print(f"{label:<44} {live:>8} {tol:>5g} {_pct(null['any']):>12} {_pct(drop['shifted']):>20}", flush=True)
    chosen = bundled_power.get((live_sizes[-1], 0.25), float("nan"))
    print(f"RESULT worst false-alarm rate of the shipped rule {_pct(worst_false_alarm)} over {reps} executions per cell; "
          f"bundled layout, {live_sizes[-1]} live/category, tolerance 0.25: a {DROP} drop in a 14-question category "
          f"seen {_pct(chosen)} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
