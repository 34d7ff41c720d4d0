"""The compare step's decisions on the rows a run produced (the statistics are test_compare.py's)."""

from pathlib import Path

import pytest
from registry_fixtures import category_scores, make_judgments, write_row

from selfguided.components.data.jsonl import DataError
from selfguided.components.evaluation.compare_result import CompareResult
from selfguided.components.evaluation.decision import PromotionGate
from selfguided.components.evaluation.gate import pick_challenger
from selfguided.components.evaluation.judge_summary import load_row
from selfguided.components.steps.compare import run_compare_step


def compare_step(summary_files, judgment_files, *, gate=PromotionGate(), folder=None, **options) -> CompareResult:
    """The compare step as the pipeline runs it, its result read back from its file (what register reads)."""
    folder = folder or Path(summary_files[0]).parent
    returned = run_compare_step(summary_files, judgment_files, str(folder / "r.json"), str(folder / "r.md"),
                                str(folder / "r.html"), gate=gate, **options)
    result = CompareResult.read(folder / "r.json")
    assert result.to_json() == returned.to_json()  # the file holds everything the step decided
    return result


def rows(tmp_path, **scores):
    """Trained rows of the given arms with the given scores, plus a champion summary (see callers)."""
    return {arm: write_row(tmp_path, arm, make_judgments(category_scores(score), spread=0.4, seed=i), arm=arm)
            for i, (arm, score) in enumerate(scores.items())}


def files(written):
    return [s for s, _ in written], [j for _, j in written]


def test_control_is_a_yardstick_and_never_the_challenger(tmp_path):
    written = rows(tmp_path, unscored=5.0, self_guided=5.5, control=8.0)
    result = compare_step(*files(written.values()))
    assert result.challenger.arm == "self_guided"


def test_a_champion_that_could_not_be_evaluated_is_never_replaced_on_no_evidence(tmp_path):
    written = list(rows(tmp_path, unscored=5.0, self_guided=7.0).values())
    written.append(write_row(tmp_path, "champion", [], row_kind="champion", base_model="", model="3",
                             note="champion v3 could not be re-evaluated: OSError: disk full"))
    result = compare_step(*files(written))
    assert not result.decision.promote and result.champion_version == "3"
    assert result.decision.reasons[0].startswith("champion v3 exists but could not be re-evaluated")
    assert result.notes == ["champion/v3: champion v3 could not be re-evaluated: OSError: disk full"]


def test_a_champion_that_could_not_be_evaluated_is_compared_with_its_logged_metrics(tmp_path):
    """The champion's fallback travels reference -> judge summary -> compare, typed, to the gate."""
    from selfguided.components.evaluation.judge_summary import ChampionFallback

    written = list(rows(tmp_path, unscored=5.0, self_guided=7.0).values())
    logged = {"judge/overall": 5.0, "judge/overall_ci_low": 4.8, "judge/overall_ci_high": 5.2}
    fallback = ChampionFallback(logged, "offline-heuristic/heuristic-v1")
    written.append(write_row(tmp_path, "champion", [], row_kind="champion", base_model="", model="3",
                             note="champion v3 could not be re-evaluated", fallback=fallback))
    result = compare_step(*files(written))
    assert result.decision.figures["mode"] == "fallback_unpaired" and result.decision.promote
    written[-1] = write_row(tmp_path, "champion", [], row_kind="champion", base_model="", model="3", note="x",
                            fallback=ChampionFallback(logged, "gpt-4o/judge-single-v1"))
    assert "not comparable" in compare_step(*files(written)).decision.reasons[1]


def test_the_champion_row_is_compared_pair_by_pair(tmp_path):
    written = list(rows(tmp_path, unscored=5.0, self_guided=7.0).values())
    written.append(write_row(tmp_path, "champion", make_judgments(category_scores(5.0), spread=0.4, seed=9),
                             row_kind="champion", base_model="", model="3"))
    summary = tmp_path / "r.json"
    result = compare_step(*files(written), folder=summary.parent)
    assert result.decision.promote and result.champion_version == "3"
    assert "overall paired difference +" in result.decision.reasons[0]
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "challenger vs champion" in report
    assert report.splitlines()[2] == ("> `offline-heuristic` is a deterministic stand-in for runs without an LLM "
                                      "endpoint: it exercises every step, it does not measure quality.")
    assert report.count("does not measure quality") == 1  # said once, whatever the number of rows
    assert "a deterministic stand-in" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "## Judges\n\nOne judge (offline-heuristic): no agreement to measure" in report


