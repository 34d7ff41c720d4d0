"""Step 0, preflight: before any paid or GPU work, prove that the run can finish.

A run that trains for an hour and then cannot register its models (no credentials, a read-only
user, an unreachable tracking server) or cannot judge them (no LLM endpoint, a wrong key) has
wasted the hour. This step checks, in seconds and with one line per problem:

- the MLflow tracking server is reachable and the run's credentials may write the experiment
  and the registered model (`tracking.check_tracking_access`; a local SQLite store passes);
- every LLM the run uses (scorer, judge or jurors, teachers) has an endpoint, and the endpoint
  answers and accepts the key, each model on an endpoint of its own with its own key
  (`llm.check_endpoint`); the offline judge needs none;
- when the run deploys its champion, the S3 keys KServe's predictor downloads the weights with
  (the profile's read-only `selfguided-s3-readonly`, mounted into this step too) may read where MLflow writes them
  (`data.check_s3_read_access` on the server's artifact destination).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
from typing import List

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging.jury import judge_named


class PreflightError(RuntimeError):
    """The run cannot finish; the message says why in one line per problem."""


def run_preflight(*, tracking_uri: str, experiment_name: str, registered_model_name: str, llm_models: List[str],
                  llm_base_url: str = "", serving_storage: str = "") -> List[str]:
    """Check everything the run needs; returns what was checked, raises PreflightError otherwise.
    `serving_storage`: where MLflow keeps artifacts, read by the serving predictor ("" = no deploy)."""
    from selfguided.components.data.jsonl import DataError
    import os

    from selfguided.components.cluster import PREDICTOR_S3_ENV, PREDICTOR_S3_SECRET
    from selfguided.components.data.s3 import check_s3_read_access
    from selfguided.components.llm.config import check_endpoint, endpoint_config
    from selfguided.components.registry.auth import check_tracking_access
    from selfguided.components.registry.tracking_server import TrackingAccessError

    problems, checked = [], []
    try:
        check_tracking_access(tracking_uri, experiment_name=experiment_name,
                              registered_model_name=registered_model_name)
        checked.append(f"MLflow at {tracking_uri.split('@')[-1]}: may write {experiment_name!r} and "
                       f"{registered_model_name!r}")
    except TrackingAccessError as exc:
        problems.append(str(exc))
    endpoints_checked: set[tuple[str, str | None]] = set()
    for entry in dict.fromkeys(m for m in llm_models if m and judge_named(m).calls_llm):
        try:
            config = endpoint_config("preflight", entry, base_url=llm_base_url, concurrency=1, cache="")
            model = config.model
            where = config.resolved_base_url() or "OpenAI"
            if (where, config.api_key) not in endpoints_checked:  # a key of its own is checked on its own
                check_endpoint(config)
                endpoints_checked.add((where, config.api_key))
            checked.append(f"LLM {model}: endpoint {where} answers")
        except (RuntimeError, ValueError) as exc:
            problems.append(str(exc))
    predictor_keys = {key: os.environ[name] for key, name in PREDICTOR_S3_ENV.items() if os.environ.get(name)}
    if serving_storage.startswith("s3://") and len(predictor_keys) < len(PREDICTOR_S3_ENV):
        checked.append(f"serving storage {serving_storage}: no {PREDICTOR_S3_SECRET} keys mounted (an IAM role for "
                       f"the predictor?): its read access is not checked")
    elif serving_storage.startswith("s3://"):
        try:
            checked.append(f"serving storage {check_s3_read_access(serving_storage, predictor_keys)}")
        except DataError as exc:
            problems.append(f"KServe's predictor downloads the champion's weights with the {PREDICTOR_S3_SECRET} keys, "
                            f"and {exc}: give them read access to MLflow's artifact bucket (docs/run-on-kubeflow.md, "
                            "\"Serving the champion\")")
    elif serving_storage:
        checked.append(f"serving storage {serving_storage}: not S3, not checked")
    if problems:
        raise PreflightError("; ".join(dict.fromkeys(problems)))
    return checked


@component(base_image=CPU_IMAGE, install_kfp_package=False)
def collect_llm_models(score_model: str, judge_model: str, judges: str, reference_models: List[str]) -> List[str]:
    """Every LLM the run calls, for the preflight: the scorer, the judge (or every juror) and the teachers."""
    jurors = [j.strip() for j in judges.split(",") if j.strip()]
    return [score_model, *(jurors or [judge_model]), *reference_models]


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def preflight(tracking_uri: str, experiment_name: str, registered_model_name: str, llm_models: List[str],
              llm_base_url: str, serving_name: str = "") -> str:
    """Check, before any paid or GPU work, that the run can register its models and reach its LLMs.

    Args:
        tracking_uri: the MLflow tracking server the register step writes to.
        experiment_name: the experiment the run logs to (write access is checked).
        registered_model_name: the registered model the run adds versions to (write access is checked).
        llm_models: every LLM the run calls (scorer, judge, teachers); `offline-heuristic` needs none.
        llm_base_url: the OpenAI-compatible endpoint ("" = OPENAI_BASE_URL or OpenAI).
        serving_name: the InferenceService the run deploys to ("" = none): then the S3 keys of the
            step (the predictor's) must read MLFLOW_ARTIFACTS_DESTINATION (ConfigMap selfguided-mlflow).

    Returns:
        What was checked, one line per check.
    """
    import os

    from selfguided.components.steps.preflight import run_preflight

    storage = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "") if serving_name else ""
    checked = run_preflight(tracking_uri=tracking_uri, experiment_name=experiment_name,
                            registered_model_name=registered_model_name, llm_models=llm_models,
                            llm_base_url=llm_base_url, serving_storage=storage)
    for line in checked:
        print(f"[selfguided] preflight: {line}", flush=True)
    return "\n".join(checked)
