"""`selfguided harvest`: production prompts become a new seed version.

Reads the served-answer traces after the watermark (the newest trace the last harvest on record
read; `--since-ms` overrides it) (registry/harvest_read.py), leaves out test-set questions (every
test set published in the experiment, and `--test-set` files), questions already in the seed it
extends, duplicates and near-duplicates (data/harvest.py), holds a share of the rest out of training
(by the prompt's hash) for the gate's unseen slice, has the teacher answer the others and the
scorer score them (the scorer's cache: only new records are sent), keeps the hard ones (jury or
editors below `--hard-below`) apart in their own file, and saves the others, with the version they
extend, as a new content-addressed seed version logged to MLflow with its lineage
(data/seed_versions.py, registry/seed_lineage.py). With `--retrain-after N`, N new records since
the champion's seed version start a training run on the new version (or print its command).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.pipelines.cli.data import DEFAULT_SEED_STORE
from selfguided.pipelines.options import UsageError, add_tracking_uri


def _seed_records(prompts, answers) -> tuple[list[dict], int]:
    records, failed = [], 0
    for prompt, answer in zip(prompts, answers):
        turns = answer["choices"][0]["turns"]
        if answer.get("error") or not turns or not turns[0].strip():
            failed += 1
            continue
        records.append({"id": f"harvest-{prompt.trace_id}", "category": prompt.category, "instruction": prompt.text,
                        "input": "", "output": turns[0]})
    return records, failed


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


def _watermark(args: argparse.Namespace, uri: str) -> tuple[int, str | None]:
    """(since_ms, the version of the harvest that set it): --since-ms when given, else the newest
    harvest's watermark in MLflow (registry/seed_lineage.harvest_watermark); prints which."""
    from selfguided.components.registry.seed_lineage import harvest_watermark

    if args.since_ms is not None:
        print(f"Watermark: --since-ms {args.since_ms} (traces after {_when(args.since_ms)})")
        return args.since_ms, None
    if args.no_mlflow:
        print("Watermark: none (--no-mlflow: no harvest on record is read); reading every trace")
        return 0, None
    since, version = harvest_watermark(uri, args.experiment, args.production_experiment)
    if version is None:
        print(f"Watermark: no earlier harvest of {args.production_experiment} on record in experiment "
              f"{args.experiment}; reading every trace")
    else:
        print(f"Watermark: traces after {_when(since)} ({since} ms), the newest trace the harvest that made "
              f"{version} read")
    return since, version


def _check_retrain(args: argparse.Namespace, store) -> None:
    if args.retrain_after < 0:
        raise UsageError(f"--retrain-after {args.retrain_after}: give a number of new records >= 1 (0: never)")
    if args.kfp_host and not args.retrain_after:
        raise UsageError("--kfp-host is where the retrain trigger submits its run: give --retrain-after N too")
    if args.retrain_after and args.kfp_host and not store.bucket:
        raise UsageError(f"--kfp-host: the cluster cannot read the local seed store {store.root}; give --seed-store "
                         "s3://bucket/prefix (or leave --kfp-host out to get the command to run)")


def _retrain(args: argparse.Namespace, uri: str, store, manifest, holdout: Path | None = None) -> None:
    """The retrain trigger: the new version's records the champion's seed version lacks, against
    --retrain-after; at or above it, one training run submitted (--kfp-host) or its command printed."""
    from selfguided.components.data.seed_versions import new_records
    from selfguided.components.registry.seed_lineage import champion_seed_version

    champion, seed = champion_seed_version(uri, args.registered_model)
    base = store.manifest(seed) if seed else None
    count = new_records(manifest, base)
    if count < args.retrain_after:
        print(f"retrain: {count} new records (< {args.retrain_after}): waiting")
        return
    since = (f"since the champion's seed version {seed}" if base is not None
             else "(no champion: all records count)" if champion is None
             else f"(the champion v{champion} names no seed version in {store.root}: all records count)")
    print(f"retrain: {count} new records {since} (>= {args.retrain_after})")
    location = store.location(manifest.version)
    if not args.kfp_host:
        default = os.environ.get("SELFGUIDED_SEED_STORE") or DEFAULT_SEED_STORE
        print(f"retrain: selfguided run --seed-data {manifest.version if store.root == default else location}"
              f"{_fresh(holdout)}")
        return
    import tempfile

    from selfguided.pipelines.cli.monitor import compile_for_schedule, kfp_client, pipeline_param
    from selfguided.pipelines.platform import PIPELINE_SERVICE_ACCOUNT

    params = {**dict(pipeline_param(p) for p in args.retrain_param), "seed_uri": location}
    if holdout:  # the held-out slice, where the cluster reads it: beside the version in the S3 store
        params["fresh_questions_uri"] = store.attach(manifest.version, "fresh-questions.jsonl",
                                                     holdout.read_text(encoding="utf-8"))
    client = kfp_client(args.kfp_host, args.namespace)
    with tempfile.TemporaryDirectory(prefix="selfguided-retrain-") as folder:
        package = compile_for_schedule("train", folder)
        run = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=f"selfguided retrain on {manifest.version}",
            experiment_name=args.kfp_experiment, namespace=args.namespace,
            service_account=args.service_account or PIPELINE_SERVICE_ACCOUNT)
    print(f"retrain: submitted KFP run {run.run_id} (experiment {args.kfp_experiment}) with "
          + ", ".join(f"{k}={params[k]}" for k in ("seed_uri", "fresh_questions_uri") if k in params))


