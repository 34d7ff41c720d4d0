"""Harvested questions in the test set: the split appends them with their slice, the judgments carry
it, the gate decides on fixed + unseen only, and the report shows every slice apart."""

import json
from pathlib import Path

import pytest
from evaluation_rows import CATS, make_row
from registry_fixtures import category_scores, make_judgments, write_row

from selfguided.components.data.jsonl import DataError, read_jsonl, write_jsonl
from selfguided.components.data.questions import question_slice
from selfguided.components.evaluation.compare_result import CompareResult
from selfguided.components.evaluation.decision import PromotionGate
from selfguided.components.evaluation.gate import evaluate_run
from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.evaluation.slices import slice_figures, slice_metrics, slices_section
from selfguided.components.judging.offline import judge_offline
from selfguided.components.steps.compare import run_compare_step
from selfguided.components.steps.split import SplitConfig, run_split_step
from test_split_step import _scored


def _fresh(n_unseen=3, n_seen=2, **extra):
    rows = [{"question_id": f"harvest-u{i}", "category": "poem", "turns": [f"시를 써 주세요 {i}"], "slice": "unseen"}
            for i in range(n_unseen)]
    rows += [{"question_id": f"harvest-s{i}", "category": "blog", "turns": [f"블로그 글 {i}"], "slice": "seen"}
             for i in range(n_seen)]
    return [{**r, **extra} for r in rows]


def _split(tmp_path, fresh_rows, *, config=None, questions_uri=""):
    scored = tmp_path / "scored.jsonl"
    write_jsonl(scored, _scored())
    fresh = tmp_path / "fresh.jsonl"
    if fresh_rows is not None:
        fresh.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in fresh_rows), "utf-8")
    return run_split_step(str(scored), questions_uri, str(tmp_path / "train"), str(tmp_path / "q.jsonl"),
                          str(tmp_path / "report.md"), config or SplitConfig(eval_fraction=0.3),
                          fresh_questions_uri=str(fresh) if fresh_rows is not None else "")


def test_harvested_questions_are_appended_after_the_cap_keeping_their_slice(tmp_path):
    _, plain = _split(tmp_path / "a", None, config=SplitConfig(eval_fraction=0.3, max_eval_questions=2))
    _, merged = _split(tmp_path / "b", _fresh(), config=SplitConfig(eval_fraction=0.3, max_eval_questions=2))
    assert all("slice" not in q for q in plain)  # no fresh questions: the test set as before
    assert merged[: len(plain)] == plain  # the fixed set first, unchanged
    fresh = merged[len(plain):]
    assert [q["question_id"] for q in fresh] == ["harvest-u0", "harvest-u1", "harvest-u2", "harvest-s0", "harvest-s1"]
    # the cap (2 per category) is the fixed set's: 3 more poems still come in
    assert sum(q["category"] == "poem" for q in merged) == 2 + 3
    assert [question_slice(q) for q in merged].count("fixed") == len(plain)
    assert {q["slice"] for q in fresh} == {"unseen", "seen"}
    assert {q["seen"] for q in fresh if q["category"] == "poem"} == {False}  # poem is a held-out category
    assert read_jsonl(tmp_path / "b" / "q.jsonl") == merged
    report = (tmp_path / "b" / "report.md").read_text(encoding="utf-8")
    assert "3 held out of every seed version (slice unseen) and 2 in the training seed data (slice seen" in report


def test_what_harvest_holds_out_is_what_the_split_takes(tmp_path):
    from selfguided.components.data.harvest import Prompt, holdout_questions

    rows = holdout_questions([Prompt("t1", "poem", "첫눈 오는 아침의 시를 써 주세요")],
                             [Prompt("t2", "blog", "동네 책방 후기를 써 주세요"), Prompt("t3", "news", "도서관 소식")])
    _, merged = _split(tmp_path, rows)
    fresh = [(q["category"], q["slice"]) for q in merged if "slice" in q]
    assert fresh[0] == ("poem", "unseen") and len(fresh) == 2 and fresh[1] in {("blog", "seen"), ("news", "seen")}


