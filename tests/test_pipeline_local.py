"""The whole pipeline, run locally with kfp.local on the `tiny` model, twice: read back from MLflow."""

import pytest
from mlflow import MlflowClient

from selfguided.components.data.categories import CATEGORIES
from selfguided.pipelines.local import run_local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as env:  # the embedded defaults, whatever the shell has set
        for name in ("MLFLOW_TRACKING_URI", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
            env.delenv(name, raising=False)
        return run_local(workdir)


def test_every_model_version_has_scores_for_all_six_categories(local_run):
    client = MlflowClient(tracking_uri=local_run.tracking_uri)
    versions = client.search_model_versions(f"name = '{local_run.registered_model_name}'")
    assert {(v.tags["base_model"], v.tags["arm"]) for v in versions} == {
        ("tiny", "unscored"), ("tiny", "self_guided"), ("tiny", "control")}
    for version in versions:
        assert len(version.tags["train_data_sha256"]) == 64 and version.tags["pipeline_run"] == local_run.run_name
        metrics = client.get_run(version.run_id).data.metrics
        for category in CATEGORIES:
            for criterion in ("helpfulness", "relevance", "accuracy", "detail", "overall"):
                assert 1.0 <= metrics[f"judge/{category}/{criterion}"] <= 10.0
        assert "judge/overall" in metrics


def test_every_row_is_a_run_of_the_pipeline_run_with_its_evidence(local_run):
    client = MlflowClient(tracking_uri=local_run.tracking_uri)
    experiment = client.get_experiment_by_name("selfguided").experiment_id
    runs = client.search_runs([experiment], f"tags.pipeline_run = '{local_run.run_name}'")
    rows = {r.data.tags.get("row"): r for r in runs if r.data.tags.get("row_kind") != "pipeline"}
    assert set(rows) == {"tiny/unscored", "tiny/self_guided", "tiny/control", "base/tiny", "champion"}
    guided = rows["tiny/self_guided"].data.metrics
    # A category with fewer than 5 questions has its mean and no interval (blog, novel, scenario here).
    with_interval = [c for c in CATEGORIES if f"judge/{c}/overall_ci_low" in guided]
    assert {"cover_letter", "poem", "news"} <= set(with_interval)
    for category in with_interval:
        assert guided[f"judge/{category}/overall_ci_low"] <= guided[f"judge/{category}/overall"]
    assert "delta/overall_ci_high" in guided and "train/loss" in guided
    assert local_run.register["report_markdown"].startswith("# Evaluation with uncertainty")


def test_champion_points_at_a_registered_version(local_run):
    client = MlflowClient(tracking_uri=local_run.tracking_uri)
    champion = client.get_model_version_by_alias(local_run.registered_model_name, "champion")
    challenger = client.get_model_version_by_alias(local_run.registered_model_name, "challenger")
    assert champion.version == challenger.version  # first run: no champion to beat
    assert set(local_run.aliases) >= {"champion", "challenger"}
    versions = local_run.register["versions"]
    assert len(versions) == 3 and all(f"judge/{c}/overall" in v["metrics"] for v in versions for c in CATEGORIES)
    assert local_run.decision.startswith("promoted")
    # The first champion had to beat its untuned base, paired (the report quotes that comparison).
    assert "challenger vs base (first champion)" in local_run.register["report_markdown"]


def test_the_run_ends_with_next_steps_that_work(local_run, capsys):
    """`selfguided run`'s last lines: the parent run, its page, and commands that work as printed;
    every row's answers and judgments by name (rows.json beside the outputs)."""
    import json
    from pathlib import Path

    from selfguided.pipelines.cli.main import main
    from selfguided.pipelines.local import next_steps

    workdir = local_run.log_path.parent.parent
    text = next_steps(local_run, workdir)
    parent = local_run.register["parent_run_id"]
    assert f"MLflow parent run {parent} (pipeline run {local_run.run_name})" in text
    assert f"/runs/{parent}" in text and "selfguided review --sample 10" in text and "selfguided serve" in text
    plan = next(line for line in text.splitlines() if "selfguided plan-eval" in line).split("#")[0].split()
    assert plan[1:4] == ["plan-eval", "--from-run", parent]
    capsys.readouterr()
    assert main(plan[1:]) == 0 and "smallest overall difference detectable" in capsys.readouterr().out
    # the pipeline-run name the run prints works too
    assert main(["plan-eval", "--from-run", local_run.run_name, "--tracking-uri", local_run.tracking_uri]) == 0
    rows = {r["row"]: r for r in json.loads((workdir / "pipeline-root" / local_run.run_name / "rows.json").read_text())}
    assert {"tiny/unscored", "tiny/self_guided", "tiny/control", "base/tiny"} <= set(rows)
    for name in ("tiny/unscored", "tiny/self_guided", "tiny/control", "base/tiny"):
        assert rows[name]["judgments"] == f"runs:/{rows[name]['mlflow_run_id']}/judgments.jsonl"
        assert Path(rows[name]["answers"]).stat().st_size > 0 and Path(rows[name]["judgments_file"]).stat().st_size > 0
        assert f"{name}" in text and rows[name]["answers"] in text


def test_a_second_run_keeps_an_identical_champion_and_quotes_the_paired_difference(local_run):
    again = run_local(local_run.log_path.parent.parent)
    assert again.decision.startswith(f"kept champion v{local_run.aliases['champion']}")
    # identical answers, identical scores: no spread, so no interval (never a width-0 one) and no promotion
    assert ("overall paired difference +0.00 (n=41, all alike: no spread to build an interval from) against the "
            "champion row over 41 shared questions" in again.decision)
    assert "cannot show an improvement" in again.decision
    assert "| champion/v" in again.register["report_markdown"]