def _write_holdout(args: argparse.Namespace, uri: str, unseen: list, seen: list) -> Path | None:
    """The held-out slice: the unseen prompts and as many seen ones in --holdout-out, the unseen ones
    recorded as a test set in --experiment (test_set_hashes reads it: no later harvest takes them)."""
    from selfguided.components.data.harvest import holdout_questions

    if not unseen:
        print(f"Held-out slice: no prompt held out this time (--holdout-fraction {args.holdout_fraction:g})")
        return None
    rows = holdout_questions(unseen, seen)
    out = Path(args.holdout_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"Held-out slice: {len(unseen)} unseen prompts (held out of the seed version) and "
          f"{len(rows) - len(unseen)} seen ones (in it): {out}")
    if args.no_mlflow:
        print("  not recorded as a test set (--no-mlflow): a later harvest holds them out again only by their hash "
              "(the same --holdout-fraction); give the file as --test-set to be sure")
    else:
        import tempfile

        from mlflow import MlflowClient

        from selfguided.components.registry.genai_pages import ensure_questions_dataset
        from selfguided.components.registry.runs import ensure_experiment

        experiment_id = ensure_experiment(MlflowClient(uri), args.experiment, uri)
        with tempfile.TemporaryDirectory(prefix="selfguided-holdout-") as folder:
            unseen_file = Path(folder) / "harvest-holdout-unseen.jsonl"
            unseen_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows
                                           if r["slice"] == "unseen"), encoding="utf-8")
            dataset = ensure_questions_dataset(uri, experiment_id, unseen_file)
        print(f"  the unseen ones are test set {dataset.name} in experiment {args.experiment}: no later harvest "
              "takes them")
    return out


def _fresh(holdout: Path | None) -> str:
    return f" --fresh-questions {holdout}" if holdout else ""


def _no_version(args: argparse.Namespace, message: str, holdout: Path | None = None) -> None:
    print(message)
    if holdout:
        print(f"Evaluate on the held-out slice: selfguided run --fresh-questions {holdout} (pipeline parameter "
              "fresh_questions_uri)")
    if args.retrain_after:
        print("retrain: no new seed version, nothing to decide")


