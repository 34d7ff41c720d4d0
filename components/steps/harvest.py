"""Harvest: production prompts become a new seed version; what `selfguided harvest` and the
`selfguided-flywheel` pipeline's `harvest` step run (`run_harvest`).

One execution reads the served-answer traces after the watermark (the newest trace the last harvest
on record read: registry/seed_lineage.harvest_watermark; `since_ms` overrides it)
(registry/harvest_read.py), leaves out test-set questions (every test set published in the
experiment, and `test_sets` files), questions already in the seed it extends, duplicates and
near-duplicates (data/harvest.py), holds a share of the rest out of training (by the prompt's hash)
for the gate's unseen slice, has the teacher answer the others and the scorer score them (the
scorer's cache: only new records are sent), keeps the hard ones (jury or editors below
`hard_below`) apart in their own file, and saves the others, with the version they extend, as a new
content-addressed seed version logged to MLflow with its lineage (data/seed_versions.py,
registry/seed_lineage.py). Every execution, whether it made a version or not, is one MLflow run
with the newest trace time it read (`log_harvest_execution`): traces it left out are not read again.

The retrain decision: with `retrain_after` N >= 1, the new version's records the champion's seed
version lacks are counted; `retrain` is true at N or more. Acting on it is the caller's: the CLI
submits a run or prints its command, the flywheel pipeline runs the training pipeline under
`dsl.If(retrain)`.
"""

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from kfp.dsl import Dataset, Markdown, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.data.jsonl import DataError, write_jsonl
from selfguided.components.images import CPU_IMAGE
from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.components.registry.production import PRODUCTION_EXPERIMENT

FRESH_QUESTIONS_FILE = "fresh-questions.jsonl"
"""The held-out slice's name beside the version it was harvested with (SeedStore.attach)."""


@dataclass
class HarvestConfig:
    """What one harvest reads, where it writes, and the retrain threshold (module docstring)."""

    tracking_uri: str
    teacher: str
    seed_store: str
    score_model: str = "gpt-4o"
    extends: str = ""
    """The seed version grown; "" = the last harvest's version when it is in the store, else the champion's seed version."""
    since_ms: int | None = None
    """Read traces after this (ms since the epoch); None = after the watermark."""
    production_experiment: str = PRODUCTION_EXPERIMENT
    test_sets: list[str] = field(default_factory=list)
    hard_below: float = 5.0
    hard_out: str = ".selfguided/harvest-hard.jsonl"
    holdout_fraction: float = 0.1
    holdout_out: str = ".selfguided/harvest-holdout.jsonl"
    llm_base_url: str = ""
    llm_concurrency: int = 8
    llm_cache: str = ".selfguided/llm-cache"
    experiment: str = EXPERIMENT_NAME
    no_mlflow: bool = False
    retrain_after: int = 0
    """New records (not in the champion's seed version) that start a retrain; 0 = never decide."""
    registered_model: str = REGISTERED_MODEL_NAME
    attach_holdout: bool = False
    """Keep the held-out slice beside a new version in the store (`fresh_questions_uri`)."""


@dataclass
class HarvestResult:
    version: str = ""
    """The new seed version, "" when none was made."""
    records_uri: str = ""
    new_records: int = 0
    """The new version's records the champion's seed version lacks (0 without a version or a threshold)."""
    retrain: bool = False
    holdout: str = ""
    """The held-out slice file written here ("" = none)."""
    fresh_questions_uri: str = ""
    """The slice kept beside the version (attach_holdout), "" otherwise."""
    since_ms: int = 0
    until_ms: int = 0
    lines: list[str] = field(default_factory=list)


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


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


