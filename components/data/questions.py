"""Eval questions in FastChat's `question.jsonl` shape, and the reference answers some categories
are judged against (FastChat's `reference_answer/*.jsonl`).

A question's *slice* (`question_slice`, the one reader): a question of the ordinary test set has no
`slice` field and is `fixed`; harvested production prompts appended to it (`load_questions(...,
slices=FRESH_SLICES)`, the split step's `fresh_questions_uri`) carry `"slice": "unseen"` (held out
of every seed version) or `"seen"` (in the training seed data). The field travels on to the
judgments (judging/rules.judgment_row), where the gate reads it the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

from selfguided.components.data.categories import normalize_category
from selfguided.components.data.jsonl import DataError, iter_records


SLICES: tuple[str, ...] = ("fixed", "unseen", "seen")
"""The test set's slices, in report order: the fixed test set, harvested prompts held out of every
seed version, harvested prompts that are in the training seed data."""
FRESH_SLICES: tuple[str, ...] = ("unseen", "seen")
"""The slices a harvested question may carry."""


def question_slice(row: Mapping[str, Any]) -> str:
    """The slice of a question or of its judgment: its `slice`, `fixed` when it has none."""
    return str(row.get("slice") or "fixed")


def load_questions(path: str | Path, *, slices: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Read FastChat `question.jsonl` (question_id, category, turns); errors name file and line.

    `slices`: every question must carry a `slice` among them (harvested questions, FRESH_SLICES);
    None: a `slice`, when a question has one, must be one of SLICES."""
    path = Path(path)
    questions = []
    allowed = SLICES if slices is None else tuple(slices)
    for number, obj in iter_records(path, ("question_id", "category", "turns")):
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(f"{path}:{number}: 'turns' must be a non-empty list of strings")
        if ("slice" in obj or slices is not None) and obj.get("slice") not in allowed:
            raise DataError(f"{path}:{number}: 'slice' must be one of {', '.join(allowed)}, got {obj.get('slice')!r}")
        questions.append({**obj, "category": normalize_category(obj["category"])})
    return questions


def load_reference_answers(path: str | Path) -> dict[str, list[str]]:
    """FastChat `reference_answer/*.jsonl` (model_answer rows) as {question_id: [text per turn]}."""
    references: dict[str, list[str]] = {}
    for number, obj in iter_records(path, ("question_id", "choices")):
        choices = obj["choices"]
        turns = choices[0].get("turns") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{path}:{number}: 'choices' must be [{{\"index\": 0, \"turns\": [\"<answer>\", ...]}}]")
        references[str(obj["question_id"])] = turns
    return references


def attach_references(questions: list[dict[str, Any]], references: dict[str, list[str]],
                      categories: Iterable[str]) -> list[dict[str, Any]]:
    """Questions of `categories` carry `reference` (one text per turn: the reference file's, else
    their own inline one, as MT-bench has), which the judge is shown; other questions carry none,
    as FastChat does."""
    wanted = set(categories)
    out = []
    for question in questions:
        inline = question.get("reference")
        if not (isinstance(inline, list) and all(isinstance(t, str) for t in inline) and any(inline)):
            inline = None
        reference = references.get(str(question["question_id"])) or inline
        question = {k: v for k, v in question.items() if k != "reference"}
        if question["category"] in wanted and reference:
            question["reference"] = reference
        out.append(question)
    return out
