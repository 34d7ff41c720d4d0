"""The flywheel pipeline (`selfguided-flywheel`), compiled beside the main one and run on a schedule
(`selfguided schedule --pipeline flywheel --cron ...`, a KFP recurring run):

    harvest (production prompts since the watermark -> a new seed version, and whether it holds
             min_new_records the champion's seed version lacks)
      -> if retrain: the training pipeline (`selfguided`, nested) on the new version, its gate
                     evaluating on the harvest's held-out slice too

One flywheel run is a harvest and at most one retrain; the recurring run allows one run at a time
(`max_concurrency` 1, pipelines/cli/monitor.schedule_recurring_run), so no second retrain starts
while one is in flight. The harvest step is thin: its body calls components/steps/harvest.py.

    python -m selfguided.pipelines.flywheel_pipeline pipelines/selfguided_flywheel.yaml   # make compile
"""

import sys
from pathlib import Path
from typing import Any, List

from kfp import compiler, dsl, kubernetes

from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.components.registry.production import PRODUCTION_EXPERIMENT
from selfguided.components.steps.harvest import harvest
from selfguided.pipelines import platform
from selfguided.pipelines.pipeline import (
    _sized, _with_cache_volume, _with_judge_keys, _with_llm_secret, _with_mlflow_secret, _with_s3_secret,
    self_guided_pipeline,
)

FLYWHEEL_PIPELINE_NAME = "selfguided-flywheel"
COMMITTED_FLYWHEEL_PIPELINE = Path(__file__).with_name("selfguided_flywheel.yaml")


@dsl.pipeline(name=FLYWHEEL_PIPELINE_NAME, description="Harvest the production prompts since the last harvest "
              "into a new seed version; when it holds enough new records, run the training pipeline on it.")
def flywheel_pipeline(
    seed_store: str = f"{platform.CACHE_MOUNT_PATH}/seed-versions",
    extends: str = "",
    teacher: str = "gpt-4o",
    min_new_records: int = 100,
    holdout_fraction: float = 0.1,
    hard_below: float = 5.0,
    production_experiment: str = PRODUCTION_EXPERIMENT,
    base_models: List[str] = ["EleutherAI/polyglot-ko-1.3b"],
    score_model: str = "gpt-4o",
    judge_model: str = "gpt-4o",
    judges: str = "",
    jury_weights: str = "",
    reference_models: List[str] = ["gpt-4o-mini"],
    llm_base_url: str = "",
    llm_concurrency: int = 8,
    llm_cache: str = f"{platform.CACHE_MOUNT_PATH}/llm-cache",
    serving_name: str = REGISTERED_MODEL_NAME,
    registered_model_name: str = REGISTERED_MODEL_NAME,
    mlflow_tracking_uri: str = platform.MLFLOW_TRACKING_URI_IN_CLUSTER,
    experiment_name: str = EXPERIMENT_NAME,
) -> None:
    """One turn of the flywheel.

    Args:
        seed_store: the seed store, `s3://bucket/prefix` or a folder on the cache volume (both steps
            mount it): the harvest saves the new version there and the training run reads it (seed_uri)
            and the held-out slice beside it (fresh_questions_uri).
        extends: the seed version the harvest grows; "" = the last harvest's version; the first
            harvest grows the champion's seed version (the records its pipeline run logged).
        teacher: the model that answers the harvested prompts.
        min_new_records: records of the new version that the champion's seed version lacks needed to
            retrain (0 = harvest only, never retrain).
        holdout_fraction: share of the harvested prompts held out of training, for the gate's unseen slice.
        hard_below: a prompt whose jury or editors' score is below this is kept apart (never trained on).
        production_experiment: the MLflow experiment the served answers are traced in.
        base_models: the training run's base models.
        score_model: the scorer (harvest and the training run's score step).
        judge_model: the training run's judge.
        judges: the training run's jury ("" = judge_model alone).
        jury_weights: the jury's weights (`selfguided calibrate`), "" = equal.
        reference_models: the training run's teacher rows.
        llm_base_url: OpenAI-compatible endpoint ("" = OpenAI).
        llm_concurrency: concurrent LLM requests per step.
        llm_cache: the LLM and score cache.
        serving_name: the InferenceService a newly promoted champion is deployed to ("" = none).
        registered_model_name: the MLflow registered model (its champion's seed version is compared).
        mlflow_tracking_uri: MLflow tracking server.
        experiment_name: MLflow experiment of the runs, test sets and seed versions.
    """
    harvest_task = harvest(
        tracking_uri=mlflow_tracking_uri, seed_store=seed_store, extends=extends, teacher=teacher,
        score_model=score_model,
        production_experiment=production_experiment, experiment_name=experiment_name,
        registered_model_name=registered_model_name, min_new_records=min_new_records,
        holdout_fraction=holdout_fraction, hard_below=hard_below, llm_base_url=llm_base_url,
        llm_concurrency=llm_concurrency, llm_cache=llm_cache,
    ).set_display_name("harvest production prompts")
    _sized(_with_mlflow_secret(_with_s3_secret(_with_llm_secret(_with_judge_keys(_with_cache_volume(harvest_task))))),
           "llm")
    harvest_task.set_caching_options(False)  # every execution reads new traces
    kubernetes.use_config_map_as_env(harvest_task, platform.MLFLOW_CONFIG_MAP_NAME, platform.MLFLOW_CONFIG_MAP_KEYS)
    with dsl.If(harvest_task.outputs["retrain"] == True, name="enough-new-records"):  # noqa: E712 - a KFP condition
        self_guided_pipeline(
            seed_uri=harvest_task.outputs["seed_uri"], fresh_questions_uri=harvest_task.outputs["fresh_questions_uri"],
            base_models=base_models, score_model=score_model, judge_model=judge_model, judges=judges,
            jury_weights=jury_weights, reference_models=reference_models, llm_base_url=llm_base_url,
            llm_concurrency=llm_concurrency, llm_cache=llm_cache, serving_name=serving_name,
            registered_model_name=registered_model_name, mlflow_tracking_uri=mlflow_tracking_uri,
            experiment_name=experiment_name,
        ).set_display_name("retrain on the new seed version")


def compile_flywheel_pipeline(output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(flywheel_pipeline, package_path=str(output))
    return output


def run_flywheel_local(workdir: str | Path, **parameters: Any) -> None:
    """Run the flywheel pipeline on this machine with kfp.local (SubprocessRunner, no venv)."""
    from kfp import local

    workdir = Path(workdir).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline-root"),
               raise_on_error=True)
    flywheel_pipeline(**{"llm_cache": str(workdir / "llm-cache"), **parameters})


def main(argv: list[str]) -> int:
    path = compile_flywheel_pipeline(argv[0] if argv else COMMITTED_FLYWHEEL_PIPELINE)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
