"""Seed records: reading and normalising them from the shapes people have (Alpaca, KoAlpaca, chat
`messages`).

Every reader names the file and line of a bad record. Records that are unusable but not fatal
(an empty output, a missing instruction) are set aside as *rejects* with a reason, so a step can
count them in its report instead of dropping them silently.

Seed text is taken as written or not at all: the text fields (instruction, input, output and their
aliases, and the content of system, user and assistant messages) and the category must be JSON
strings. A number, list or object there is a reject naming the field and what it holds, never
coerced with str(): `["리스트"]` scored as the text "['리스트']" is a paid request for nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from selfguided.components.data.categories import normalize_category
from selfguided.components.data.jsonl import DataError, iter_jsonl


@dataclass
class Reject:
    """A record set aside instead of used, with the place it came from and why."""

    path: str
    line: int
    reason: str
    raw: str
    extra: dict[str, Any] = field(default_factory=dict)
    """More fields for the rejects file, e.g. the size of a record too long to score."""

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "reason": self.reason, "raw": self.raw, **self.extra}


@dataclass
class LoadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    """Line number of each record in `records` (same order), for rejects set aside later."""


def _json_kind(value: Any) -> str:
    """What a JSON value is, for a reject reason: 'a list (["리스트"])', 'a number (42)'."""
    kind = ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, (int, float))
            else "a list" if isinstance(value, list) else "an object" if isinstance(value, dict)
            else "a string" if isinstance(value, str) else type(value).__name__)
    shown = json.dumps(value, ensure_ascii=False)
    return f"{kind} ({shown if len(shown) <= 40 else shown[:37] + '...'})"


def _text(value: Any, name: str) -> str:
    """A text field as written (stripped); None is an absent field; anything else is a ValueError."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    raise ValueError(f"field {name!r} must be a string, got {_json_kind(value)}")


def _first_text(obj: dict[str, Any], names: tuple[str, ...], problems: list[str]) -> str:
    """The first of `names` present in `obj`, as text; a non-string value is noted in `problems`."""
    name = next((n for n in names if n in obj), names[0])
    try:
        return _text(obj.get(name), name)
    except ValueError as exc:
        problems.append(str(exc))
        return ""


def _from_messages(messages: Any) -> tuple[str, str]:
    """Take instruction and output from a chat `messages` list (first user, last assistant turn)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    turns: dict[str, list[str]] = {"system": [], "user": [], "assistant": []}
    problems = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"messages[{index}] must be a {{role, content}} object, got {_json_kind(message)}")
        elif message.get("role") in turns:
            try:
                turns[message["role"]].append(_text(message.get("content"), f"messages[{index}].content"))
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    system, users, assistants = turns["system"], turns["user"], turns["assistant"]
    if not users:
        raise ValueError("'messages' has no user turn")
    if not assistants:
        raise ValueError("'messages' has no assistant turn")
    instruction = users[0] if not system else f"{system[0]}\n\n{users[0]}"
    return instruction, assistants[-1]


def normalize_seed_record(obj: Any, *, default_id: str) -> dict[str, Any]:
    """Turn one input object (Alpaca, KoAlpaca or chat `messages`) into a seed record.

    Raises ValueError with a short reason when the object cannot be a seed record.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    problems: list[str] = []
    if "messages" in obj and "instruction" not in obj:
        instruction, output = _from_messages(obj["messages"])
        input_text = ""
    else:
        instruction = _first_text(obj, ("instruction", "question", "prompt"), problems)
        input_text = _first_text(obj, ("input", "context"), problems)
        output = _first_text(obj, ("output", "answer", "response"), problems)
    category = _first_text(obj, ("category", "type"), problems)
    record_id = obj.get("id")
    if record_id is not None and (isinstance(record_id, bool) or not isinstance(record_id, (str, int))):
        problems.append(f"field 'id' must be a string or an integer, got {_json_kind(record_id)}")
    if problems:
        raise ValueError("; ".join(problems))
    if not instruction:
        raise ValueError("missing field 'instruction' (or 'messages' with a user turn)")
    if not category:
        raise ValueError("missing field 'category'")
    if not output:
        raise ValueError("empty output")
    record: dict[str, Any] = {
        "id": str(record_id).strip() if record_id is not None and str(record_id).strip() else default_id,
        "category": normalize_category(category),
        "instruction": instruction,
        "input": input_text,
        "output": output,
    }
    return record


def load_seed(
    path: str | Path, *, allowed_categories: Iterable[str] | None = None
) -> LoadResult:
    """Read seed records; unusable records become rejects, a broken file raises DataError.

    `allowed_categories`: when given, records of other categories are rejected (with the list
    of known ones in the reason); when None, unknown categories pass through as their own key.
    """
    path = Path(path)
    allowed = set(allowed_categories) if allowed_categories is not None else None
    result = LoadResult()
    seen_ids: set[str] = set()
    for number, line, obj in iter_jsonl(path):
        try:
            record = normalize_seed_record(obj, default_id=f"{path.stem}-{number}")
            if allowed is not None and record["category"] not in allowed:
                raise ValueError(
                    f"unknown category {record['category']!r} (known: {', '.join(sorted(allowed))})"
                )
            if record["id"] in seen_ids:
                raise ValueError(f"duplicate id {record['id']!r}")
        except ValueError as exc:
            result.rejects.append(Reject(str(path), number, str(exc), line))
            continue
        seen_ids.add(record["id"])
        result.records.append(record)
        result.lines.append(number)
    if not result.records:
        reasons = "; ".join(f"line {r.line}: {r.reason}" for r in result.rejects[:5])
        raise DataError(f"{path}: no usable seed records ({reasons})")
    return result
