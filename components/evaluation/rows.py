"""A row of the evaluation and its judgments: what is read and what is valid.

A *row* is one evaluated model of a run (a trained base x arm, the untuned base, an API teacher,
the re-evaluated champion). `parse_row` turns its judgments (FastChat `model_judgment` rows,
extended with the four criteria) into scored items keyed by (question_id, turn); a judgment that
failed, or whose score lies outside the judge's 1-10 scale, is counted as failed with its reason,
never used as a number. Categories go in `data/categories.category_order` (the paper's six first,
then any other alphabetically), the one rule for their order everywhere. `write_evidence` hands
judged rows from one step to the next as a folder. `decision_rows` keeps what the gate decides on:
the judgments of the fixed test set and of harvested prompts held out of training (`unseen`), not
those of harvested prompts in the training seed data (`seen`, data/questions.question_slice).

Light on purpose (no numpy): the judge step and the registry import it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, replace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from selfguided.components.data.categories import category_order
from selfguided.components.data.jsonl import DataError
from selfguided.components.data.questions import question_slice
from selfguided.components.judging.rules import ROW_KINDS, judgment_problem
from selfguided.components.model.prompting import CRITERIA

if TYPE_CHECKING:
    from selfguided.components.judging.jury import JuryUsage



@dataclass
class RowJudgments:
    """One evaluated model of a run and its per-(question, turn) judgments.

    judgments: dicts with `question_id`, `turn` (1-based, default 1), `category`, `seen`,
        `scores` (the four criteria, or None), `score` (overall 1-10; None or -1 when failed),
        `answer_chars`, `error`. A judgment with `error` set or no valid `score` is failed:
        counted, never used in a statistic.
    answers: answers produced (for cost); 0 means "the number of judgments".
    generate_seconds: measured seconds to produce the answers (0 = unknown).
    llm_cost_usd: API cost to produce the answers (teacher rows).
    replicate: which training seed of its (base model, arm) this row is (0 when trained once).
    jury: the jury's usage (judge_summary.JudgeSummary.jury) when read from a judge step's files.
    judgments_file: the judgments file it was read from (logged by the register step), if any.

    The one judged-row type: the gate, the agreement statistics and the registry's traces use it;
    judge_summary.load_row reads it from a judge step's files.
    """

    row: str
    row_kind: str
    judgments: list[dict[str, Any]]
    base_model: str = ""
    arm: str = ""
    judge: str = ""
    answers: int = 0
    generate_seconds: float = 0.0
    llm_cost_usd: float = 0.0
    replicate: int = 0
    jury: JuryUsage | None = None
    judgments_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.row:
            raise ValueError("RowJudgments.row must be a non-empty name")
        if self.row_kind not in ROW_KINDS:
            raise ValueError(f"row {self.row!r}: row_kind must be one of {', '.join(ROW_KINDS)}, got {self.row_kind!r}")


@dataclass(frozen=True)
class Item:
    """One scored (question, turn): its overall score, the criteria it has, the answer's length."""

    question: str
    turn: int
    category: str
    score: float
    criteria: dict[str, float]
    chars: float | None


@dataclass
class ParsedRow:
    items: dict[tuple[str, int], Item]  # scored items only, in judgment order
    categories: list[str]  # every category with a judgment, in `category_order`
    failed: dict[str, int]  # per category
    failure_reasons: dict[str, int]  # reason -> count
    seen: dict[str, bool | None]
    n_judgments: int

    def by_category(self) -> dict[str, list[Item]]:
        grouped: dict[str, list[Item]] = defaultdict(list)
        for item in self.items.values():
            grouped[item.category].append(item)
        return grouped


DECIDING_SLICES: tuple[str, ...] = ("fixed", "unseen")
"""The slices the gate decides on; `seen` (harvested prompts the model was trained on would flatter
it) is reported only (evaluation/slices.py)."""


def slice_rows(rows: Iterable[RowJudgments], slices: Sequence[str]) -> list[RowJudgments]:
    """`rows` with only the judgments of questions in `slices` (a row unchanged when all of its are)."""
    out = []
    for row in rows:
        kept = [j for j in row.judgments if not isinstance(j, Mapping) or question_slice(j) in slices]
        out.append(row if len(kept) == len(row.judgments) else replace(row, judgments=kept))
    return out