def run_harvest(args: argparse.Namespace) -> int:
    from selfguided.components.data.harvest import held_out, question_hash, select_prompts
    from selfguided.components.data.questions import load_questions
    from selfguided.components.data.seed_versions import SeedStore, diff_markdown, diff_versions
    from selfguided.components.judging.prompts import ANSWER_PROMPT, SCORE_PROMPT
    from selfguided.components.judging.scoring import score_records
    from selfguided.components.judging.teacher import answer_with_llm
    from selfguided.components.llm.config import llm_step_config
    from selfguided.components.registry.harvest_read import served_prompts, test_set_hashes
    from selfguided.components.registry.seed_lineage import WATERMARK_KEY, log_seed_version
    from selfguided.pipelines.workdir import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    store = SeedStore(args.seed_store or os.environ.get("SELFGUIDED_SEED_STORE") or DEFAULT_SEED_STORE)
    _check_retrain(args, store)
    if not 0 <= args.holdout_fraction < 1:
        raise UsageError(f"--holdout-fraction {args.holdout_fraction}: give a share in [0, 1), e.g. 0.1")
    if args.extends and store.manifest(args.extends) is None:
        raise UsageError(f"seed version {args.extends} is not in the seed store {store.root}")
    since, last = _watermark(args, uri)
    if not args.extends and last and store.manifest(last) is not None:
        args.extends = last
        print(f"Extends {last}, the last harvest's version (--extends VERSION to grow another)")
    parent = store.records(args.extends) if args.extends else []
    prompts, notes, newest = served_prompts(uri, experiment=args.production_experiment, since_ms=since)
    if not prompts and not notes:
        _no_version(args, f"No new traffic in {args.production_experiment} since the watermark: no seed version made.")
        return 0
    test_hashes, test_sets = test_set_hashes(uri, [args.experiment])
    for path in args.test_set or []:
        test_hashes |= {question_hash(q["turns"][0]) for q in load_questions(path)}
    selection = select_prompts(prompts, test_hashes=test_hashes, seed_questions=[r["instruction"] for r in parent],
                               hard_below=args.hard_below)
    print(f"Harvest: {len(prompts)} production prompts read from {args.production_experiment}; checked against "
          f"{len(test_hashes)} test-set questions ({test_sets} test set(s) on record, {len(args.test_set or [])} file(s))")
    for reason, n in sorted({**selection.dropped, **notes}.items()):
        print(f"  {n:5d}  {reason}")
    print(f"  {len(selection.kept):5d}  kept; {len(selection.hard)} hard (score below {args.hard_below:g}) kept apart")
    unseen = [p for p in selection.kept if held_out(p.text, args.holdout_fraction)]
    kept = [p for p in selection.kept if not held_out(p.text, args.holdout_fraction)]
    print(f"  {len(unseen):5d}  of the kept held out of training (--holdout-fraction {args.holdout_fraction:g})")
    if not kept and not selection.hard:
        holdout = _write_holdout(args, uri, unseen, [])
        _no_version(args, "Nothing new to harvest: no seed version made.", holdout)
        return 0
    try:
        teacher = llm_step_config("teacher", args.teacher, base_url=args.llm_base_url, concurrency=args.llm_concurrency,
                                  cache=args.llm_cache)
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None
    teacher.progress = False
    wanted = kept + selection.hard
    questions = [{"question_id": p.trace_id, "category": p.category, "turns": [p.text]} for p in wanted]
    answers, _ = answer_with_llm(questions, teacher)
    records, failed = _seed_records(wanted, answers)
    scored, usage = score_records(records, args.score_model, concurrency=args.llm_concurrency, cache=args.llm_cache,
                                  base_url=args.llm_base_url)
    hard_ids = {f"harvest-{p.trace_id}" for p in selection.hard}
    new = [r for r in scored if r["id"] not in hard_ids]
    hard = [r for r in scored if r["id"] in hard_ids]
    if failed:
        print(f"  {failed:5d}  left out: the teacher gave no answer")
    print(f"Scored: {usage.get('score/scored_now', 0):.0f} sent to the scorer {args.score_model}, "
          f"{usage.get('score/reused', 0):.0f} reused")
    if hard:
        Path(args.hard_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.hard_out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in hard), encoding="utf-8")
        print(f"Hard prompts ({len(hard)}), kept apart for a look before any training: {args.hard_out}")
    new_ids = {r["id"] for r in new}
    holdout = _write_holdout(args, uri, unseen, [p for p in kept if f"harvest-{p.trace_id}" in new_ids])
    if not new:
        _no_version(args, "No new seed records: no seed version made.", holdout)
        return 0
    source = {"traces": args.production_experiment, "since_ms": str(since), WATERMARK_KEY: str(newest),
              "teacher": args.teacher,
              "teacher_prompt": ANSWER_PROMPT, "score_model": args.score_model, "score_prompt": SCORE_PROMPT}
    manifest, _ = store.save(parent + new, parent=args.extends, source=source)
    print(f"Seed version {manifest.version}: {len(manifest.records)} records ({len(new)} harvested), in "
          f"{store.location(manifest.version)}")
    if args.extends:
        print(diff_markdown(diff_versions(store.manifest(args.extends), manifest), show=5), end="")
    if not args.no_mlflow:
        run_id = log_seed_version(uri, args.experiment, manifest, store.location(manifest.version))
        print(f"MLflow: dataset {manifest.version} (context seed) on run {run_id}")
    print(f"Next: selfguided run --seed-data {store.location(manifest.version)}{_fresh(holdout)}"
          + (" (--fresh-questions: the held-out slice, pipeline parameter fresh_questions_uri)" if holdout else ""))
    if args.retrain_after:
        _retrain(args, uri, store, manifest, holdout)
    return 0


def _guarded(args: argparse.Namespace) -> int:
    from selfguided.components.data.jsonl import DataError

    try:
        return run_harvest(args)
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
                         "default: the last harvest's version, when it is in the seed store)")
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