def _watermark(config: HarvestConfig, say: Callable[[str], None]):
    """The HarvestMark the harvest starts from (since_ms when given, else MLflow's); says which."""
    from selfguided.components.registry.seed_lineage import HarvestMark, harvest_watermark

    if config.since_ms is not None:
        say(f"Watermark: --since-ms {config.since_ms} (traces after {when(config.since_ms)})")
        return HarvestMark(config.since_ms)
    if config.no_mlflow:
        say("Watermark: none (--no-mlflow: no harvest on record is read); reading every trace")
        return HarvestMark()
    mark = harvest_watermark(config.tracking_uri, config.experiment, config.production_experiment)
    if mark.version is None and not mark.until_ms:
        say(f"Watermark: no earlier harvest of {config.production_experiment} on record in experiment "
            f"{config.experiment}; reading every trace")
    elif mark.made:
        say(f"Watermark: traces after {when(mark.until_ms)} ({mark.until_ms} ms), the newest trace the harvest that "
            f"made {mark.version} read")
    else:
        say(f"Watermark: traces after {when(mark.until_ms)} ({mark.until_ms} ms), the newest trace the last harvest "
            f"read (it made no seed version)")
    return mark


def _write_holdout(config: HarvestConfig, unseen: list, seen: list, say: Callable[[str], None]) -> Path | None:
    """The held-out slice: the unseen prompts and as many seen ones in holdout_out, the unseen ones
    recorded as a test set in the experiment (test_set_hashes reads it: no later harvest takes them)."""
    from selfguided.components.data.harvest import holdout_questions

    if not unseen:
        say(f"Held-out slice: no prompt held out this time (--holdout-fraction {config.holdout_fraction:g})")
        return None
    rows = holdout_questions(unseen, seen)
    out = Path(config.holdout_out)
    write_jsonl(out, rows)
    say(f"Held-out slice: {len(unseen)} unseen prompts (held out of the seed version) and "
        f"{len(rows) - len(unseen)} seen ones (in it): {out}")
    if config.no_mlflow:
        say("  not recorded as a test set (--no-mlflow): a later harvest holds them out again only by their hash "
            "(the same --holdout-fraction); give the file as --test-set to be sure")
        return out
    import tempfile

    from mlflow import MlflowClient

    from selfguided.components.registry.genai_pages import ensure_questions_dataset
    from selfguided.components.registry.runs import ensure_experiment

    experiment_id = ensure_experiment(MlflowClient(config.tracking_uri), config.experiment, config.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="selfguided-holdout-") as folder:
        unseen_file = Path(folder) / "harvest-holdout-unseen.jsonl"
        write_jsonl(unseen_file, (r for r in rows if r["slice"] == "unseen"))
        dataset = ensure_questions_dataset(config.tracking_uri, experiment_id, unseen_file)
    say(f"  the unseen ones are test set {dataset.name} in experiment {config.experiment}: no later harvest "
        "takes them")
    return out


def _decide_retrain(config: HarvestConfig, store, manifest, result: HarvestResult, say: Callable[[str], None]) -> None:
    """The new version's records the champion's seed version lacks, against retrain_after."""
    from selfguided.components.data.seed_versions import new_records
    from selfguided.components.registry.seed_lineage import champion_seed_version

    champion, seed = champion_seed_version(config.tracking_uri, config.registered_model)
    base = store.manifest(seed) if seed else None
    result.new_records = new_records(manifest, base)
    if result.new_records < config.retrain_after:
        say(f"retrain: {result.new_records} new records (< {config.retrain_after}): waiting")
        return
    since = (f"since the champion's seed version {seed}" if base is not None
             else "(no champion: all records count)" if champion is None
             else f"(the champion v{champion} names no seed version in {store.root}: all records count)")
    say(f"retrain: {result.new_records} new records {since} (>= {config.retrain_after})")
    result.retrain = True


def _no_version(config: HarvestConfig, message: str, holdout: Path | None, say: Callable[[str], None]) -> None:
    say(message)
    if holdout:
        say(f"Evaluate on the held-out slice: selfguided run --fresh-questions {holdout} (pipeline parameter "
            "fresh_questions_uri)")
    if config.retrain_after:
        say("retrain: no new seed version, nothing to decide")