def decision_rows(rows: Iterable[RowJudgments]) -> list[RowJudgments]:
    """What the gate decides on: `rows` without the judgments of `seen` harvested questions."""
    return slice_rows(rows, DECIDING_SLICES)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_row(row: RowJudgments) -> ParsedRow:
    """The row's scored items; clear errors for malformed judgments (missing id, a turn judged twice)."""
    items: dict[tuple[str, int], Item] = {}
    keys: set[tuple[str, int]] = set()
    failed: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    seen: dict[str, bool | None] = {}
    for index, judgment in enumerate(row.judgments):
        where = f"row {row.row!r}, judgment {index + 1}"
        if not isinstance(judgment, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(judgment).__name__}")
        qid = judgment.get("question_id")
        if qid is None or str(qid) == "":
            raise ValueError(f"{where}: missing question_id")
        try:
            turn = int(judgment.get("turn", 1) or 1)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: turn must be an integer, got {judgment.get('turn')!r}") from None
        key = (str(qid), turn)
        if key in keys:
            raise ValueError(f"{where}: question {key[0]} turn {turn} is judged twice")
        keys.add(key)
        category = str(judgment.get("category") or "uncategorized")
        if seen.get(category) is None:
            seen[category] = None if judgment.get("seen") is None else bool(judgment["seen"])
        problem = judgment_problem(judgment)
        if problem is not None:
            failed[category] += 1
            reasons[problem if not problem.startswith("score ") else problem.split(" is ", 1)[-1]] += 1
            continue
        raw = judgment.get("scores")
        criteria = {c: float(raw[c]) for c in CRITERIA if c in raw} if isinstance(raw, Mapping) else {}
        items[key] = Item(key[0], turn, category, float(judgment["score"]), criteria, _number(judgment.get("answer_chars")))
    return ParsedRow(items, category_order(seen), dict(failed), dict(reasons), seen, len(row.judgments))


def category_means(judgments: Iterable[Mapping[str, Any]]) -> tuple[dict[str, dict[str, float]], float]:
    """Per category, the mean of each criterion and of `overall` over the valid judgments, with `n`;
    and the row's overall, the mean of the category means (every category weighs the same).

    The point figures of `judge/<category>/<criterion>` and `judge/overall`, for the judge step's
    own report; the compare step's summaries (with intervals) give the same numbers."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for j in judgments:
        if judgment_problem(j) is not None:
            continue
        category = str(j.get("category") or "uncategorized")
        given = j.get("scores") if isinstance(j.get("scores"), Mapping) else {}
        for name, value in [("overall", j["score"]), *((c, given[c]) for c in CRITERIA if c in given)]:
            sums[category][name] += float(value)
            counts[category][name] += 1
    # A criterion's mean is over the judgments that give it, as compare's summaries take it.
    means = {cat: {**{name: sums[cat][name] / counts[cat][name] for name in (*CRITERIA, "overall")
                      if counts[cat][name]}, "n": counts[cat]["overall"]} for cat in category_order(sums)}
    overall = sum(m["overall"] for m in means.values()) / len(means) if means else float("nan")
    return means, overall



EVIDENCE_INDEX = "rows.json"


@dataclass(frozen=True)
class EvidenceRow:
    """One judged row of an evidence folder: its judge summary and judgments files."""

    summary: Path
    judgments: Path
    trained: bool


def write_evidence(folder: str | Path, summary_files: Sequence[str | Path], judgment_files: Sequence[str | Path],
                   *, trained: int) -> Path:
    """Judged rows handed on as one folder: every row's judge summary and judgments under
    `rows/<i>/`, and `rows.json` listing them in order (the first `trained` are trained rows, in
    the order the pipeline's loop collected the models). The compare step hands its rows to the
    register step so (pairing each summary with its judgments once); the teacher rows' judge step
    hands its rows to compare so. No rows is a folder with an empty list."""
    if len(summary_files) != len(judgment_files):
        raise DataError(f"{len(summary_files)} judge summaries but {len(judgment_files)} judgments files")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (summary, judgments) in enumerate(zip(summary_files, judgment_files)):
        row = folder / "rows" / str(i)
        row.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(summary, row / "summary.json")
        shutil.copyfile(judgments, row / "judgments.jsonl")
        index.append({"summary": f"rows/{i}/summary.json", "judgments": f"rows/{i}/judgments.jsonl",
                      "trained": i < trained})
    (folder / EVIDENCE_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def read_evidence(folder: str | Path) -> list[EvidenceRow]:
    """The rows of a `write_evidence` folder, in order."""
    folder = Path(folder)
    try:
        index = json.loads((folder / EVIDENCE_INDEX).read_text(encoding="utf-8"))
        return [EvidenceRow(folder / e["summary"], folder / e["judgments"], bool(e["trained"])) for e in index]
    except (OSError, json.JSONDecodeError, TypeError, KeyError) as exc:
        raise DataError(f"{folder / EVIDENCE_INDEX}: not a folder of judged rows ({type(exc).__name__}: {exc})"
                        ) from None
