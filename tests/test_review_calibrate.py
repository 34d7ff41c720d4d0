"""People check the judge in MLflow: `selfguided review` (blind stratified sample), HUMAN feedback
logged as an editor would, `selfguided calibrate` (judge-human agreement), and the reviewer's
permissions on a real basic-auth MLflow server.

The judges are simulated with a hidden truth per answer: `fair` = truth + small noise, `long`
rewards length (weakly related to quality), `noisy` = truth + large noise; the "editors" grade
truth + their own noise, in whole points. The fair judge must come out closest.
"""

from __future__ import annotations

import random

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource
from mlflow.exceptions import MlflowException

from selfguided.components.judging.calibration import JURY, LabelledItem, _kappa, calibrate, calibration_markdown
from selfguided.components.registry.review import REVIEW_COPY_TAG, REVIEW_SAMPLE_TAG, create_review_sample, read_labels
from selfguided.components.registry.traces import log_judged_traces
from selfguided.pipelines.cli.main import main

CRITERIA = ("helpfulness", "relevance", "accuracy", "detail")
CATEGORIES = ("poem", "news", "blog")
ROWS = ("tiny/unscored", "tiny/self_guided")


def _panel(truth: float, length: float, rng: random.Random) -> dict[str, float]:
    """The three judges' overall scores of one answer with hidden quality `truth` and `length` in [0, 1]."""
    clip = lambda v: float(min(10.0, max(1.0, v)))  # noqa: E731
    return {"fair": clip(truth + rng.gauss(0, 0.5)),
            "long": clip(3.0 + 6.0 * length + 0.2 * (truth - 5.5) + rng.gauss(0, 0.5)),
            "noisy": clip(truth + rng.gauss(0, 2.5))}


def _editor(truth: float, rng: random.Random) -> int:
    return int(min(10, max(1, round(truth + rng.gauss(0, 0.8)))))


def _simulated_items(n: int, rng: random.Random) -> list[LabelledItem]:
    items = []
    for i in range(n):
        truth, length = rng.uniform(2, 9), rng.random()
        judges = _panel(truth, length, rng)
        items.append(LabelledItem(f"t{i}", CATEGORIES[i % 3], float(_editor(truth, rng)), judges,
                                  jury=sum(judges.values()) / 3))
    return items


def test_quadratic_kappa_is_scikit_learns():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.integers(1, 11, 30), rng.integers(1, 11, 30)
        b[:15] = a[:15]
        expected = cohen_kappa_score(a, b, labels=list(range(1, 11)), weights="quadratic")
        assert _kappa(a.astype(float), b.astype(float)) == pytest.approx(expected, abs=1e-12)
    assert _kappa(np.full(5, 7.0), np.full(5, 7.0)) is None  # undefined, not 1 or 0


def test_simulated_editors_name_the_fair_judge_and_the_length_bias():
    """Known truth in, rates out: 30 simulated review rounds of 40 labelled answers each."""
    rng = random.Random(11)
    closest, long_biased, noisy_below_fair = 0, 0, 0
    for _ in range(30):
        result = calibrate(_simulated_items(40, rng), min_labels=100, n_resamples=100, seed=1)
        by = {a.judge: a for a in result.overall}
        closest += result.closest == "fair"
        long_biased += by["long"].intervals["mad"][0] > by["fair"].intervals["mad"][1]
        noisy_below_fair += by["noisy"].estimates["spearman"] < by["fair"].estimates["spearman"]
        assert JURY in by and result.closest != JURY
    assert closest == 30 and noisy_below_fair == 30
    assert long_biased >= 27  # the length-rewarding judge is credibly further from the editors


def _judged_rows(rng: random.Random, truths: dict, category: str, row: str) -> list[dict]:
    rows = []
    for q in range(12):
        qid = f"{category}-{q}"
        truth, length = rng.uniform(2, 9), rng.random()
        judges = _panel(truth, length, rng)
        truths[(row, qid)] = truth
        rows.append({
            "question_id": qid, "turn": 1, "category": category, "model": row, "question": f"{category} 글 {q}",
            "answer": "가" * int(50 + 400 * length), "score": sum(judges.values()) / 3,
            "scores": dict.fromkeys(CRITERIA, sum(judges.values()) / 3),
            "judges": [{"judge": {"model": name, "prompt": "judge-single", "prompt_version": "1",
                                  "mode": "single"}, "scores": {**dict.fromkeys(CRITERIA, v), "overall": v},
                        "rationale": f"{name}: {v:.1f}", "error": None, "repeat": 0} for name, v in judges.items()],
            "jury": {"size": 3, "answered": 3, "aggregate": "mean"}})
    return rows


