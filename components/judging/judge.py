"""A judge behind one interface, whoever grades: an LLM judge, the offline heuristic, a jury of judges.

The rest of the platform asks the judge, never its name:

- `identity`: who grades, one `rules.JudgeIdentity`; its `label` is the one label of a judge;
- `measures_quality`: whether its scores say anything about quality (the offline stand-in's do not);
- `disclaimer`: what a report says beside its scores when they do not ("" otherwise), written once,
  by the judge;
- `calls_llm`: whether it needs an LLM endpoint (preflight, the MLflow Judges page);
- `cost_usd(metrics)`: its LLM cost in a run, from its usage metrics (`llm/judge/cost_usd`);
- `mlflow_source`: how its verdicts appear on MLflow traces (assessment source type and id).

The kinds: `llm_judge.LLMJudge`, `offline.OfflineJudge`, `jury.Jury`; `jury.judge_named(model)` and
`jury.judge_of(identity)` make the right one.
"""

from __future__ import annotations

from typing import Any

from selfguided.components.judging.rules import JudgeIdentity

Item = tuple[Any, int]
"""(question_id, turn): one graded answer turn."""


class Judge:
    """What every judge knows about itself; `grade` is its work (see the module docstring)."""

    identity: JudgeIdentity
    endpoint: str = ""
    """Its own OpenAI-compatible endpoint ("" = the run's, or none)."""
    measures_quality: bool = True
    calls_llm: bool = True
    disclaimer: str = ""

    @property
    def label(self) -> str:
        return self.identity.label

    @property
    def mlflow_source(self) -> tuple[str, str]:
        """(assessment source type, source id) of its verdicts on a trace."""
        return ("LLM_JUDGE" if self.calls_llm else "CODE"), self.identity.model

    def cost_usd(self, metrics: dict[str, float]) -> float:
        """Its LLM cost from its usage metrics (0 for a judge that calls no LLM)."""
        return round(float(metrics.get("llm/judge/cost_usd", 0.0)), 6) if self.calls_llm else 0.0

    def grade(self, questions: list[dict[str, Any]], answers: list[dict[str, Any]], *, repeat: int = 0,
              items: set[Item] | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Judgment rows (rules.judgment_row, one per graded answer turn, or only `items`) and its usage
        metrics; `repeat` > 0 asks again (a real call for an LLM judge)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
