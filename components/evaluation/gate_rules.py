"""Rules of the gate that refuse on what lies outside the scores: the jury's agreement, the champion moving.

Each takes the gate's decision and returns the decision with its own verdict and reason in it
(a new GateDecision; nothing edits a decision in place):

- `judge_agreement_rule`: with a jury of two or more judges, the gate refuses (its reason first)
  when the judges' Krippendorff's alpha is below `--min-judge-agreement`, or cannot be measured
  while asked for; the jury's plain-words warnings join the reasons either way. With one judge it
  says that the agreement was not checked, when it was asked for. The compare step hands it to
  gate.evaluate_run.
- `champion_moved_rule`: the evidence is about the champion the run evaluated; when the register
  step finds another champion in the registry, nothing is promoted. Only the register step can
  know, so it applies this rule before it moves an alias.
"""

from __future__ import annotations

import math

from selfguided.components.evaluation.agreement import JuryAgreement
from selfguided.components.evaluation.decision import GateDecision


def judge_agreement_rule(decision: GateDecision, jury: JuryAgreement, min_agreement: float) -> GateDecision:
    """The decision with the jury's verdict on itself (see the module docstring); `min_agreement` 0: no
    refusal, the warnings only."""
    alpha = jury.overall_alpha
    figures = {**decision.figures, "judges": list(jury.judges), "judge_alpha": alpha,
               "min_judge_agreement": min_agreement}
    if len(jury.judges) < 2:
        note = ([f"--min-judge-agreement {min_agreement:g} was not checked: it needs a jury of two or more judges "
                 f"(--judges), this run had {len(jury.judges)} ({', '.join(jury.judges) or 'none'})"]
                if min_agreement > 0 else [])
        return GateDecision(decision.promote, decision.reasons + note, figures)
    warnings, refusal = jury.warnings(), None
    if min_agreement > 0 and not math.isfinite(alpha):
        refusal = (f"judge agreement could not be measured (too few items scored by two judges), and "
                   f"--min-judge-agreement {min_agreement:g} asks for it: nothing is promoted")
    elif min_agreement > 0 and alpha < min_agreement:
        refusal = (f"the judges agree too little to promote on their verdict: Krippendorff's alpha "
                   f"{alpha:.2f} < --min-judge-agreement {min_agreement:g}")
    if refusal is None:
        return GateDecision(decision.promote, decision.reasons + warnings, figures)
    if decision.promote:
        return GateDecision(False, [refusal, *decision.reasons, *warnings], figures)
    return GateDecision(False, [*decision.reasons, refusal, *warnings], figures)


def champion_moved_rule(decision: GateDecision, evaluated: str | None, current: str | None) -> GateDecision:
    """The decision as it stands when the aliases move: if the registry's champion (`current`, None:
    none) is not the one the run evaluated (`evaluated`, None: none), nothing is promoted, first
    reason saying so."""
    if not decision.promote or current is None or str(current) == str(evaluated or ""):
        return decision
    return GateDecision(False, [f"the champion moved to v{current} while this run compared the challenger with "
                                f"{'v' + str(evaluated) if evaluated else 'no champion'}; rerun to compare with the "
                                "current one", *decision.reasons], decision.figures)