def run_harvest(config: HarvestConfig, say: Callable[[str], None] = print) -> HarvestResult:
    """One harvest (module docstring); every line it reports goes to `say` and into result.lines.
    Raises DataError on a bad setting (an unknown `extends`, a share outside [0, 1))."""
    result = HarvestResult()

    def report(line: str) -> None:
        result.lines.append(line)
        say(line)

    if not 0 <= config.holdout_fraction < 1:
        raise DataError(f"holdout_fraction {config.holdout_fraction}: give a share in [0, 1), e.g. 0.1")
    from selfguided.components.data.seed_versions import SeedStore

    store = SeedStore(config.seed_store)
    if config.extends and store.manifest(config.extends) is None:
        raise DataError(f"seed version {config.extends} is not in the seed store {store.root}")
    mark = _watermark(config, report)
    result.since_ms = result.until_ms = mark.until_ms
    extends = config.extends
    if not extends and mark.version and store.manifest(mark.version) is not None:
        extends = mark.version
        report(f"Extends {extends}, the last harvest's version (--extends VERSION to grow another)")
    elif not extends and mark.version is None and not config.no_mlflow:
        extends = _champion_seed(config, store, report)
    counts: dict[str, float] = {}
    _harvest(config, store, extends, result, counts, report)
    if not config.no_mlflow:  # only once it went through: a failed harvest leaves the watermark where it was
        from selfguided.components.registry.seed_lineage import log_harvest_execution

        log_harvest_execution(config.tracking_uri, config.experiment, traces=config.production_experiment,
                              since_ms=result.since_ms, until_ms=result.until_ms, made=result.version,
                              current=result.version or extends, counts=counts)
    return result


def _champion_seed(config: HarvestConfig, store, say: Callable[[str], None]) -> str:
    """The first harvest grows the seed the champion was trained on: its version, put into the seed
    store from the records its pipeline run logged when the store lacks it; "" when there is none."""
    from selfguided.components.registry.seed_lineage import champion_seed_records

    found = champion_seed_records(config.tracking_uri, config.registered_model)
    if found is None:
        say("Extends nothing: no champion's seed on record (--extends VERSION to grow one; `selfguided data save`)")
        return ""
    champion, version, records = found
    if store.manifest(version) is None:
        store.save(records, source={"model_version": f"{config.registered_model} v{champion}"})
    say(f"Extends {version}, the seed version the champion v{champion} was trained on ({len(records)} records)")
    return version


