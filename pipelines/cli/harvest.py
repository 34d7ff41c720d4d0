"""`selfguided harvest`: production prompts become a new seed version.

Reads the served-answer traces after the watermark (the newest trace the last harvest on record
read; `--since-ms` overrides it), leaves out test-set questions (every test set published in the
experiment, and `--test-set` files), questions already in the seed it extends, duplicates and
near-duplicates, holds a share of the rest out of training (by the prompt's hash) for the gate's
unseen slice, has the teacher answer the others and the scorer score them (the scorer's cache:
only new records are sent), keeps the hard ones (jury or editors below `--hard-below`) apart in
their own file, and saves the others, with the version they extend, as a new content-addressed seed
version logged to MLflow with its lineage. With `--retrain-after N`, N new records since the
champion's seed version start a training run on the new version (or print its command).
The harvest itself is components/steps/harvest.py (also the flywheel pipeline's `harvest` step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.pipelines.cli.data import DEFAULT_SEED_STORE, seed_store_root
from selfguided.pipelines.options import UsageError, add_tracking_uri


def _check(args: argparse.Namespace, store_root: str) -> None:
    if args.retrain_after < 0:
        raise UsageError(f"--retrain-after {args.retrain_after}: give a number of new records >= 1 (0: never)")
    if args.kfp_host and not args.retrain_after:
        raise UsageError("--kfp-host is where the retrain trigger submits its run: give --retrain-after N too")
    if args.retrain_after and args.kfp_host and not store_root.startswith("s3://"):
        raise UsageError(f"--kfp-host: the cluster cannot read the local seed store {store_root}; give --seed-store "
                         "s3://bucket/prefix (or leave --kfp-host out to get the command to run)")
    if not 0 <= args.holdout_fraction < 1:
        raise UsageError(f"--holdout-fraction {args.holdout_fraction}: give a share in [0, 1), e.g. 0.1")


def _retrain(args: argparse.Namespace, store_root: str, result) -> None:
    """Act on the trigger: one training run submitted (--kfp-host), or its command printed."""
    from selfguided.components.data.seed_versions import SeedStore
    from selfguided.components.steps.harvest import FRESH_QUESTIONS_FILE

    fresh = f" --fresh-questions {result.holdout}" if result.holdout else ""
    if not args.kfp_host:
        default = seed_store_root()
        print(f"retrain: selfguided run --seed-data {result.version if store_root == default else result.records_uri}"
              f"{fresh}")
        return
    import tempfile

    from selfguided.pipelines.cli.monitor import compile_for_schedule, kfp_client, pipeline_param
    from selfguided.pipelines.platform import PIPELINE_SERVICE_ACCOUNT

    params = {**dict(pipeline_param(p) for p in args.retrain_param), "seed_uri": result.records_uri}
    if result.holdout:  # the held-out slice, where the cluster reads it: beside the version in the S3 store
        params["fresh_questions_uri"] = SeedStore(store_root).attach(
            result.version, FRESH_QUESTIONS_FILE, Path(result.holdout).read_text(encoding="utf-8"))
    client = kfp_client(args.kfp_host, args.namespace)
    with tempfile.TemporaryDirectory(prefix="selfguided-retrain-") as folder:
        package = compile_for_schedule("train", folder)
        run = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=f"selfguided retrain on {result.version}",
            experiment_name=args.kfp_experiment, namespace=args.namespace,
            service_account=args.service_account or PIPELINE_SERVICE_ACCOUNT)
    print(f"retrain: submitted KFP run {run.run_id} (experiment {args.kfp_experiment}) with "
          + ", ".join(f"{k}={params[k]}" for k in ("seed_uri", "fresh_questions_uri") if k in params))


def cmd_harvest(args: argparse.Namespace) -> int:
    """The command: components/steps/harvest.run_harvest, then the trigger's action (submit or print)."""
    from selfguided.components.steps.harvest import HarvestConfig, run_harvest
    from selfguided.pipelines.workdir import default_tracking_uri

    store_root = seed_store_root(args.seed_store)
    _check(args, store_root)
    config = HarvestConfig(
        tracking_uri=args.tracking_uri or default_tracking_uri(), teacher=args.teacher, seed_store=store_root,
        score_model=args.score_model, extends=args.extends or "", since_ms=args.since_ms,
        production_experiment=args.production_experiment, test_sets=list(args.test_set or []),
        hard_below=args.hard_below, hard_out=args.hard_out, holdout_fraction=args.holdout_fraction,
        holdout_out=args.holdout_out, llm_base_url=args.llm_base_url, llm_concurrency=args.llm_concurrency,
        llm_cache=args.llm_cache, experiment=args.experiment, no_mlflow=args.no_mlflow,
        retrain_after=args.retrain_after, registered_model=args.registered_model)
    result = run_harvest(config)
    if result.retrain:
        _retrain(args, store_root, result)
    return 0


