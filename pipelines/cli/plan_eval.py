"""`selfguided plan-eval --from-run RUN --delta 0.5`: how many questions (and training seeds) a run needs.

Reads the rows of a finished pipeline run from MLflow (docs/mlflow.md: one parent run per pipeline
run, one child run per evaluation row tagged `row`, `row_kind`, `base_model`, `arm`, `judge`, with
its `judgments.jsonl`), runs the same evaluation as the compare step, and prints, for the
challenger against its bar (the champion, or the untuned base), the smallest difference that run
could detect with 80% power and the questions a difference of `--delta` points would need
(docs/evaluation.md), before anyone pays for the next run.
"""

from __future__ import annotations

import argparse
import sys

from selfguided.pipelines.options import UsageError, add_tracking_uri, existing_store


def _find_run(client, run: str):
    """The MLflow run `run` names: a run id, or the pipeline-run name `selfguided run` prints (the
    parent run is tagged `pipeline_run` with it, in any experiment)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run)
    except MlflowException:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, filter_string=f"tags.pipeline_run = '{run}' and tags.row_kind = 'pipeline'",
                               max_results=1) if experiments and "'" not in run else []
    if not found:
        raise UsageError(f"--from-run {run!r}: no MLflow run with that id and no pipeline run of that name in the "
                         "store (`selfguided run` prints both at its end; check --tracking-uri)")
    return found[0]


def rows_of_run(tracking_uri: str, run_id: str) -> list:
    """The evaluation rows of the pipeline run that `run_id` (its parent run, one of its row runs, or
    the pipeline run's name) belongs to."""
    from mlflow import MlflowClient

    from selfguided.components.judging.rules import ROW_KINDS
    from selfguided.components.registry.runs import run_row

    client = MlflowClient(tracking_uri=tracking_uri)
    run = _find_run(client, run_id)
    parent = run.data.tags.get("mlflow.parentRunId") or run.info.run_id
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                  max_results=1000)
    # a row that logged no judgments (e.g. no champion yet) has nothing to plan with
    rows = [row for child in children if "row" in child.data.tags and child.data.tags.get("row_kind") in ROW_KINDS
            if (row := run_row(client, child)) is not None]
    if not rows:
        raise ValueError(f"MLflow run {run_id}: no evaluation rows with judgments.jsonl under parent run {parent}")
    return rows


def plan_from_rows(rows: list, delta: float) -> list[str]:
    """The planning lines for the challenger against its bar, as the compare step would pair them."""
    from selfguided.components.evaluation.gate import evaluate_run
    from selfguided.components.evaluation.power import plan_lines

    evaluation = evaluate_run(rows)
    pair = next((p for p in reversed(evaluation.comparison.pairs) if p.label.startswith("challenger vs")), None)
    if pair is None:
        raise ValueError("the run has neither a champion row nor a base row to compare the challenger with")
    alpha = float(evaluation.decision.figures.get("overall_alpha") or 0.025)
    return plan_lines(pair, overall_alpha=alpha, delta=delta)


def run_plan_eval(args: argparse.Namespace) -> int:
    if not args.delta > 0:
        raise UsageError(f"--delta {args.delta:g}: give the difference to detect in points, above 0 (e.g. 0.5)")
    try:
        lines = plan_from_rows(rows_of_run(existing_store(args.tracking_uri), args.from_run), args.delta)
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        print(f"plan-eval: {e}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def add_plan_eval_parser(sub) -> None:
    parser = sub.add_parser("plan-eval", help="questions and seeds a target difference needs, from a finished run",
                            description=__doc__.split("\n\n")[1])
    parser.add_argument("--from-run", required=True, metavar="RUN",
                        help="a pipeline run: the MLflow parent run id or the pipeline-run name that `selfguided "
                        "run` prints, or any of its row runs' ids")
    parser.add_argument("--delta", type=float, default=0.5, help="the difference to detect, in points (default: %(default)s)")
    add_tracking_uri(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="show the libraries' progress bars")
    parser.set_defaults(func=run_plan_eval)
