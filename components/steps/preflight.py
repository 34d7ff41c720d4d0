"""Step 0, preflight: before any paid or GPU work, prove that the run can finish.

A run that trains for an hour and then cannot register its models (no credentials, a read-only
user, an unreachable tracking server) or cannot judge them (no LLM endpoint, a wrong key) has
wasted the hour. This step checks, in seconds and with one line per problem:

- the MLflow tracking server is reachable and the run's credentials may write the experiment
  and the registered model (`tracking.check_tracking_access`; a local SQLite store passes);
- every LLM the run uses (scorer, judge, teachers) has an endpoint, and the endpoint answers and
  accepts the key (`llm.check_endpoint`); the offline judge needs none.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
from typing import List

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.images import CPU_IMAGE
from selfguided.components.judging.offline import OFFLINE_JUDGE_NAME

OFFLINE_MODELS = (OFFLINE_JUDGE_NAME,)


class PreflightError(RuntimeError):
    """The run cannot finish; the message says why in one line per problem."""


def run_preflight(*, tracking_uri: str, experiment_name: str, registered_model_name: str, llm_models: List[str],
                  llm_base_url: str = "") -> List[str]:
    """Check everything the run needs; returns what was checked, raises PreflightError otherwise."""
    from selfguided.components.llm.config import check_endpoint, endpoint_config
    from selfguided.components.registry.auth import TrackingAccessError, check_tracking_access

    problems, checked = [], []
    try:
        check_tracking_access(tracking_uri, experiment_name=experiment_name,
                              registered_model_name=registered_model_name)
        checked.append(f"MLflow at {tracking_uri.split('@')[-1]}: may write {experiment_name!r} and "
                       f"{registered_model_name!r}")
    except TrackingAccessError as exc:
        problems.append(str(exc))
    endpoints_checked: set[str] = set()
    for entry in dict.fromkeys(m for m in llm_models if m and m not in OFFLINE_MODELS):
        try:
            config = endpoint_config("preflight", entry, base_url=llm_base_url, concurrency=1, cache="")
            model = config.model
            where = config.resolved_base_url() or "OpenAI"
            if where not in endpoints_checked:
                check_endpoint(config)
                endpoints_checked.add(where)
            checked.append(f"LLM {model}: endpoint {where} answers")
        except (RuntimeError, ValueError) as exc:
            problems.append(str(exc))
    if problems:
        raise PreflightError("; ".join(dict.fromkeys(problems)))
    return checked


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def preflight(tracking_uri: str, experiment_name: str, registered_model_name: str, llm_models: List[str],
              llm_base_url: str) -> str:
    """Check, before any paid or GPU work, that the run can register its models and reach its LLMs.

    Args:
        tracking_uri: the MLflow tracking server the register step writes to.
        experiment_name: the experiment the run logs to (write access is checked).
        registered_model_name: the registered model the run adds versions to (write access is checked).
        llm_models: every LLM the run calls (scorer, judge, teachers); `offline-heuristic` needs none.
        llm_base_url: the OpenAI-compatible endpoint ("" = OPENAI_BASE_URL or OpenAI).

    Returns:
        What was checked, one line per check.
    """
    from selfguided.components.steps.preflight import run_preflight

    checked = run_preflight(tracking_uri=tracking_uri, experiment_name=experiment_name,
                            registered_model_name=registered_model_name, llm_models=llm_models,
                            llm_base_url=llm_base_url)
    for line in checked:
        print(f"[selfguided] preflight: {line}", flush=True)
    return "\n".join(checked)
