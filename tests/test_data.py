"""Seed and question files: accepted shapes, and bad input that names file, line and problem."""

import json

import pytest

from selfguided.components.data.categories import CATEGORIES, normalize_category
from selfguided.components.data.inputs import fetch_input, sample_path
from selfguided.components.data.jsonl import DataError
from selfguided.components.data.questions import load_questions
from selfguided.components.data.seed import load_seed


def write_lines(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def row(**fields):
    base = {"id": "r1", "category": "blog", "instruction": "블로그 글을 써 주세요.", "output": "좋은 글입니다."}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}, ensure_ascii=False)


@pytest.mark.parametrize(
    "name, key",
    [("자기소개서", "cover_letter"), ("시", "poem"), ("Blog", "blog"), ("소설", "novel"), ("screenplay", "scenario"),
     ("뉴스 기사", "news"), ("Cover Letter", "cover_letter"), ("recipe", "recipe")],
)
def test_category_names_are_normalised(name, key):
    assert normalize_category(name) == key


def test_alpaca_koalpaca_and_chat_shapes_are_accepted(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [
        row(id="a", input="맥락"),
        json.dumps({"id": "b", "category": "뉴스", "question": "기사를 써 줘", "answer": "기사 본문"}, ensure_ascii=False),
        json.dumps({"id": "c", "category": "시", "messages": [
            {"role": "user", "content": "봄에 대한 시"}, {"role": "assistant", "content": "봄바람\n꽃잎"}]},
            ensure_ascii=False),
    ])
    result = load_seed(path)
    assert not result.rejects
    assert [(r["id"], r["category"]) for r in result.records] == [("a", "blog"), ("b", "news"), ("c", "poem")]
    assert result.records[0]["input"] == "맥락"
    assert result.records[2]["output"] == "봄바람\n꽃잎"


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [row(), '{"id": "r2", "category": "blog",'])
    with pytest.raises(DataError, match=r"seed\.jsonl:2: malformed JSON"):
        load_seed(path)


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [row(), "블로그".encode("cp949")])
    with pytest.raises(DataError, match=r"seed\.jsonl:2: bytes are not UTF-8"):
        load_seed(path)


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "seed.jsonl").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match="file is empty"):
        load_seed(tmp_path / "seed.jsonl")


def test_unusable_records_become_counted_rejects(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [
        row(id="ok"),
        row(id="no-instruction", instruction=None),
        row(id="empty-output", output="   "),
        row(id="no-category", category=None),
        row(id="odd", category="요리법"),
        row(id="ok"),
        "[1, 2]",
    ])
    result = load_seed(path, allowed_categories=CATEGORIES)
    assert [r["id"] for r in result.records] == ["ok"]
    reasons = {r.line: r.reason for r in result.rejects}
    assert reasons[2].startswith("missing field 'instruction'")
    assert reasons[3] == "empty output"
    assert reasons[4] == "missing field 'category'"
    assert reasons[5].startswith("unknown category '요리법'")
    assert reasons[6] == "duplicate id 'ok'"
    assert reasons[7].startswith("expected a JSON object")
    assert all(r.path == str(path) and r.raw for r in result.rejects)


def test_unknown_category_passes_through_when_not_restricted(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [row(category="Recipe")])
    assert load_seed(path).records[0]["category"] == "recipe"


def test_a_file_with_no_usable_record_is_an_error(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [row(output="")])
    with pytest.raises(DataError, match=r"no usable seed records \(line 1: empty output\)"):
        load_seed(path)


def test_questions_need_fastchat_fields(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [json.dumps({"question_id": 1, "category": "시", "turns": ["x"]}),
                                              json.dumps({"question_id": 2, "turns": ["y"]})])
    with pytest.raises(DataError, match=r"q\.jsonl:2: missing field\(s\) category"):
        load_questions(path)


def test_fetch_input_defaults_to_the_bundled_sample(tmp_path):
    assert fetch_input("", "seed.jsonl", tmp_path) == sample_path("seed.jsonl")
    with pytest.raises(DataError, match="not found"):
        fetch_input(str(tmp_path / "missing.jsonl"), "seed.jsonl", tmp_path)


def test_bundled_sample_data_covers_every_category():
    seed = load_seed(sample_path("seed.jsonl"), allowed_categories=CATEGORIES)
    assert not seed.rejects
    for category in CATEGORIES:
        assert sum(r["category"] == category for r in seed.records) >= 12, category
    questions = load_questions(sample_path("questions.jsonl"))
    for category in CATEGORIES:
        assert sum(q["category"] == category for q in questions) >= 5, category
    seed_instructions = {r["instruction"] for r in seed.records}
    assert not any(q["turns"][0] in seed_instructions for q in questions)


def test_text_fields_must_be_strings_and_are_never_coerced(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [
        json.dumps({"id": "issue", "category": "시", "instruction": ["리스트"], "output": 42}, ensure_ascii=False),
        row(id="input-object", input={"k": "v"}),
        json.dumps({"id": "alias", "category": "blog", "question": "글을 써 줘", "answer": True}, ensure_ascii=False),
        row(id="category", category=3),
        json.dumps({"id": "chat", "category": "시", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "봄"}]}, {"role": "assistant", "content": "봄"}]},
            ensure_ascii=False),
        json.dumps({"id": "chat-2", "category": "시", "messages": ["봄", {"role": "assistant", "content": "봄"}]},
                   ensure_ascii=False),
        json.dumps({"id": ["a"], "category": "blog", "instruction": "글", "output": "글"}, ensure_ascii=False),
        json.dumps({"id": "null-input-is-absent", "category": "blog", "instruction": "글", "input": None,
                    "output": "본문"}, ensure_ascii=False),
        json.dumps({"id": 7, "category": "blog", "instruction": "글", "output": "본문"}, ensure_ascii=False),
    ])
    result = load_seed(path)
    assert [r["id"] for r in result.records] == ["null-input-is-absent", "7"]
    assert result.records[0]["input"] == ""
    assert result.lines == [8, 9]
    reasons = {r.line: r.reason for r in result.rejects}
    assert reasons[1] == ("field 'instruction' must be a string, got a list ([\"리스트\"]); "
                          "field 'output' must be a string, got a number (42)")
    assert reasons[2] == "field 'input' must be a string, got an object ({\"k\": \"v\"})"
    assert reasons[3] == "field 'answer' must be a string, got a boolean (true)"
    assert reasons[4] == "field 'category' must be a string, got a number (3)"
    assert reasons[5] == "field 'messages[0].content' must be a string, got a list ([{\"type\": \"text\", \"text\": \"봄\"}])"
    assert reasons[6] == "messages[0] must be a {role, content} object, got a string (\"봄\")"
    assert reasons[7] == "field 'id' must be a string or an integer, got a list ([\"a\"])"


def test_a_long_value_is_shortened_in_the_reason(tmp_path):
    path = write_lines(tmp_path / "seed.jsonl", [row(id="ok"), row(id="long", output=list(range(100)))])
    [reject] = load_seed(path).rejects
    assert reject.reason.startswith("field 'output' must be a string, got a list ([0, 1, 2")
    assert reject.reason.endswith("...)") and len(reject.reason) < 100
