"""The judge summary: one judged row's identity, its point scores and its jury, as the judge step hands it on.

One type, one file form. `JudgeSummary.of_judgments` makes it from a row's judgments (the judge
step), `write` / `read` are its JSON file's only writer and reader (`summary.json`, see
`to_json`), and `load_row` pairs it with its judgments file into the judged row (rows.RowJudgments)
that the gate, the agreement statistics and the registry use: every judgment file is parsed once.

The file's fields: `row` (a readable label, never parsed), `row_kind`, `base_model`, `arm`, `model`
(the row's identity as the pipeline gave it), `judge` (the jury's JudgeIdentity JSON; its label is
what the gate compares), `jury` (judging.jury.JuryUsage JSON), `categories` (category -> criterion
and overall means, and `n`), `overall`, `metrics` (`judge/...` names, evaluation/metrics), `n_judged`,
`n_failed`, `answers`, `generate_seconds`, `llm_cost_usd`, `usage` (LLM usage metrics), `replicate`,
`note` (why a reference row has no answers), `fallback` (a champion that could not be re-evaluated:
its logged `metrics` and `judge` label) and `answer_model` (the model the judgments name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from selfguided.components.data.jsonl import DataError, read_jsonl
from selfguided.components.evaluation.metrics import OVERALL, point_metrics
from selfguided.components.evaluation.rows import RowJudgments, category_means, judgment_problem
from selfguided.components.judging.jury import JuryUsage
from selfguided.components.judging.rules import ROW_KINDS, JudgeIdentity, row_label


@dataclass(frozen=True)
class ChampionFallback:
    """A champion that could not be re-evaluated in this run: its logged `judge/...` metrics and the
    label of the judge that produced them (the gate's unpaired fallback)."""

    metrics: dict[str, float]
    judge: str

    def to_json(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "judge": self.judge}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChampionFallback:
        return cls({str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()}, str(data.get("judge") or ""))


@dataclass
class JudgeSummary:
    """One judged row (see the module docstring for every field)."""

    row: str
    row_kind: str
    base_model: str
    arm: str
    model: str
    jury: JuryUsage
    categories: dict[str, dict[str, float]]
    overall: float
    metrics: dict[str, float]
    n_judged: int
    n_failed: int
    answers: int
    generate_seconds: float = 0.0
    llm_cost_usd: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)
    replicate: int = 0
    note: str = ""
    fallback: ChampionFallback | None = None
    answer_model: str = ""

    def __post_init__(self) -> None:
        if self.row_kind not in ROW_KINDS:
            raise DataError(f"judge summary of {self.row!r}: row_kind must be one of {', '.join(ROW_KINDS)}, "
                            f"got {self.row_kind!r}")

    @property
    def judge(self) -> JudgeIdentity:
        """Who graded the row: the jury's identity (its judge's, for a jury of one)."""
        return self.jury.identity

    @classmethod
    def of_judgments(cls, judgments: list[dict[str, Any]], jury: JuryUsage, *, row_kind: str, base_model: str = "",
                     arm: str = "", model: str = "", replicate: int = 0, **facts: Any) -> JudgeSummary:
        """The summary of a row's judgments: per-category means of each criterion and overall (the
        mean over categories, so every category weighs the same; 0.0 with n_judged 0 when nothing
        was scored), its `judge/...` point metrics, and the row's identity as given. A replicate
        r > 0 of a trained row is its own row, `<row>#r`. `facts`: the other fields (usage, cost, note, ...)."""
        means, overall = category_means(judgments)
        categories = {c: {k: (round(v, 3) if k != "n" else v) for k, v in values.items()} for c, values in means.items()}
        overall = round(overall, 3) if categories else 0.0
        n_judged = sum(1 for j in judgments if judgment_problem(j) is None)
        label = row_label(row_kind, base_model=base_model, arm=arm, model=model)
        return cls(row=f"{label}#{replicate}" if replicate else label, row_kind=row_kind, base_model=base_model,
                   arm=arm, model=model, jury=jury, categories=categories, overall=overall,
                   metrics={**point_metrics(means, overall), OVERALL: overall}, n_judged=n_judged,
                   n_failed=len(judgments) - n_judged, answers=len(judgments), replicate=int(replicate), **facts)

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "row_kind": self.row_kind, "base_model": self.base_model, "arm": self.arm,
                "model": self.model, "judge": self.judge.to_json(), "jury": self.jury.to_json(),
                "categories": self.categories, "overall": self.overall, "metrics": self.metrics,
                "n_judged": self.n_judged, "n_failed": self.n_failed, "answers": self.answers,
                "generate_seconds": self.generate_seconds, "llm_cost_usd": self.llm_cost_usd, "usage": self.usage,
                "replicate": self.replicate, "note": self.note,
                "fallback": self.fallback.to_json() if self.fallback else None, "answer_model": self.answer_model}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> JudgeSummary:
        """A summary file; DataError naming the file and the field for anything malformed."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: judge summary file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object")
        for key in ("row", "row_kind", "base_model", "arm", "model"):
            if not isinstance(data.get(key), str):
                raise DataError(f"{path}: field {key!r} is missing or not a string")
        for key in ("metrics", "usage"):
            values = data.get(key)
            if not isinstance(values, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                   for v in values.values()):
                raise DataError(f"{path}: field {key!r} must be a JSON object of name -> number")
        if OVERALL not in data["metrics"]:
            raise DataError(f"{path}: field 'metrics' has no {OVERALL!r}")
        try:
            jury = JuryUsage.from_json(data["jury"])
            summary = cls(
                row=data["row"], row_kind=data["row_kind"], base_model=data["base_model"], arm=data["arm"],
                model=data["model"], jury=jury, categories={str(c): dict(v) for c, v in data["categories"].items()},
                overall=float(data["overall"]), metrics={k: float(v) for k, v in data["metrics"].items()},
                n_judged=int(data["n_judged"]), n_failed=int(data["n_failed"]), answers=int(data["answers"]),
                generate_seconds=float(data["generate_seconds"]), llm_cost_usd=float(data["llm_cost_usd"]),
                usage={k: float(v) for k, v in data["usage"].items()}, replicate=int(data["replicate"]),
                note=str(data["note"]),
                fallback=ChampionFallback.from_json(data["fallback"]) if data.get("fallback") else None,
                answer_model=str(data["answer_model"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: not a judge summary ({type(exc).__name__}: {exc})") from None
        if JudgeIdentity.from_json(data["judge"]) != jury.identity:
            raise DataError(f"{path}: field 'judge' {data['judge']!r} is not the jury's identity")
        return summary

    def judged_row(self, judgments: list[dict[str, Any]]) -> RowJudgments:
        """This row with its judgments: the judged row the gate, the agreement and the registry use."""
        return RowJudgments(row=self.row, row_kind=self.row_kind, judgments=judgments, base_model=self.base_model,
                            arm=self.arm, judge=self.judge.label, answers=self.answers,
                            generate_seconds=self.generate_seconds, llm_cost_usd=self.llm_cost_usd,
                            replicate=self.replicate, jury=self.jury)


def load_row(summary_path: str | Path, judgments_path: str | Path) -> tuple[JudgeSummary, RowJudgments | None]:
    """A judge step's two files as (its summary, its judged row), the judgments read once; the row is
    None when there is nothing judged (e.g. no champion yet: the summary's `note` says why). A
    judgments file of another model than the summary's is a DataError naming both files."""
    summary = JudgeSummary.read(summary_path)
    judgments = read_jsonl(judgments_path, allow_empty=True)  # a row with nothing to judge writes an empty file
    if not judgments:
        return summary, None
    models = {j.get("model") for j in judgments}
    if summary.answer_model and models != {summary.answer_model}:
        raise DataError(f"{judgments_path}: judgments of {sorted(map(str, models))} paired with the summary of "
                        f"{summary.row!r} ({summary_path})")
    row = summary.judged_row(judgments)
    row.judgments_file = Path(judgments_path)
    return summary, row