def test_an_llm_judge_needs_no_disclaimer(tmp_path):
    written = [write_row(tmp_path, arm, make_judgments(category_scores(score), spread=0.4, seed=i), arm=arm,
                         judge_model="gpt-4o") for i, (arm, score) in enumerate([("unscored", 5.0), ("self_guided", 6.0)])]
    result = compare_step(*files(written))
    assert {r.judge for r in result.rows} == {"gpt-4o/judge-single-v1"}
    assert "does not measure quality" not in (tmp_path / "r.md").read_text(encoding="utf-8")


def test_judgments_paired_with_the_wrong_summary_are_refused(tmp_path):
    written = rows(tmp_path, unscored=5.0, self_guided=6.0)
    (s1, j1), (s2, j2) = written.values()
    import json

    for path, model in ((j1, "tiny/unscored"), (j2, "tiny/self_guided")):  # as the judge step names them
        lines = [dict(json.loads(line), model=model) for line in path.read_text(encoding="utf-8").splitlines()]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    for path, model in ((s1, "tiny/unscored"), (s2, "tiny/self_guided")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**summary, "answer_model": model}), encoding="utf-8")
    with pytest.raises(DataError, match="paired with the summary of 'tiny/unscored'"):
        compare_step([s1, s2], [j2, j1])
    assert compare_step([s1, s2], [j1, j2]).challenger.arm == "self_guided"


def test_no_candidate_arm_is_a_clear_error(tmp_path):
    (summary, judgments), = rows(tmp_path, control=5.0).values()
    with pytest.raises(ValueError, match="no trained row of the arms unscored, self_guided"):
        pick_challenger([load_row(summary, judgments)[1]], [])
    with pytest.raises(ValueError, match="no trained row of the arms unscored, self_guided"):
        compare_step([str(summary)], [str(judgments)])


def layout_judgments(score, layout, seed):
    """make_judgments with `layout[c]` questions in category c (the others left out)."""
    rows = make_judgments(category_scores(score), n=max(layout.values()), spread=1.0, seed=seed)
    return [j for j in rows if j["category"] in layout and int(j["question_id"].rsplit("-", 1)[1]) < layout[j["category"]]]


def test_the_pipelines_default_eval_fraction_on_the_bundled_seed_completes_and_decides(tmp_path):
    """eval_fraction 0.1 on the bundled seed leaves 14/14 held-out questions and 1 per trained category:
    compare crashed on the 1-question categories (issue 18); now they show a mean and do not vote."""
    layout = {"cover_letter": 14, "poem": 14, "blog": 1, "novel": 1, "scenario": 1}
    written = [write_row(tmp_path, arm, layout_judgments(score, layout, i), arm=arm)
               for i, (arm, score) in enumerate([("unscored", 5.0), ("self_guided", 7.0)])]
    written.append(write_row(tmp_path, "base", layout_judgments(3.0, layout, 9), row_kind="base"))
    result = compare_step(*files(written))
    assert result.decision.promote, result.decision.reasons
    assert result.decision.figures["mode"] == "first_champion"
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "(n=1: too few for an interval)" in report and "± 0.00" not in report
    assert "do not vote" in report and "## Power" in report


def test_a_trained_row_worse_than_the_base_is_never_the_first_champion(tmp_path):
    written = list(rows(tmp_path, unscored=3.0, self_guided=3.3).values())
    written.append(write_row(tmp_path, "base", make_judgments(category_scores(6.9), spread=0.4, seed=7),
                             row_kind="base"))
    result = compare_step(*files(written))
    assert not result.decision.promote
    assert result.decision.reasons[0].startswith("no champion yet: the first champion must beat its untuned base")


def test_training_seed_replicates_are_one_arm_with_their_seed_spread_in_the_report(tmp_path):
    """--replicates 2: the judge step names replicate 1 `<row>#1` and records `replicate` in its summary."""
    written = list(rows(tmp_path, unscored=5.0, self_guided=6.5).values())
    second = write_row(tmp_path / "r1", "self_guided", make_judgments(category_scores(6.2), spread=0.4, seed=5),
                       arm="self_guided", replicate=1)
    written += [second, write_row(tmp_path, "base", make_judgments(category_scores(3.0), spread=0.4, seed=8),
                                  row_kind="base")]
    result = compare_step(*files(written), folder=tmp_path)
    assert result.challenger.rows == ["tiny/self_guided", "tiny/self_guided#1"]
    assert result.challenger.row == "tiny/self_guided"  # the better seed is the one registered
    assert [r.replicate for r in result.rows] == [0, 0, 1, 0]
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "SE questions / seeds" in report and "(2 seeds)" in report
    assert "2 training seeds averaged" in result.decision.reasons[1]


