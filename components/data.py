"""Data contracts: reading and normalising seed records, eval questions and JSONL files.

Every reader names the file and line of a bad record. Records that are unusable but not fatal
(an empty output, a missing instruction) are set aside as *rejects* with a reason, so a step can
count them in its report instead of dropping them silently.

Seed text is taken as written or not at all: the text fields (instruction, input, output and their
aliases, and the content of system, user and assistant messages) and the category must be JSON
strings. A number, list or object there is a reject naming the field and what it holds, never
coerced with str(): `["리스트"]` scored as the text "['리스트']" is a paid request for nothing.
"""

from __future__ import annotations

import hashlib
import os
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

# The six writing categories of the paper, keyed in English. Cover letter and poem are held
# out from training ("unseen" categories), the other four are trained on.
CATEGORIES: tuple[str, ...] = ("cover_letter", "poem", "blog", "novel", "scenario", "news")
HELD_OUT_CATEGORIES: tuple[str, ...] = ("cover_letter", "poem")
CATEGORY_LABELS_KO = {
    "cover_letter": "자기소개서",
    "poem": "시",
    "blog": "블로그",
    "novel": "소설",
    "scenario": "시나리오",
    "news": "뉴스",
}

_CATEGORY_ALIASES = {
    **{ko: en for en, ko in CATEGORY_LABELS_KO.items()},
    "자소서": "cover_letter",
    "자기 소개서": "cover_letter",
    "coverletter": "cover_letter",
    "cover letter": "cover_letter",
    "cover-letter": "cover_letter",
    "poetry": "poem",
    "poems": "poem",
    "블로그 글": "blog",
    "blog post": "blog",
    "blogpost": "blog",
    "소설 쓰기": "novel",
    "fiction": "novel",
    "story": "novel",
    "시나리오 작성": "scenario",
    "screenplay": "scenario",
    "script": "scenario",
    "뉴스 기사": "news",
    "기사": "news",
    "news article": "news",
}

SAMPLE_SEED = "seed.jsonl"
SAMPLE_QUESTIONS = "questions.jsonl"


class DataError(ValueError):
    """A data file cannot be used at all; the message names the file, the line and the problem."""


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


def normalize_category(name: str) -> str:
    """Map Korean or English category names to the six keys; unknown names pass through as a key."""
    key = " ".join(str(name).strip().lower().replace("_", " ").split())
    if key.replace(" ", "_") in CATEGORIES:
        return key.replace(" ", "_")
    if key in _CATEGORY_ALIASES:
        return _CATEGORY_ALIASES[key]
    if key.replace(" ", "") in _CATEGORY_ALIASES:
        return _CATEGORY_ALIASES[key.replace(" ", "")]
    return key.replace(" ", "_")


def sample_path(name: str) -> Path:
    """Path of a sample file bundled with the package (`seed.jsonl`, `questions.jsonl`)."""
    return Path(str(resources.files("selfguided.components") / "sample_data" / name))


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


REFERENCE_CATEGORIES: tuple[str, ...] = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    """The S3 endpoint every S3 access of every step uses: AWS_ENDPOINT_URL_S3 (set once, in the
    cluster from the `selfguided-s3` Secret's optional key of that name: Kubeflow's MinIO or
    SeaweedFS, a corporate S3), else MLFLOW_S3_ENDPOINT_URL, else AWS itself (None)."""
    return next((os.environ[v] for v in S3_ENDPOINT_VARIABLES if os.environ.get(v)), None)


def s3_client():
    """The one boto3 S3 client factory: seed and question files, the LLM cache. MLflow's own S3
    access follows the same variable (botocore reads AWS_ENDPOINT_URL_S3 when no endpoint is given)."""
    import boto3  # only needed for S3

    return boto3.client("s3", endpoint_url=s3_endpoint())


def fetch_input(uri: str, default_sample: str, workdir: str | Path) -> Path:
    """Resolve a step's input location to a local file.

    "" means the sample bundled with the package; `s3://bucket/key` is downloaded through
    `s3_client` (the configured endpoint, credentials from the usual AWS_* variables); anything
    else is a local path (in a cluster: a mounted volume).
    """
    if not uri:
        return sample_path(default_sample)
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise DataError(f"{uri}: expected s3://BUCKET/KEY")
        target = Path(workdir) / Path(key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        s3_client().download_file(bucket, key, str(target))
        return target
    path = Path(uri)
    if not path.exists():
        raise DataError(f"{uri}: file not found")
    return path


def check_s3_read_access(uri: str) -> str:
    """Prove the S3 credentials of this process may list and read under `s3://bucket/prefix`, for
    almost free: one ListObjectsV2 of one key, then a ranged GetObject of that key's first byte when
    there is one. A GET, not a HEAD: under SSE-KMS only a GET proves `kms:Decrypt`, which is what
    KServe's storage initializer needs. An empty prefix (a first run) proves listing only, and the
    returned line says so. Raises DataError in one line naming the URI, the endpoint and S3's error code."""
    import botocore.exceptions

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise DataError(f"{uri}: expected s3://BUCKET[/PREFIX]")
    where = s3_endpoint() or "AWS S3"
    client = s3_client()
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/" if prefix else "", MaxKeys=1)
        first = [o["Key"] for o in listed.get("Contents", []) if o.get("Size", 1) > 0]
        if first:
            client.get_object(Bucket=bucket, Key=first[0], Range="bytes=0-0")["Body"].read()
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise DataError(f"{uri} cannot be read with these S3 credentials at {where} ({code})") from None
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise DataError(f"{uri} cannot be read at {where} ({type(exc).__name__}: {exc})") from None
    if not first:
        return (f"{uri}: listed at {where}; empty so far, so reading (GetObject, kms:Decrypt) is not proven "
                f"until a model is stored there")
    return f"{uri}: listed and read at {where}"
