"""The jury: three stand-in judges (fair, length-loving, noisy) on three local OpenAI-compatible
servers grade the same answers; agreement, judge noise, faults and circularity come out as the
shipped code computes them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from llm_server import FakeOpenAI

from selfguided.components.evaluation.agreement import (
    circularity_gaps,
    jury_agreement,
    krippendorff_alpha_interval,
    model_family,
    spearman,
)
from selfguided.components.evaluation.decision import GateDecision
from selfguided.components.evaluation.gate_rules import judge_agreement_rule
from selfguided.components.evaluation.report import judges_section
from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.judging.jury import JudgeSpec, JuryConfig, JuryUsage, judge_with_jury, parse_judges
from selfguided.components.llm.config import LLMConfig

pytestmark = pytest.mark.timeout(120)

CATEGORIES = ("blog", "poem", "news")
QUESTIONS = [{"question_id": f"{c}-{i}", "category": c, "turns": [f"{c} 글을 써 주세요 {i}"]}
             for c in CATEGORIES for i in range(6)]


def answers(model: str, quality_shift: int, seed: int) -> list[dict]:
    """Answers whose hidden true quality ("(품질 N)") and length are unrelated; `quality_shift`
    makes one row better in truth while the other writes longer answers."""
    rng = random.Random(seed)
    rows = []
    for q in QUESTIONS:
        quality = max(1, min(10, rng.randint(3, 7) + quality_shift))
        padding = "아주 긴 문장입니다. " * rng.randint(0 if quality_shift else 6, 4 if quality_shift else 10)
        rows.append({"question_id": q["question_id"], "model_id": model,
                     "choices": [{"index": 0, "turns": [f"답변입니다 (품질 {quality}). {padding}"]}]})
    return rows


@pytest.fixture()
def jury_servers():
    with FakeOpenAI(judge="fair") as fair, FakeOpenAI(judge="length") as long, \
            FakeOpenAI(judge="noisy", seed=3) as noisy:
        yield fair, long, noisy


def _jury(servers, tmp_path, **kw) -> JuryConfig:
    fair, long, noisy = servers
    judges = parse_judges(f"fair@{fair.base_url},long@{long.base_url},noisy@{noisy.base_url}")
    template = LLMConfig(progress=False, max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02,
                         prices={"fair": (1.0, 2.0), "long": (1.0, 2.0), "noisy": (3.0, 6.0)})
    return JuryConfig(judges, cache=str(tmp_path / "cache"), template=template, **kw)


def test_a_jury_of_fair_length_loving_and_noisy_judges_shows_their_disagreement(jury_servers, tmp_path):
    jury = _jury(jury_servers, tmp_path, repeats=3)
    rows = []
    for model, arm, shift, seed in (("better", "self_guided", 2, 1), ("longer", "unscored", 0, 2)):
        judgments, usage = judge_with_jury(QUESTIONS, answers(model, shift, seed), jury)
        assert usage.size == 3 and usage.identity.label == "jury-mean(fair,long,noisy)/judge-single-v1"
        assert JuryUsage.from_json(usage.to_json()) == usage  # its form in the judge summary round-trips
        rows.append(RowJudgments(f"tiny/{arm}", "trained", judgments, base_model="tiny", arm=arm, jury=usage))
    row = rows[0].judgments[0]
    assert row["jury"] == {"size": 3, "answered": 3, "aggregate": "mean"}
    assert {e["judge"]["model"] for e in row["judges"]} == {"fair", "long", "noisy"}
    # The jury's score is the mean of the judges' (each the mean of its repeats).
    per_judge = {}
    for entry in row["judges"]:
        per_judge.setdefault(entry["judge"]["model"], []).append(entry["scores"]["overall"])
    assert row["score"] == pytest.approx(sum(sum(v) / len(v) for v in per_judge.values()) / 3, abs=1e-3)
    # Repeats are real calls: the repeated sample (up to 10 per category, here all 6) three times.
    fair, long, noisy = jury_servers
    assert noisy.chat_requests == 2 * len(QUESTIONS) * 3

    agreement = jury_agreement(rows)
    assert agreement.overall_alpha < 0.4
    assert agreement.spearman["fair vs noisy"]["overall"] > 0.3
    assert agreement.spearman["fair vs long"]["overall"] < agreement.spearman["fair vs noisy"]["overall"]
    assert agreement.picks["fair"] == "tiny/self_guided" and agreement.picks["long"] == "tiny/unscored"
    noise = {n.judge: n for n in agreement.noise}
    assert noise["noisy"].judge_variance > 0.5 and noise["fair"].judge_variance == 0
    assert noise["noisy"].judge_share > noise["fair"].judge_share == 0
    text = judges_section(agreement).markdown
    assert "The judges disagree" in text and "would promote different rows" in text
    assert "fair vs long" in text and "share from the judge" in text
    passed = GateDecision(True, ["better on evidence"])
    assert not judge_agreement_rule(passed, agreement, 0.5).promote
    assert judge_agreement_rule(passed, agreement, 0.0).promote
    cost = agreement.cost
    assert cost["noisy"]["per_1000"] > cost["fair"]["per_1000"] > 0 and cost["jury"]["answers"] == 2 * len(QUESTIONS)
    assert cost["jury"]["cost_usd"] == pytest.approx(sum(cost[j]["cost_usd"] for j in ("fair", "long", "noisy")))
    metrics = agreement.metrics()["tiny/self_guided"]
    assert {"jury/fair/overall", "jury/noisy/blog/overall", "jury/alpha"} <= set(metrics)


def test_a_judge_that_fails_is_named_and_no_item_is_averaged_over_a_partial_jury(jury_servers, tmp_path):
    fair, long, noisy = jury_servers
    long.fail_rate = 1.0
    ask = answers("m", 0, 1)[:6]
    judgments, usage = judge_with_jury(QUESTIONS, ask, _jury(jury_servers, tmp_path))
    assert all(j["scores"] is None and "partial jury: 2 of 3 judges answered" in j["error"] and "long:" in j["error"]
               for j in judgments)
    assert [j.missing for j in usage.judges] == [0, 6, 0]
    judgments, usage = judge_with_jury(QUESTIONS, ask, _jury(jury_servers, tmp_path, min_judges=2))
    assert all(j["scores"] is not None and j["jury"]["answered"] == 2 for j in judgments)
    assert usage.partial_items == 6
    warnings = jury_agreement([RowJudgments("tiny/unscored", "trained", judgments, "tiny", "unscored",
                                            jury=usage)]).warnings()
    assert any("Judge long has no verdict for 6 item(s)" in w for w in warnings)


def test_judges_are_parsed_once_each_and_own_endpoints_get_their_own_key(monkeypatch, tmp_path):
    specs = parse_judges("gpt-4o, claude-sonnet@https://example.test/v1")
    assert specs == [JudgeSpec("gpt-4o"), JudgeSpec("claude-sonnet", "https://example.test/v1")]
    monkeypatch.setenv("OPENAI_API_KEY", "run-key")
    monkeypatch.setenv("SELFGUIDED_JUDGE_KEY_CLAUDE_SONNET", "claude-key")
    assert specs[1].api_key() == "claude-key"
    monkeypatch.delenv("SELFGUIDED_JUDGE_KEY_CLAUDE_SONNET")
    monkeypatch.setattr("selfguided.components.llm.config.OWN_ENDPOINT_KEYS_DIR", str(tmp_path))
    (tmp_path / "CLAUDE_SONNET").write_text("from-secret\n")
    assert specs[1].api_key() == "from-secret"
    (tmp_path / "CLAUDE_SONNET").unlink()
    assert specs[1].api_key() == "unused"  # never OPENAI_API_KEY on another endpoint
    assert parse_judges("", default="offline-heuristic") == [JudgeSpec("offline-heuristic")]
    for bad, message in (("a,a", "named twice"), ("a@ftp://x", "endpoint URL"), ("@http://x", "no model name")):
        with pytest.raises(ValueError, match=message):
            parse_judges(bad)
    with pytest.raises(ValueError, match="min_judges"):
        JuryConfig(specs, min_judges=3)


def test_krippendorffs_alpha_matches_the_reference_implementation_and_its_anchors():
    rng = random.Random(1)
    units = []
    for u in range(40):
        truth = rng.uniform(1, 10)
        values = [truth + rng.gauss(0, 2) for _ in range(3)]
        units.append(values[:2] if u % 5 == 0 else values)
    # The same data through `krippendorff` 0.9.0 (krippendorff.alpha, level "interval") gives 0.6036343412333165.
    assert krippendorff_alpha_interval(units) == pytest.approx(0.6036343412333165, abs=1e-12)
    assert krippendorff_alpha_interval([[3, 3, 3], [7, 7], [5, 5, 5]]) == 1.0
    # Judges that ignore the answers: alpha near 0, in a simulation with a fixed seed.
    ignoring = [[rng.uniform(1, 10) for _ in range(3)] for _ in range(3000)]
    assert abs(krippendorff_alpha_interval(ignoring)) < 0.03
    assert math.isnan(krippendorff_alpha_interval([[4]]))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def _row(arm: str, bias: float, rng: random.Random) -> RowJudgments:
    judgments = []
    for i in range(30):
        truth = rng.uniform(3, 8)
        entries = [{"judge": {"model": judge}, "scores": {"overall": truth + (bias if judge == "gpt-4o-mini" else 0.0)
                                                                      + rng.gauss(0, 0.3)}, "repeat": 0}
                   for judge in ("gpt-4o-mini", "claude-sonnet", "qwen-72b")]
        judgments.append({"question_id": i, "turn": 1, "category": "blog", "judges": entries, "score": truth,
                          "scores": {"overall": truth}})
    return RowJudgments(f"tiny/{arm}", "trained", judgments, "tiny", arm)


def test_the_circularity_gap_shows_a_judge_of_the_scorers_family_favouring_self_guided():
    rng = random.Random(7)
    rows = [_row("self_guided", 1.0, rng), _row("unscored", 0.0, rng)]
    assert model_family("gpt-4o-mini") == model_family("openai/gpt-4o") == "gpt"
    [gap] = circularity_gaps(rows, ["gpt-4o-mini", "claude-sonnet", "qwen-72b"], "gpt-4o")
    assert gap.judge == "gpt-4o-mini" and gap.pairs == 30
    assert gap.ci_low > 0.5 and gap.ci_low < 1.0 < gap.ci_high
    assert circularity_gaps(rows, ["gpt-4o-mini", "claude-sonnet"], "exaone-3.5") == []
    assert "Circularity" in judges_section(jury_agreement(rows, scoring_model="gpt-4o")).markdown


def test_a_single_judge_graded_repeatedly_scores_the_mean_of_its_repeats(tmp_path):
    with FakeOpenAI(judge="noisy", seed=11) as noisy:
        jury = JuryConfig(parse_judges(f"noisy@{noisy.base_url}"), repeats=3, cache=str(tmp_path / "c"),
                          template=LLMConfig(progress=False))
        judgments, usage = judge_with_jury(QUESTIONS[:6], answers("m", 0, 1)[:6], jury)
        again, _ = judge_with_jury(QUESTIONS[:6], answers("m", 0, 1)[:6], jury)
        assert noisy.chat_requests == 6 * 3  # the rerun is answered from the cache, repeats included
    assert usage.identity.label == "noisy/judge-single-v1"
    for row, cached in zip(judgments, again):
        draws = [e["scores"]["overall"] for e in row["judges"]]
        assert len(draws) == 3 and row["score"] == pytest.approx(sum(draws) / 3, abs=1e-3)
        assert cached["judges"] == row["judges"] and cached["score"] == row["score"]
    assert any(len({e["scores"]["overall"] for e in row["judges"]}) > 1 for row in judgments)


def test_every_judge_knows_who_it_is_what_it_measures_costs_and_how_mlflow_shows_it():
    """judging/judge.Judge: the offline stand-in, an LLM judge and juries of them answer for themselves."""
    from selfguided.components.judging.jury import JURY_SOURCE, Jury, judge_named, judge_of
    from selfguided.components.judging.llm_judge import LLMJudge
    from selfguided.components.judging.offline import OFFLINE_JUDGE, OfflineJudge

    offline, llm = judge_named("offline-heuristic"), judge_named("gpt-4o@http://judge-host:8000/v1")
    assert isinstance(offline, OfflineJudge) and isinstance(llm, LLMJudge)
    assert (offline.label, llm.label) == ("offline-heuristic/heuristic-v1", "gpt-4o/judge-single-v1")
    assert llm.endpoint == "http://judge-host:8000/v1"
    assert not offline.measures_quality and llm.measures_quality and not llm.disclaimer
    assert "does not measure quality" in offline.disclaimer
    assert (offline.calls_llm, llm.calls_llm) == (False, True)
    assert offline.mlflow_source == ("CODE", "offline-heuristic") and llm.mlflow_source == ("LLM_JUDGE", "gpt-4o")
    usage = {"llm/judge/cost_usd": 0.25}
    assert (offline.cost_usd(usage), llm.cost_usd(usage)) == (0.0, 0.25)
    assert isinstance(judge_of(OFFLINE_JUDGE), OfflineJudge) and isinstance(judge_of(llm.identity), LLMJudge)
    with pytest.raises(ValueError, match="no endpoint configuration"):
        judge_of(llm.identity).grade([], [])
    one, mixed = Jury([offline]), Jury([llm, offline, judge_named("claude-sonnet")], "median")
    assert one.identity == OFFLINE_JUDGE and one.mlflow_source == offline.mlflow_source  # a jury of one is its judge
    assert mixed.label == "jury-median(claude-sonnet,gpt-4o,offline-heuristic)/heuristic-v1+judge-single-v1-v0"
    assert not mixed.measures_quality and mixed.calls_llm and mixed.disclaimer == offline.disclaimer
    assert mixed.mlflow_source == ("CODE", JURY_SOURCE)


def test_no_code_outside_the_offline_judge_compares_a_judge_name():
    """The offline judge's name is compared in its own class only (OfflineJudge.of); everyone else asks the
    judge (measures_quality, calls_llm, disclaimer, mlflow_source)."""
    import re

    root = Path(__file__).resolve().parents[1]
    compared = re.compile(r"(==|!=|\bin\b|startswith\()\s*\(?\s*OFFLINE_JUDGE_NAME|OFFLINE_JUDGE_NAME\s*(==|!=|\bin\b)"
                          r"|[\"']offline-heuristic[\"']\s*(==|!=|\bin\b)|(==|!=)\s*[\"']offline-heuristic[\"']"
                          r"|startswith\(\s*[\"']jury\(")
    found = [f"{path.relative_to(root)}:{n}" for folder in ("components", "pipelines") for path in (root / folder).rglob("*.py")
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if compared.search(line) and path.name != "offline.py"]
    assert not found
    offline = (root / "components/judging/offline.py").read_text(encoding="utf-8")
    assert len(compared.findall(offline)) == 1  # OfflineJudge.of, the one place