@pytest.mark.parametrize("rows, message", [
    (_fresh(slice="train"), r"fresh.jsonl:1: 'slice' must be one of unseen, seen, got 'train'"),
    ([{k: v for k, v in r.items() if k != "slice"} for r in _fresh()], r"fresh.jsonl:1: 'slice' must be one of"),
    (_fresh() + _fresh(n_seen=0, n_unseen=1), r"question_id harvest-u0 appears more than once"),
    (_fresh() + [{"question_id": "poem-0", "category": "poem", "turns": ["x"], "slice": "unseen"}],
     r"question_id poem-0 is also in the fixed test set"),
])
def test_bad_harvested_questions_are_refused_naming_the_file(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        _split(tmp_path, rows)


def test_a_fixed_questions_file_with_a_slice_is_refused(tmp_path):
    questions = tmp_path / "questions.jsonl"
    write_jsonl(questions, [{"question_id": "q1", "category": "blog", "turns": ["x"], "slice": "seen"}])
    with pytest.raises(DataError, match=r"questions.jsonl: question q1 carries slice 'seen'; harvested questions go in "
                                        r"fresh_questions_uri"):
        _split(tmp_path, None, questions_uri=str(questions))


def test_the_judgments_carry_the_questions_slice():
    questions = [{"question_id": "a", "category": "blog", "turns": ["글"], "slice": "seen"},
                 {"question_id": "b", "category": "blog", "turns": ["글"]}]
    answers = [{"question_id": q, "model_id": "m", "choices": [{"index": 0, "turns": ["답입니다"]}]} for q in "ab"]
    judgments = judge_offline(questions, answers)
    assert judgments[0]["slice"] == "seen" and "slice" not in judgments[1]


def _with_slice(row: RowJudgments, slice_: str, prefix: str) -> list[dict]:
    return [{**j, "question_id": f"{prefix}{j['question_id']}", "slice": slice_} for j in row.judgments]


def _three_slice_rows(seen_shift=3.0):
    """A challenger no better than the champion on the fixed and unseen questions, far better on the
    seen ones (the prompts it was trained on)."""
    fixed_c, fixed_b = make_row("tiny/self_guided", seed=1, arm="self_guided"), make_row("champion", "champion", seed=2)
    unseen_c = make_row("x", seed=3, cats=("poem", "news"), questions=6)
    unseen_b = make_row("x", seed=4, cats=("poem", "news"), questions=6)
    seen_c = make_row("x", seed=5, shift=seen_shift, cats=CATS, questions=10)
    seen_b = make_row("x", seed=6, cats=CATS, questions=10)
    challenger = RowJudgments("tiny/self_guided", "trained", fixed_c.judgments + _with_slice(unseen_c, "unseen", "u-")
                              + _with_slice(seen_c, "seen", "s-"), base_model="tiny", arm="self_guided",
                              judge=fixed_c.judge)
    champion = RowJudgments("champion", "champion", fixed_b.judgments + _with_slice(unseen_b, "unseen", "u-")
                            + _with_slice(seen_b, "seen", "s-"), judge=fixed_b.judge)
    return [challenger, champion]


def test_seen_questions_never_make_the_gate_promote_but_are_reported():
    rows = _three_slice_rows()
    evaluation = evaluate_run(rows, existing_champion="3")
    assert not evaluation.decision.promote
    gate_pair = evaluation.comparison.pairs[-1]
    assert gate_pair.n_questions == 60 + 12  # fixed + unseen; the 60 seen questions are not the gate's
    # the same judgments without their slices (as if the seen prompts were test questions): promoted
    unsliced = [RowJudgments(r.row, r.row_kind, [{k: v for k, v in j.items() if k != "slice"} for j in r.judgments],
                             base_model=r.base_model, arm=r.arm, judge=r.judge) for r in rows]
    assert evaluate_run(unsliced, existing_champion="3").decision.promote

    figures = slice_figures(rows, evaluation.challenger, "champion", min_category_questions=5)
    by_key = {f.key: f for f in figures}
    assert list(by_key) == ["fixed", "unseen", "seen", "gate"]
    assert [f.decides for f in figures] == [True, True, False, True]
    assert [by_key[k].n_questions for k in by_key] == [60, 12, 60, 72]
    assert by_key["seen"].difference.ci_low > 2.0  # the seen slice's flattering difference, reported
    assert by_key["gate"].difference.to_dict() == gate_pair.overall.estimate.to_dict()  # the gate's own figure
    assert by_key["fixed"].challenger.to_dict() == evaluate_run(
        [RowJudgments(r.row, r.row_kind, [j for j in r.judgments if "slice" not in j], base_model=r.base_model,
                      arm=r.arm, judge=r.judge) for r in rows], existing_champion="3").comparison.row(
        "tiny/self_guided").overall.to_dict()
    section = slices_section(figures, "tiny/self_guided", "champion")
    lines = section.markdown.splitlines()
    assert lines[0].startswith("The gate decided on fixed + unseen (72 questions compared). The seen slice "
                               "(60 questions")
    assert [line.split(" | ")[0] for line in lines[4:]] == [
        "| fixed test set", "| harvested, held out of every seed version (unseen)",
        "| harvested, in the training seed data (seen)", "| the gate's questions (fixed + unseen)"]
    assert "no, reported only" in lines[6] and "<table>" in section.html
    metrics = slice_metrics(figures)
    assert metrics["slice/seen/n_questions"] == 60.0 and metrics["slice/seen/difference_ci_low"] > 2.0
    assert {"slice/fixed/challenger", "slice/unseen/bar", "slice/gate/difference_ci_high"} <= set(metrics)


def test_replicates_without_a_paired_bar_show_the_challenger_alone():
    rows = _three_slice_rows()
    second = RowJudgments("tiny/self_guided#2", "trained", [{**j, "score": j["score"] - 0.5} for j in rows[0].judgments],
                          base_model="tiny", arm="self_guided", judge=rows[0].judge, replicate=1)
    challenger = evaluate_run([rows[0], second]).challenger
    assert challenger.rows == ["tiny/self_guided", "tiny/self_guided#2"]
    figures = slice_figures([rows[0], second], challenger, None, min_category_questions=5)
    seen = {f.key: f for f in figures}["seen"]
    alone = slice_figures([rows[0]], evaluate_run([rows[0]]).challenger, None, min_category_questions=5)
    assert seen.bar is None and seen.difference is None and seen.n_questions == 60
    assert seen.challenger.mean == pytest.approx({f.key: f for f in alone}["seen"].challenger.mean - 0.25, abs=0.01)
    assert "No paired bar in this run" in slices_section(figures, challenger.row, None).markdown


def _write(tmp_path, rows):
    written = []
    for r in rows:
        written.append(write_row(tmp_path, r.row.replace("/", "_"), r.judgments, row_kind=r.row_kind,
                                 base_model=r.base_model, arm=r.arm, model="3" if r.row_kind == "champion" else ""))
    return [s for s, _ in written], [j for _, j in written]


def test_the_compare_step_reports_the_slices_and_logs_them_and_without_them_nothing_changes(tmp_path):
    rows = _three_slice_rows()
    for r in rows:
        r.judge = "offline-heuristic/judge-single-v1"
    summaries, judgments = _write(tmp_path / "sliced", rows)
    out = tmp_path / "sliced"
    run_compare_step(summaries, judgments, str(out / "r.json"), str(out / "r.md"), str(out / "r.html"),
                     gate=PromotionGate())
    result = CompareResult.read(out / "r.json")
    assert not result.decision.promote
    assert [f.key for f in result.slices] == ["fixed", "unseen", "seen", "gate"]
    assert result.metrics["tiny/self_guided"]["slice/seen/n_questions"] == 60.0
    report = (out / "r.md").read_text(encoding="utf-8")
    assert "## Test-set slices\n\nThe gate decided on fixed + unseen" in report
    assert report.index("## Test-set slices") < report.index("## Promotion gate")
    assert "<h2>Test-set slices</h2>" in (out / "r.html").read_text(encoding="utf-8")

    plain = _write(tmp_path / "plain", [
        RowJudgments("tiny/self_guided", "trained", make_judgments(category_scores(6.0), spread=0.4, seed=1),
                     base_model="tiny", arm="self_guided"),
        RowJudgments("champion", "champion", make_judgments(category_scores(6.0), spread=0.4, seed=2))])
    out = tmp_path / "plain"
    run_compare_step(*plain, str(out / "r.json"), str(out / "r.md"), str(out / "r.html"), gate=PromotionGate())
    result = CompareResult.read(out / "r.json")
    assert result.slices == [] and "Test-set slices" not in (out / "r.md").read_text(encoding="utf-8")
    assert not any(name.startswith("slice/") for values in result.metrics.values() for name in values)


def test_run_refuses_a_bad_fresh_questions_file_in_one_line(tmp_path, capsys):
    from selfguided.pipelines.cli.main import main

    bad = tmp_path / "fresh.jsonl"
    bad.write_text(json.dumps({"question_id": "h1", "category": "poem", "turns": ["x"], "slice": "old"}), "utf-8")
    assert main(["run", "--workdir", str(tmp_path / "w"), "--fresh-questions", str(bad)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"selfguided run: --fresh-questions: {bad}:1: 'slice' must be one of unseen, seen, got 'old'"]
    assert not (tmp_path / "w").exists()  # refused before anything ran


def test_the_compiled_pipeline_takes_fresh_questions():
    import yaml

    compiled = next(yaml.safe_load_all((Path(__file__).parents[1] / "pipelines" / "selfguided_pipeline.yaml").read_text()))
    spec = compiled["root"]["inputDefinitions"]["parameters"]["fresh_questions_uri"]
    assert spec["defaultValue"] == "" and "slice" in spec["description"]
