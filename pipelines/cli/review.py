"""`selfguided review | calibrate`: editors check the judge in the MLflow UI, then the platform measures how close each judge came.

`review --sample N` queues a blind, stratified sample of judged answers (registry/review.py) and
prints where and how to grade it; `calibrate` reads the editors' HUMAN `score` feedback and prints
the agreement of every judge and the jury with them (judging/calibration.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfguided.components.registry.names import EXPERIMENT_NAME
from selfguided.pipelines.options import add_option, add_tracking_uri
from selfguided.pipelines.cli.registry import _tracking_uri  # one rule for the default store, the registry CLI's
from selfguided.pipelines.local import ui_base


def _common(parser: argparse.ArgumentParser) -> None:
    add_tracking_uri(parser)
    add_option(parser, "--experiment", old=("--experiment-name",), default=EXPERIMENT_NAME,
                        help="experiment of the judged answers (default: %(default)s; the blind copies go to "
                        "<experiment>-review)")


def run_review(args: argparse.Namespace) -> int:
    from selfguided.components.registry.review import REVIEW_SAMPLE_TAG, create_review_sample
    from selfguided.components.registry.traces import HUMAN_SCORE

    uri = _tracking_uri(args)
    reviewers = [r.strip() for r in (args.reviewers or "").split(",") if r.strip()]
    sample = create_review_sample(uri, args.experiment, args.sample, seed=args.random_seed, reviewers=reviewers,
                                  pipeline_run=args.pipeline_run or "")
    base, start = ui_base(uri)
    review = f"{base}/#/experiments/{sample.review_experiment_id}"
    print(f"Review sample {sample.sample_id}: {len(sample.copies)} answers, blind (no row, model or judge score "
          f"shown), in experiment {args.experiment}-review.")
    for stratum, count in sample.strata.items():
        print(f"  {count:3d}  {stratum}")
    print("\nWhere to grade it" + (f" (start the UI first: {start})" if start else "") + ":")
    if sample.queue_id:
        print(f"  review queue 'sample {sample.sample_id}': {review}/review-queue")
    print(f"  or the Traces page, filtered on tag {REVIEW_SAMPLE_TAG} = {sample.sample_id}: {review}/traces")
    print(f"\nHow: open each answer and add a feedback named '{HUMAN_SCORE}', a number from 1 to 10 (source HUMAN; "
          "the review queue asks exactly that question), with a comment if you like. From code:\n"
          f"  mlflow.log_feedback(trace_id=..., name='{HUMAN_SCORE}', value=7, "
          "source=AssessmentSource(source_type='HUMAN', source_id='<you>'))")
    print(f"\nThen: selfguided calibrate --review-sample {sample.sample_id}" +
          (f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from selfguided.components.judging.calibration import calibrate, calibration_markdown
    from selfguided.components.registry.review import read_labels

    items, ignored = read_labels(_tracking_uri(args), args.experiment, sample_id=args.review_sample or "")
    result = calibrate(items, min_labels=args.min_labels, seed=args.random_seed)
    result.ignored = dict(ignored)
    print(calibration_markdown(result, min_labels=args.min_labels))
    from selfguided.components.judging.jury_weights import learn_weights, weights_markdown

    learned = learn_weights(items, seed=args.random_seed, min_labels=args.min_labels)  # fit on half, checked on half
    print(weights_markdown(learned))
    if args.json:
        Path(args.json).write_text(json.dumps({**result.to_dict(), "jury_weights": learned.to_dict()},
                                              ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


def add_review_parsers(subparsers) -> None:
    review = subparsers.add_parser(
        "review", help="queue a blind, stratified sample of judged answers for editors to grade in MLflow",
        description="Pick N judged answers not reviewed before, stratified by category and row, copy each "
        "(conversation and answer only) into the review experiment with a review queue, and print where and how "
        "editors grade them (a `score` feedback, 1-10, source HUMAN).")
    review.add_argument("--sample", type=int, required=True, metavar="N", help="how many answers")
    add_option(review, "--random-seed", old=("--seed",), type=int, default=0,
               help="random seed of the sample (default: %(default)s)")
    review.add_argument("--reviewers", help="comma-separated MLflow user names the review queue is assigned to")
    review.add_argument("--pipeline-run", help="only answers of this pipeline run (default: any)")
    _common(review)
    review.set_defaults(func=run_review)

    calibrate = subparsers.add_parser(
        "calibrate", help="judge-human agreement: each judge and the jury against the editors' scores",
        description="Read the editors' HUMAN `score` feedback on review samples and print, per judge and for the "
        "jury: Spearman, quadratic-weighted kappa, mean absolute difference and mean bias against the editors, with "
        "bootstrap CIs, per category when it has enough labels, and which judge is closest to the editors.")
    calibrate.add_argument("--review-sample", help="only this review sample (default: every sample)")
    calibrate.add_argument("--min-labels", type=int, default=10,
                           help="labels a category needs for its own rows (default: %(default)s)")
    add_option(calibrate, "--random-seed", old=("--seed",), type=int, default=0,
               help="bootstrap seed (default: %(default)s)")
    calibrate.add_argument("--json", help="also write the result as JSON to this file")
    _common(calibrate)
    calibrate.set_defaults(func=run_calibrate)