def _jury_rows(tmp_path, agree: bool):
    """The base and two trained rows graded by a jury of three (entries as judging/jury.py writes them): judges that
    agree (each the truth plus a little noise) or that mostly do not (noise of 3 points each): the jury's
    mean still shows the better arm."""
    import random

    from selfguided.components.data.jsonl import write_jsonl
    from selfguided.components.evaluation.judge_summary import JudgeSummary
    from selfguided.components.judging.jury import JudgeUsage, JuryUsage, jury_identity
    from selfguided.components.judging.llm_judge import single_identity
    from selfguided.components.model.prompting import CRITERIA

    rng = random.Random(3)
    members = [single_identity(name) for name in ("gpt-4o-mini", "claude-sonnet", "qwen-72b")]
    jury = JuryUsage(jury_identity(members), "mean", 3, 1, 0.0, [JudgeUsage(m, items=60) for m in members])
    written = []
    for kind, arm, shift in (("base", "", -2.0), ("trained", "unscored", 0.0), ("trained", "self_guided", 2.0)):
        judgments = []
        for category in ("blog", "news"):
            for q in range(30):
                truth = 4.0 + shift + (q % 5) * 0.5
                draws = [min(10.0, max(1.0, truth + rng.gauss(0, 0.2 if agree else 3.0))) for _ in members]
                entries = [{"judge": m.to_json(), "scores": {**dict.fromkeys(CRITERIA, d), "overall": d},
                            "rationale": "", "error": None, "repeat": 0} for m, d in zip(members, draws)]
                score = round(sum(draws) / 3, 3)
                judgments.append({"question_id": f"{category}-{q}", "turn": 1, "category": category, "seen": True,
                                  "model": f"{kind}/{arm}", "judge": jury.identity.to_json(), "score": score,
                                  "scores": dict.fromkeys(CRITERIA, score), "judges": entries, "error": None,
                                  "jury": {"size": 3, "answered": 3, "aggregate": "mean"}})
        summary = JudgeSummary.of_judgments(judgments, jury, row_kind=kind, base_model="tiny", arm=arm)
        write_jsonl(tmp_path / f"{kind}{arm}.jsonl", judgments)
        written.append((summary.write(tmp_path / f"{kind}{arm}.json"), tmp_path / f"{kind}{arm}.jsonl"))
    return files(written)


@pytest.mark.parametrize("agree", [True, False])
def test_the_jurys_agreement_is_a_rule_of_the_gate_with_its_reason_in_the_decision(tmp_path, agree):
    """--min-judge-agreement: the gate refuses a challenger the judges do not agree on, reason first;
    the same rows with judges that agree promote. Nothing edits the decision after the gate."""
    result = compare_step(*_jury_rows(tmp_path, agree), gate=PromotionGate(min_paired_questions=10),
                         min_judge_agreement=0.5, scoring_model="gpt-4o")
    alpha = result.judges.overall_alpha
    assert result.decision.figures["judge_alpha"] == pytest.approx(alpha)
    assert set(result.decision.figures["judges"]) == {"gpt-4o-mini", "claude-sonnet", "qwen-72b"}
    assert "jury/claude-sonnet/blog/overall" in result.metrics["tiny/self_guided"]
    assert "jury/alpha" in result.metrics["tiny/unscored"]
    if agree:
        assert alpha > 0.5 and result.decision.promote, result.decision.reasons
    else:
        assert alpha < 0.5 and not result.decision.promote
        assert result.decision.reasons[0].startswith("the judges agree too little to promote on their verdict: "
                                                     f"Krippendorff's alpha {alpha:.2f} < --min-judge-agreement 0.5")
        assert any(r.startswith("The judges disagree") for r in result.decision.reasons)
    report = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "## Judges" in report and "Krippendorff's alpha, interval" in report
    assert "Circularity" in report  # gpt-4o-mini is of the scorer's (gpt-4o) family


def test_one_judge_and_min_judge_agreement_says_it_was_not_checked(tmp_path):
    written = list(rows(tmp_path, unscored=5.0, self_guided=7.0).values())
    written.append(write_row(tmp_path, "base", make_judgments(category_scores(3.0), spread=0.4, seed=8), row_kind="base"))
    result = compare_step(*files(written), gate=PromotionGate(min_paired_questions=5), min_judge_agreement=0.5)
    assert result.decision.promote
    assert any("--min-judge-agreement 0.5 was not checked" in r and "had 1 (offline-heuristic)" in r
               for r in result.decision.reasons)