def _guarded(args: argparse.Namespace) -> int:
    from selfguided.components.data.jsonl import DataError

    try:
        return cmd_harvest(args)
    except (UsageError, DataError) as exc:
        print(f"selfguided harvest: {exc}", file=sys.stderr)
        return 2


def add_harvest_parser(subparsers) -> None:
    from selfguided.components.registry.production import PRODUCTION_EXPERIMENT

    harvest = subparsers.add_parser("harvest", help="production prompts -> a new seed version (deduplicated, no "
                                    "test-set question, hard ones apart)", description=__doc__.split("\n\n", 1)[1])
    harvest.add_argument("--teacher", required=True, help="the model that answers the harvested prompts")
    harvest.add_argument("--score-model", default="gpt-4o", help="the scorer (default: %(default)s)")
    harvest.add_argument("--extends", metavar="VERSION", help="the seed version the harvest grows (its records stay; "
                         "default: the last harvest's version when it is in the seed store; the first harvest: the champion's seed version, taken from the records its pipeline run logged)")
    harvest.add_argument("--seed-store", help="seed store: a folder or s3://bucket/prefix (default: "
                         f"$SELFGUIDED_SEED_STORE, else {DEFAULT_SEED_STORE})")
    harvest.add_argument("--since-ms", type=int, help="only traces after this time (ms since the epoch; default: the "
                         "watermark, the newest trace read by the last harvest on record in --experiment, else all)")
    harvest.add_argument("--production-experiment", default=PRODUCTION_EXPERIMENT,
                         help="experiment of the production traces (default: %(default)s)")
    harvest.add_argument("--test-set", action="append", metavar="FILE",
                         help="a test questions file whose questions must never be harvested; repeatable "
                         "(the test sets published in --experiment count without it)")
    harvest.add_argument("--hard-below", type=float, default=5.0,
                         help="a prompt whose jury or editors' score is below this is hard (default: %(default)s)")
    harvest.add_argument("--hard-out", default=".selfguided/harvest-hard.jsonl",
                         help="where hard prompts go (default: %(default)s)")
    harvest.add_argument("--holdout-fraction", type=float, default=0.1,
                         help="share of the kept prompts held out of the seed version, chosen by the prompt's hash "
                         "(the same prompt always on the same side), for the gate's unseen slice (default: %(default)s)")
    harvest.add_argument("--holdout-out", default=".selfguided/harvest-holdout.jsonl",
                         help="where the held-out slice goes: FastChat questions with \"slice\": \"unseen\" or "
                         "\"seen\", for selfguided run --fresh-questions (default: %(default)s)")
    harvest.add_argument("--llm-base-url", default="", help="OpenAI-compatible endpoint (default: OPENAI_BASE_URL)")
    harvest.add_argument("--llm-concurrency", type=int, default=8, help="requests in flight (default: %(default)s)")
    harvest.add_argument("--llm-cache", default=".selfguided/llm-cache", help="LLM and score cache (default: %(default)s)")
    add_tracking_uri(harvest)
    harvest.add_argument("--experiment", default=EXPERIMENT_NAME,
                         help="MLflow experiment of the runs and test sets (default: %(default)s)")
    harvest.add_argument("--no-mlflow", action="store_true", help="do not log the new seed version to MLflow")
    retrain = harvest.add_argument_group("retrain trigger")
    retrain.add_argument("--retrain-after", type=int, default=0, metavar="N",
                         help="when the new version holds at least N records the champion's seed version lacks, "
                         "start a training run on it (with --kfp-host) or print its command (default: 0, never)")
    retrain.add_argument("--registered-model", default=REGISTERED_MODEL_NAME,
                         help="registered model whose champion is compared (default: %(default)s)")
    retrain.add_argument("--kfp-host", help="Kubeflow Pipelines API endpoint to submit the training run to")
    retrain.add_argument("--kfp-experiment", default=EXPERIMENT_NAME, help="its KFP experiment (default: %(default)s)")
    retrain.add_argument("--namespace", help="Kubeflow profile namespace")
    retrain.add_argument("--service-account", help="service account of the run's pods (default: the pipeline's)")
    retrain.add_argument("--retrain-param", action="append", default=[], metavar="NAME=VALUE",
                         help="a parameter of the training run (repeatable); seed_uri is the new version's records")
    harvest.set_defaults(func=_guarded)
