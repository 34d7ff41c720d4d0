"""FastChat `model_answer` rows, as the judges read them: loading with errors that name the file
and line, the answer text of each turn, the checks against the questions, and a folder holding
several rows' answers (`write_answer_rows`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfguided.components.data.jsonl import DataError, iter_records, write_jsonl


def load_answers(path: str | Path, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Read FastChat model_answer rows; errors name the file, the line and the field."""
    answers = []
    for number, obj in iter_records(path, ("question_id", "model_id", "choices"), allow_empty=allow_empty):
        try:
            answer_turns(obj)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None
        answers.append(obj)
    return answers


def answer_turns(answer: dict[str, Any]) -> list[str]:
    """The answer texts, one per turn: the turns of the first choice of a FastChat model_answer row."""
    choices = answer.get("choices")
    turns = choices[0].get("turns") if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns) or not (turns or answer.get("error")):
        raise ValueError("'choices' must be [{\"index\": 0, \"turns\": [\"<answer>\", ...]}]")
    return turns


def first_turn(answer: dict[str, Any]) -> str:
    return answer_turns(answer)[0]


def check_answers(answers: list[dict[str, Any]], questions: dict[Any, dict[str, Any]]) -> None:
    """Raise DataError naming the answer when it has no turns, no matching question, or more
    turns than its question."""
    for answer in answers:
        where = f"answer {answer.get('answer_id', '')!s} of model {answer.get('model_id')!r}"
        try:
            turns = answer_turns(answer)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        question = questions.get(answer.get("question_id"))
        if question is None:
            raise DataError(f"{where}: question_id {answer.get('question_id')!r} is not among the questions")
        if len(turns) > len(question["turns"]):
            raise DataError(f"{where}: {len(turns)} answer turns for a question of {len(question['turns'])}")



ANSWER_ROWS_INDEX = "rows.json"


def write_answer_rows(folder: str | Path, rows: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> Path:
    """Several rows' answers as one folder (a step that answers for several models at once, e.g.
    every teacher): `rows/<i>/answers.jsonl`, and `rows.json` listing each row's identity (`row_kind`,
    `base_model`, `row_model`, `generate_seconds`, `answer_cost_usd`, `note`, ...) with its file.
    No rows is a folder with an empty list."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (identity, answers) in enumerate(rows):
        path = folder / "rows" / str(i) / "answers.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, answers)
        index.append({**identity, "answers": f"rows/{i}/answers.jsonl"})
    (folder / ANSWER_ROWS_INDEX).write_text(json.dumps(index, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder


def read_answer_rows(folder: str | Path) -> list[tuple[dict[str, Any], Path]]:
    """The rows of a `write_answer_rows` folder: (identity, answers file), in order."""
    folder = Path(folder)
    try:
        index = json.loads((folder / ANSWER_ROWS_INDEX).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder / ANSWER_ROWS_INDEX}: not a folder of answered rows ({exc})") from None
    if not isinstance(index, list) or not all(isinstance(e, dict) and "answers" in e for e in index):
        raise DataError(f"{folder / ANSWER_ROWS_INDEX}: must list {{..., \"answers\": <file>}} objects")
    return [({k: v for k, v in e.items() if k != "answers"}, folder / e["answers"]) for e in index]
