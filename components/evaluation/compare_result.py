"""The compare result: what the compare step decided, as the register step receives it.

One type, one file form: `CompareResult.write` and `CompareResult.read` are the only writer and
reader of the compare step's `result` artifact (JSON, schema `selfguided.compare-result/v1`):

- `comparison`: every row's summary and the paired differences (paired.Comparison, its `to_dict`);
- `decision`: the gate's decision, every rule included (gate.GateDecision: promote, reasons, figures);
- `challenger`: the run's best candidate arm and the row registered as the challenger (gate.Challenger);
- `champion_version`: the registry champion the run evaluated (null: none), which the register step
  checks against the champion when it moves the aliases (gate.champion_moved_rule);
- `metrics`: row -> its MLflow metrics (evaluation/metrics names, the jury's per-judge ones included);
- `rows`: every judged row's identity (row, row_kind, base_model, arm, judge label, replicate);
- `notes`: why a row had nothing judged (e.g. no champion yet);
- `judges`: the jury's agreement figures (agreement.JuryAgreement);
- `slices`: with harvested questions in the test set, each slice's figures (slices.SliceFigures:
  fixed, unseen, seen and the gate's fixed + unseen); [] without (an older result has none).

Nothing downstream edits it: the register step reads it and moves the aliases as it says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from selfguided.components.data.jsonl import DataError
from selfguided.components.evaluation.agreement import JuryAgreement
from selfguided.components.evaluation.decision import Challenger, GateDecision
from selfguided.components.evaluation.paired import Comparison
from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.evaluation.slices import SliceFigures

SCHEMA = "selfguided.compare-result/v1"


@dataclass(frozen=True)
class RowIdentity:
    """Who a judged row is, as the MLflow run of the row is tagged."""

    row: str
    row_kind: str
    base_model: str
    arm: str
    judge: str
    replicate: int = 0

    @classmethod
    def of(cls, row: RowJudgments) -> RowIdentity:
        return cls(row.row, row.row_kind, row.base_model, row.arm, row.judge, row.replicate)


@dataclass
class CompareResult:
    """See the module docstring."""

    comparison: Comparison
    decision: GateDecision
    challenger: Challenger
    champion_version: str | None
    metrics: dict[str, dict[str, float]]
    rows: list[RowIdentity]
    judges: JuryAgreement
    notes: list[str] = field(default_factory=list)
    slices: list[SliceFigures] = field(default_factory=list)

    def decision_line(self) -> str:
        """The gate's verdict in one line, with its first reason."""
        verb = "promote" if self.decision.promote else "keep the champion"
        return f"{verb}: challenger {self.challenger.row}; {self.decision.reasons[0] if self.decision.reasons else ''}"

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "comparison": self.comparison.to_dict(), "decision": self.decision.to_dict(),
                "challenger": self.challenger.to_dict(), "champion_version": self.champion_version,
                "metrics": self.metrics, "rows": [asdict(r) for r in self.rows], "notes": list(self.notes),
                "judges": self.judges.to_json(), "slices": [f.to_dict() for f in self.slices]}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> CompareResult:
        """The compare step's result file; DataError naming the file when it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("schema") != SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
            version = data["champion_version"]
            return cls(
                comparison=Comparison.from_dict(data["comparison"]), decision=GateDecision.from_dict(data["decision"]),
                challenger=Challenger.from_dict(data["challenger"]),
                champion_version=None if version is None else str(version),
                metrics={row: {k: float(v) for k, v in values.items()} for row, values in data["metrics"].items()},
                rows=[RowIdentity(**r) for r in data["rows"]], judges=JuryAgreement.from_json(data["judges"]),
                notes=[str(n) for n in data["notes"]],
                slices=[SliceFigures.from_dict(f) for f in data.get("slices", [])])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{path}: not a compare result ({type(exc).__name__}: {exc})") from None