@pytest.fixture(scope="module")
def judged_store(tmp_path_factory):
    """A store with 72 judged answers (3 categories x 2 rows x 12 questions), each a trace with a
    jury of three, and the hidden truth of each answer."""
    tmp_path = tmp_path_factory.mktemp("judged")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("selfguided", artifact_location=(tmp_path / "artifacts").as_uri())
    rng, truths, by_trace = random.Random(5), {}, {}
    for row in ROWS:
        rows = [r for c in CATEGORIES for r in _judged_rows(rng, truths, c, row)]
        with mlflow.start_run(experiment_id=experiment_id, run_name=row) as run:
            ids = log_judged_traces(rows, run_id=run.info.run_id, tags={"row": row, "row_kind": "trained",
                                                                         "pipeline_run": "p1"})
        by_trace.update({tid: truths[(row, r["question_id"])] for tid, r in zip(ids, rows)})
    mlflow.flush_trace_async_logging()
    mlflow.set_tracking_uri(None)
    return uri, experiment_id, by_trace


def _human(trace_id: str, value, who: str = "editor-kim") -> None:
    mlflow.log_feedback(trace_id=trace_id, name="score", value=value,
                        source=AssessmentSource(source_type="HUMAN", source_id=who))


def test_review_then_human_feedback_then_calibrate(judged_store, capsys, tmp_path):
    uri, experiment_id, truth = judged_store
    mlflow.set_tracking_uri(uri)
    assert main(["review", "--sample", "30", "--tracking-uri", uri, "--reviewers", "editor-kim"]) == 0
    printed = capsys.readouterr().out
    sample_id = printed.split("Review sample ", 1)[1].split(":", 1)[0]
    assert "5  poem / tiny/unscored" in printed and "5  news / tiny/self_guided" in printed  # 6 strata x 5
    assert "/review-queue" in printed and "/traces" in printed and "name='score'" in printed
    assert "mlflow ui --backend-store-uri" in printed  # a SQLite store: say how to open the UI

    originals = mlflow.search_traces(locations=[experiment_id], filter_string=f"tag.{REVIEW_SAMPLE_TAG} = '{sample_id}'",
                                     return_type="list")
    assert len(originals) == 30
    copies = {t.info.tags[REVIEW_COPY_TAG]: t for t in originals}
    review_id = MlflowClient(uri).get_experiment_by_name("selfguided-review").experiment_id
    blind = mlflow.search_traces(locations=[review_id], return_type="list")
    assert {t.info.trace_id for t in blind} == set(copies)
    for copy in blind:  # the editors' view: the conversation and the answer, nothing else
        original = copies[copy.info.trace_id]
        assert copy.info.assessments == [] and copy.info.request_metadata.get("mlflow.sourceRun") is None
        assert not {"row", "row_kind", "model", "question_id", "category"} & set(copy.info.tags)
        assert copy.data.spans[0].inputs == original.data.spans[0].inputs
        assert copy.data.spans[0].outputs == original.data.spans[0].outputs
    from mlflow.genai import review_queues

    [queue] = review_queues.list_review_queues(experiment_id=review_id)
    assert queue.name == f"sample {sample_id}" and queue.users == ["editor-kim"]
    assert len(review_queues.list_review_queue_items(queue.queue_id)) == 30

    rng = random.Random(9)
    copy_ids = sorted(copies)
    for copy_id in copy_ids:
        _human(copy_id, _editor(truth[copies[copy_id].info.trace_id], rng))
    _human(copy_ids[0], 11, who="editor-lee")              # outside 1-10: ignored, the other label counts
    _human(copy_ids[1], "good", who="editor-lee")          # not a number
    _human(originals[0].info.trace_id, 6)                  # on the judged trace itself, not a review copy
    with mlflow.start_span("stray", trace_destination=__import__(
            "mlflow.entities.trace_location", fromlist=["x"]).MlflowExperimentLocation(review_id)) as stray:
        pass
    mlflow.flush_trace_async_logging()
    _human(stray.trace_id, 5)                              # a trace in the review experiment outside any sample

    assert main(["calibrate", "--tracking-uri", uri, "--review-sample", sample_id, "--min-labels", "10"]) == 0
    report = capsys.readouterr().out
    assert "**Closest to the editors: fair**" in report
    assert "30 labelled answers" in report
    assert "Human labels ignored: 1 not a number, 2 on a trace that is not in a review sample, 1 outside 1-10" in report
    for name in ("| fair | 30 |", "| long | 30 |", "| noisy | 30 |", "| jury | 30 |", "### poem", "### news"):
        assert name in report

    items, ignored = read_labels(uri, "selfguided", sample_id=sample_id)
    assert ignored == {"not a number": 1, "outside 1-10": 1, "on a trace that is not in a review sample": 2}
    assert sorted(items[0].judges) == ["fair", "long", "noisy"] and items[0].jury is not None

    # The next pipeline run's compare step reports the same agreement in its evidence report.
    from registry_fixtures import category_scores, make_judgments, write_row

    from selfguided.components.evaluation.decision import PromotionGate
    from selfguided.components.steps.compare import run_compare_step

    written = [write_row(tmp_path, arm, make_judgments(category_scores(score), spread=0.4, seed=i), arm=arm)
               for i, (arm, score) in enumerate((("unscored", 5.0), ("self_guided", 6.0)))]
    run_compare_step([s for s, _ in written], [j for _, j in written], str(tmp_path / "r.json"),
                     str(tmp_path / "r.md"), str(tmp_path / "r.html"), gate=PromotionGate(), tracking_uri=uri,
                     experiment_name="selfguided")
    evidence = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "## Judges against the editors (HUMAN scores)" in evidence and "Closest to the editors: fair" in evidence

    # A second sample takes only answers not reviewed before.
    second = create_review_sample(uri, "selfguided", 100, seed=1)
    assert len(second.copies) == 72 - 30 and not set(second.copies) & {t.info.trace_id for t in originals}


