"""JSON Lines files, UTF-8, one object per line: reading with the file and line of every problem,
writing with Korean kept readable. `DataError` is the error of a data file that cannot be used at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """A data file cannot be used at all; the message names the file, the line and the problem."""


def iter_jsonl(path: str | Path, *, allow_empty: bool = False) -> Iterator[tuple[int, str, Any]]:
    """Yield (line number, raw line, parsed object) for each non-blank line.

    Raises DataError naming file and line for undecodable bytes or malformed JSON, and for an
    empty file, since a step fed nothing is almost always a wiring mistake; `allow_empty` is for
    the files that may rightly be empty (the answers and judgments of a row that had nothing to
    answer, such as a champion that does not exist yet).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw_bytes = path.read_bytes()
    if not raw_bytes.strip():
        if allow_empty:
            return
        raise DataError(f"{path}: file is empty, expected JSON Lines (one object per line)")
    for number, raw in enumerate(raw_bytes.splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{number}: bytes are not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}); "
                "re-save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        yield number, line, obj


def read_jsonl(path: str | Path, *, allow_empty: bool = False) -> list[Any]:
    return [obj for _, _, obj in iter_jsonl(path, allow_empty=allow_empty)]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as UTF-8 JSON Lines (Korean kept readable); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def iter_records(path: str | Path, required: Iterable[str], *, allow_empty: bool = False
                 ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) of a JSONL file whose every line must be an object with the
    `required` fields; DataError names file, line and the missing fields otherwise."""
    for number, _, obj in iter_jsonl(path, allow_empty=allow_empty):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        missing = [k for k in required if k not in obj]
        if missing:
            raise DataError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        yield number, obj