def _harvest(config: HarvestConfig, store, extends: str, result: HarvestResult, counts: dict[str, float],
             say: Callable[[str], None]) -> None:
    from selfguided.components.data.harvest import held_out, question_hash, select_prompts
    from selfguided.components.data.questions import load_questions
    from selfguided.components.data.seed_versions import diff_markdown, diff_versions
    from selfguided.components.judging.prompts import ANSWER_PROMPT, SCORE_PROMPT
    from selfguided.components.judging.scoring import score_records
    from selfguided.components.judging.teacher import answer_with_llm
    from selfguided.components.llm.config import llm_step_config
    from selfguided.components.registry.harvest_read import served_prompts, test_set_hashes
    from selfguided.components.registry.seed_lineage import WATERMARK_KEY, log_seed_version

    since = result.since_ms
    parent = store.records(extends) if extends else []
    prompts, notes, newest = served_prompts(config.tracking_uri, experiment=config.production_experiment,
                                            since_ms=since)
    result.until_ms = max(newest, since)
    counts["read"] = len(prompts)
    if not prompts and not notes:
        _no_version(config, f"No new traffic in {config.production_experiment} since the watermark: no seed version "
                    "made.", None, say)
        return
    test_hashes, test_sets = test_set_hashes(config.tracking_uri, [config.experiment])
    for path in config.test_sets:
        test_hashes |= {question_hash(q["turns"][0]) for q in load_questions(path)}
    selection = select_prompts(prompts, test_hashes=test_hashes, seed_questions=[r["instruction"] for r in parent],
                               hard_below=config.hard_below)
    say(f"Harvest: {len(prompts)} production prompts read from {config.production_experiment}; checked against "
        f"{len(test_hashes)} test-set questions ({test_sets} test set(s) on record, {len(config.test_sets)} file(s))")
    for reason, n in sorted({**selection.dropped, **notes}.items()):
        say(f"  {n:5d}  {reason}")
    say(f"  {len(selection.kept):5d}  kept; {len(selection.hard)} hard (score below {config.hard_below:g}) kept apart")
    unseen = [p for p in selection.kept if held_out(p.text, config.holdout_fraction)]
    kept = [p for p in selection.kept if not held_out(p.text, config.holdout_fraction)]
    say(f"  {len(unseen):5d}  of the kept held out of training (--holdout-fraction {config.holdout_fraction:g})")
    counts.update(kept=len(kept), hard=len(selection.hard), held_out=len(unseen),
                  left_out=sum(selection.dropped.values()))
    if not kept and not selection.hard:
        holdout = _write_holdout(config, unseen, [], say)
        result.holdout = str(holdout or "")
        _no_version(config, "Nothing new to harvest: no seed version made.", holdout, say)
        return
    try:
        teacher = llm_step_config("teacher", config.teacher, base_url=config.llm_base_url,
                                  concurrency=config.llm_concurrency, cache=config.llm_cache)
    except RuntimeError as exc:
        raise DataError(str(exc)) from None
    teacher.progress = False
    wanted = kept + selection.hard
    questions = [{"question_id": p.trace_id, "category": p.category, "turns": [p.text]} for p in wanted]
    answers, _ = answer_with_llm(questions, teacher)
    records, failed = _seed_records(wanted, answers)
    scored, usage = score_records(records, config.score_model, concurrency=config.llm_concurrency,
                                  cache=config.llm_cache, base_url=config.llm_base_url)
    hard_ids = {f"harvest-{p.trace_id}" for p in selection.hard}
    new = [r for r in scored if r["id"] not in hard_ids]
    hard = [r for r in scored if r["id"] in hard_ids]
    if failed:
        say(f"  {failed:5d}  left out: the teacher gave no answer")
    counts.update(scored_now=usage.get("score/scored_now", 0), reused=usage.get("score/reused", 0))
    say(f"Scored: {usage.get('score/scored_now', 0):.0f} sent to the scorer {config.score_model}, "
        f"{usage.get('score/reused', 0):.0f} reused")
    if hard:
        write_jsonl(config.hard_out, hard)
        say(f"Hard prompts ({len(hard)}), kept apart for a look before any training: {config.hard_out}")
    new_ids = {r["id"] for r in new}
    holdout = _write_holdout(config, unseen, [p for p in kept if f"harvest-{p.trace_id}" in new_ids], say)
    result.holdout = str(holdout or "")
    if not new:
        _no_version(config, "No new seed records: no seed version made.", holdout, say)
        return
    source = {"traces": config.production_experiment, "since_ms": str(since), WATERMARK_KEY: str(newest),
              "teacher": config.teacher, "teacher_prompt": ANSWER_PROMPT, "score_model": config.score_model,
              "score_prompt": SCORE_PROMPT}
    manifest, _ = store.save(parent + new, parent=extends or None, source=source)
    result.version, result.records_uri = manifest.version, store.location(manifest.version)
    counts["records"] = len(manifest.records)
    say(f"Seed version {manifest.version}: {len(manifest.records)} records ({len(new)} harvested), in "
        f"{result.records_uri}")
    if extends:
        say(diff_markdown(diff_versions(store.manifest(extends), manifest), show=5).rstrip("\n"))
    if not config.no_mlflow:
        run_id = log_seed_version(config.tracking_uri, config.experiment, manifest, result.records_uri)
        say(f"MLflow: dataset {manifest.version} (context seed) on run {run_id}")
    if holdout and config.attach_holdout:
        result.fresh_questions_uri = store.attach(manifest.version, FRESH_QUESTIONS_FILE,
                                                  holdout.read_text(encoding="utf-8"))
        say(f"Held-out slice kept beside the version: {result.fresh_questions_uri}")
    fresh = f" --fresh-questions {holdout}" if holdout else ""
    say(f"Next: selfguided run --seed-data {result.records_uri}{fresh}"
        + (" (--fresh-questions: the held-out slice, pipeline parameter fresh_questions_uri)" if holdout else ""))
    if config.retrain_after:
        _decide_retrain(config, store, manifest, result, say)