def test_calibrate_without_labels_says_what_to_do(judged_store, tmp_path, capsys):
    uri, _, _ = judged_store
    MlflowClient(uri).create_experiment("not-reviewed", artifact_location=(tmp_path / "a").as_uri())
    assert main(["calibrate", "--tracking-uri", uri, "--experiment", "not-reviewed"]) == 0
    assert "No labelled answers yet: run `selfguided review --sample N`" in capsys.readouterr().out
    # a sample that was never made is named as such, not mistaken for one without labels
    assert main(["calibrate", "--tracking-uri", uri, "--review-sample", "never-made"]) == 2
    assert "no such review sample 'never-made'" in capsys.readouterr().err


def test_review_of_an_empty_experiment_is_a_clear_error(judged_store, tmp_path, capsys):
    uri, _, _ = judged_store
    MlflowClient(uri).create_experiment("nothing-judged", artifact_location=(tmp_path / "a").as_uri())
    assert main(["review", "--sample", "5", "--tracking-uri", uri, "--experiment", "nothing-judged"]) == 2
    assert "no judged answers left to review in experiment 'nothing-judged'" in capsys.readouterr().err


def test_markdown_marks_small_categories_and_missing_values():
    items = [LabelledItem(f"i{k}", "poem" if k < 12 else "news", float(1 + k % 9), {"a": float(1 + k % 9), "b": 5.0})
             for k in range(15)]
    result = calibrate(items, min_labels=10, n_resamples=100)
    text = calibration_markdown(result, min_labels=10)
    assert "### poem" in text and "### news" not in text and "news (3)" in text
    assert "| b | 15 | - |" in text  # a constant judge has no rank correlation: "-", never a number
    assert result.closest == "a" and result.closest_share == 1.0


# --- On a real basic-auth MLflow server: the reviewer may grade the blind copies, nothing more -------------------

from test_mlflow_auth import (  # noqa: E402  the same server, users and registered model as the auth tests
    EXPERIMENT, MODEL, User, _as, _auth_client, _no_inherited_credentials, _password, auth_server, pipeline_user,
    registered)

__all__ = ["_no_inherited_credentials", "auth_server", "pipeline_user", "registered"]  # fixtures in use here


