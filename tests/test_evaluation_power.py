"""Power planning: the report's figures and `selfguided plan-eval --from-run` on a real SQLite MLflow store."""

from __future__ import annotations

import json
import math

from evaluation_rows import make_row

from selfguided.components.evaluation.gate import evaluate_run
from selfguided.components.evaluation.power import power_lines
from selfguided.pipelines.cli.plan_eval import plan_from_rows


def test_more_questions_are_needed_for_a_smaller_difference_and_the_overall_needs_fewer_than_a_category():
    rows = [make_row("tiny/self_guided", arm="self_guided", shift=0.3, seed=1, noise=1.0),
            make_row("base/tiny", "base", seed=2, noise=1.0)]
    pair = evaluate_run(rows).comparison.pairs[-1]
    lines = power_lines(pair, overall_alpha=0.025, delta=0.5)
    overall = lines[-1]
    assert overall.what == "overall" and overall.n_questions == 60
    per_category = lines[0]
    assert per_category.mdd > overall.mdd > 0  # 10 questions detect less than 60
    # the MDD at this n is where the needed questions equal this n
    at_mdd = power_lines(pair, overall_alpha=0.025, delta=overall.mdd)[-1].questions_for_delta
    assert abs(at_mdd - 60) <= 2
    assert power_lines(pair, overall_alpha=0.025, delta=0.25)[-1].questions_for_delta > overall.questions_for_delta


def test_planning_with_seeds_says_when_more_seeds_not_questions_are_needed():
    champion = make_row("champion/v3", "champion", seed=70)
    seeds = [make_row(f"tiny/self_guided#{r}", arm="self_guided", shift=0.6 + s, seed=71 + r, replicate=r)
             for r, s in enumerate((-0.5, 0.5))]
    text = "\n".join(plan_from_rows([*seeds, champion], delta=0.3))
    assert "2 training seed(s)" in text
    assert "overall 0.3 points with 1 seed(s): more seeds needed" in text  # a seed SD of ~0.7 swamps 0.3


def test_plan_eval_from_a_run_in_mlflow(tmp_path, capsys):
    from mlflow import MlflowClient

    from selfguided.pipelines.cli.main import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("selfguided", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, tags={"row_kind": "pipeline", "pipeline_run": "run-1"}).info.run_id
    for row in (make_row("tiny/self_guided", arm="self_guided", shift=0.5, seed=1),
                make_row("tiny/self_guided#1", arm="self_guided", shift=0.5, seed=4, replicate=1),
                make_row("tiny/unscored", arm="unscored", seed=3), make_row("base/tiny", "base", seed=2)):
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "row": row.row, "row_kind": row.row_kind,
                                                  "base_model": row.base_model, "arm": row.arm, "judge": row.judge,
                                                  "replicate": str(row.replicate)})  # as registry/runs tags a row
        folder = tmp_path / run.info.run_id
        folder.mkdir()
        (folder / "judgments.jsonl").write_text("".join(json.dumps(j) + "\n" for j in row.judgments), encoding="utf-8")
        client.log_artifact(run.info.run_id, str(folder / "judgments.jsonl"))  # as the registry logs it
    assert main(["plan-eval", "--from-run", parent, "--delta", "0.5", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    # the training seeds come back from the row runs' `replicate` tags: one arm of two seeds
    assert out.startswith("challenger vs base (first champion): 60 shared questions, 2 training seed(s)")
    figure = float(out.splitlines()[1].rsplit(": ", 1)[1])
    assert 0 < figure < 5 and math.isfinite(figure)  # two seeds: the seed spread widens it
    assert "overall 0.5 points with 2 seed(s)" in out