@component(base_image=CPU_IMAGE, install_kfp_package=False)
def harvest(tracking_uri: str, seed_store: str, extends: str, teacher: str, score_model: str,
            production_experiment: str, experiment_name: str, registered_model_name: str, min_new_records: int,
            holdout_fraction: float, hard_below: float, llm_base_url: str, llm_concurrency: int, llm_cache: str,
            report: Output[Markdown], hard_prompts: Output[Dataset]
            ) -> NamedTuple("Outputs", [("seed_version", str), ("new_records", int), ("retrain", bool),
                                        ("seed_uri", str), ("fresh_questions_uri", str)]):
    """One harvest: the production prompts since the watermark into a new seed version in the seed
    store, and whether it holds enough new records to retrain (components/steps/harvest.py).

    Args:
        tracking_uri: MLflow tracking server (traces, test sets, seed versions, the champion).
        seed_store: the seed store, `s3://bucket/prefix` or a folder on the cache volume (where the
            training run reads the version).
        extends: the seed version the harvest grows ("" = the last harvest's version, when there is one;
            else the champion's seed version, from the records its pipeline run logged).
        teacher: the model that answers the harvested prompts.
        score_model: the scorer.
        production_experiment: the MLflow experiment the served answers are traced in.
        experiment_name: the MLflow experiment of the runs, test sets and seed versions.
        registered_model_name: the registered model whose champion's seed version is compared.
        min_new_records: records the champion's seed version lacks that make `retrain` true (0 = never).
        holdout_fraction: share of the kept prompts held out of training, for the gate's unseen slice.
        hard_below: a prompt whose jury or editors' score is below this is hard (kept apart).
        llm_base_url: OpenAI-compatible endpoint of the teacher and the scorer ("" = OPENAI_BASE_URL).
        llm_concurrency: requests in flight.
        llm_cache: the LLM and score cache.

    Returns:
        seed_version (the new version, "" = none made), new_records, retrain, seed_uri (the version's
        records, "" = none) and fresh_questions_uri (the held-out slice beside it, "" = none).
    """
    import os
    import tempfile
    from collections import namedtuple

    from selfguided.components.steps.harvest import HarvestConfig, run_harvest

    with tempfile.TemporaryDirectory(prefix="selfguided-harvest-") as folder:
        result = run_harvest(HarvestConfig(
            tracking_uri=tracking_uri, teacher=teacher, seed_store=seed_store, extends=extends, score_model=score_model,
            production_experiment=production_experiment, experiment=experiment_name,
            registered_model=registered_model_name, retrain_after=max(0, min_new_records),
            holdout_fraction=holdout_fraction, hard_below=hard_below, hard_out=hard_prompts.path,
            holdout_out=f"{folder}/holdout.jsonl", llm_base_url=llm_base_url, llm_concurrency=llm_concurrency,
            llm_cache=llm_cache, attach_holdout=True), say=lambda line: print(line, flush=True))
    if not os.path.exists(hard_prompts.path):  # no hard prompt this time: the artifact is an empty file
        open(hard_prompts.path, "w").close()
    with open(report.path, "w", encoding="utf-8") as f:
        f.write("# Harvest\n\n```\n" + "\n".join(result.lines) + "\n```\n")
    if not result.retrain and min_new_records > 0:
        print(f"[selfguided] harvest: no retrain ({result.new_records} new records, {min_new_records} needed)",
              flush=True)
    return namedtuple("Outputs", ["seed_version", "new_records", "retrain", "seed_uri", "fresh_questions_uri"])(
        result.version, result.new_records, result.retrain, result.records_uri, result.fresh_questions_uri)