@pytest.mark.slow
def test_a_reviewer_grades_the_blind_copies_but_cannot_move_an_alias(auth_server, registered, pipeline_user,
                                                                       monkeypatch, tmp_path):
    """What MLflow's permission model can say: EDIT on the review experiment (a per-experiment grant;
    sub-resource grants such as `assessment` are wildcard-only, so "feedback only, in this
    experiment" is not expressible), DENY on the judged experiment (blind for real: no judge scores,
    no rows), READ (the default) on the registered model."""
    from selfguided.components.evaluation.rows import RowJudgments
    from selfguided.components.registry.traces import log_row_traces

    admin = User(auth_server.admin_username, auth_server.admin_password)
    _as(monkeypatch, pipeline_user)  # the register step's user logs the traces and registers the prompts
    mlflow.set_tracking_uri(auth_server.tracking_uri)
    client = MlflowClient(auth_server.tracking_uri, registry_uri=auth_server.tracking_uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    rng, truths = random.Random(2), {}
    judged = RowJudgments("tiny/self_guided", "trained", _judged_rows(rng, truths, "poem", "tiny/self_guided")[:4])
    with mlflow.start_run(experiment_id=experiment_id, tags={"row": "tiny/self_guided", "row_kind": "trained"}) as run:
        assert log_row_traces(judged) == 4
    mlflow.flush_trace_async_logging()
    judged = mlflow.search_traces(locations=[experiment_id], run_id=run.info.run_id, return_type="list")[0].info.trace_id
    assert client.get_run(run.info.run_id).data.tags["prompt/judge-single-v1"] == "prompts:/selfguided-judge-single/1"
    _as(monkeypatch, admin)
    sample = create_review_sample(auth_server.tracking_uri, EXPERIMENT, 4, seed=0)
    assert sample.queue_id and len(sample.copies) == 4

    reviewer = User("editor-park", _password())
    auth = _auth_client(auth_server, monkeypatch)
    auth.create_user(reviewer.username, reviewer.password)
    auth.grant_user_permission(reviewer.username, "experiment", sample.review_experiment_id, "EDIT")
    auth.grant_user_permission(reviewer.username, "experiment", experiment_id, "DENY")

    _as(monkeypatch, reviewer)
    copy = sample.copies[judged] if judged in sample.copies else next(iter(sample.copies.values()))
    _human(copy, 8, who=reviewer.username)                          # the reviewer's job: allowed
    assert [a.feedback.value for a in mlflow.get_trace(copy).info.assessments] == [8]
    with pytest.raises(MlflowException, match="403"):               # the judge's scores stay hidden
        mlflow.search_traces(locations=[experiment_id], return_type="list")
    with pytest.raises(MlflowException, match="403"):               # and cannot be graded unblinded
        _human(judged, 3, who=reviewer.username)
    with pytest.raises(MlflowException, match="403"):               # the registry is not the reviewer's
        client.set_registered_model_alias(MODEL, "champion", registered.version)

    _as(monkeypatch, admin)
    assert client.get_model_version_by_alias(MODEL, "champion").version == registered.version
    items, ignored = read_labels(auth_server.tracking_uri, EXPERIMENT)
    assert [(item.human, item.row) for item in items] == [(8.0, "tiny/self_guided")] and not ignored


def test_a_small_sample_covers_every_category_and_every_row():
    from types import SimpleNamespace

    from selfguided.components.registry.review import pick_stratified

    categories = ("blog", "cover_letter", "news", "novel", "poem", "scenario")
    rows = ("base/tiny", "tiny/control", "tiny/self_guided", "tiny/unscored")
    traces = [SimpleNamespace(info=SimpleNamespace(trace_id=f"{c}-{r}-{q}", tags={"category": c, "row": r}))
              for c in categories for r in rows for q in range(7)]
    picked = pick_stratified(traces, 12, seed=3)
    from collections import Counter

    assert Counter(t.info.tags["category"] for t in picked) == dict.fromkeys(categories, 2)
    assert Counter(t.info.tags["row"] for t in picked) == dict.fromkeys(rows, 3)
    assert len({t.info.trace_id for t in pick_stratified(traces, 500, seed=3)}) == len(traces)  # all, once each
    assert [t.info.trace_id for t in pick_stratified(traces, 12, seed=3)] == [t.info.trace_id for t in picked]
