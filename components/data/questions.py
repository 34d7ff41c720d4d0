"""Eval questions in FastChat's `question.jsonl` shape, and the reference answers some categories
are judged against (FastChat's `reference_answer/*.jsonl`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from selfguided.components.data.categories import normalize_category
from selfguided.components.data.jsonl import DataError, iter_records


def load_questions(path: str | Path) -> list[dict[str, Any]]:
    """Read FastChat `question.jsonl` (question_id, category, turns); errors name file and line."""
    path = Path(path)
    questions = []
    for number, obj in iter_records(path, ("question_id", "category", "turns")):
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(f"{path}:{number}: 'turns' must be a non-empty list of strings")
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
