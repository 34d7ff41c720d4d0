"""The monitor pipeline (`selfguided-monitor`), compiled beside the main one and run on a schedule
(`selfguided schedule --pipeline monitor --cron ...`, a KFP recurring run), or locally with kfp.local
(`run_monitor_local`).

    monitor (sample the production traces since the last execution, judge, compare) -> alert

`monitor` logs everything to MLflow and shows its report in the KFP UI (a Markdown artifact);
`alert` fails the run (an ALERT line per finding in its log) when a category drifted, so a drift is
a red run in the KFP UI. Both components are thin: their bodies call components/steps/monitor.py.

    python -m selfguided.pipelines.monitor_pipeline pipelines/selfguided_monitor.yaml   # make compile
"""

import sys
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from selfguided.components.registry.names import REGISTERED_MODEL_NAME
from selfguided.components.registry.production import PRODUCTION_EXPERIMENT
from selfguided.components.steps.monitor import DEFAULT_PER_CATEGORY, DEFAULT_TOLERANCE, monitor_alert, monitor_production
from selfguided.pipelines import platform
from selfguided.components.cluster import DEPLOYER
from selfguided.pipelines.pipeline import (
    _acting_as, _sized, _with_cache_volume, _with_judge_keys, _with_llm_secret, _with_mlflow_secret, _with_s3_secret,
)

MONITOR_PIPELINE_NAME = "selfguided-monitor"
COMMITTED_MONITOR_PIPELINE = Path(__file__).with_name("selfguided_monitor.yaml")


@dsl.pipeline(name=MONITOR_PIPELINE_NAME, description="Judge a sample of the champion's production answers "
              "and compare each category with its offline evaluation; fail on a credible drift.")
def monitor_pipeline(
    registered_model_name: str = REGISTERED_MODEL_NAME,
    production_experiment: str = PRODUCTION_EXPERIMENT,
    monitor_experiment: str = "selfguided-monitor",
    model_version: str = "",
    judges: str = "",
    per_category: int = DEFAULT_PER_CATEGORY,
    tolerance: float = DEFAULT_TOLERANCE,
    random_seed: int = 0,
    webhook_url: str = "",
    llm_cache: str = f"{platform.CACHE_MOUNT_PATH}/llm-cache",
    serving_name: str = "",
    mlflow_tracking_uri: str = platform.MLFLOW_TRACKING_URI_IN_CLUSTER,
) -> str:
    """One monitor execution.

    Args:
        registered_model_name: the MLflow registered model whose champion is watched.
        production_experiment: the MLflow experiment the served answers are traced in.
        monitor_experiment: the MLflow experiment of the monitor's runs (its watermark and history).
        model_version: the version watched; "" = the champion.
        judges: the jury; "" = the judge of the version's offline evaluation.
        per_category: production answers sampled per category.
        tolerance: judge points a category may score below its offline mean before it is a finding.
        random_seed: the sample's seed.
        webhook_url: POST the alert here ("" = none).
        llm_cache: the LLM answer cache.
        serving_name: the InferenceService whose canary the monitor rolls back or promotes on its
            decision (as the deployer identity, manifests/serving); "" = decide and log only.
        mlflow_tracking_uri: MLflow tracking server.
    """
    watch = monitor_production(
        tracking_uri=mlflow_tracking_uri, registered_model_name=registered_model_name,
        production_experiment=production_experiment, monitor_experiment=monitor_experiment,
        model_version=model_version, judges=judges, per_category=per_category, tolerance=tolerance,
        random_seed=random_seed, webhook_url=webhook_url, llm_cache=llm_cache, canary_service=serving_name,
    ).set_display_name("judge production answers")
    _acting_as(watch, DEPLOYER)  # a canary rollback or promotion changes the InferenceService
    _sized(_with_mlflow_secret(_with_s3_secret(_with_llm_secret(_with_judge_keys(_with_cache_volume(watch))))), "llm")
    watch.set_caching_options(False)  # every execution reads new traces
    kubernetes.use_config_map_as_env(watch, platform.MLFLOW_CONFIG_MAP_NAME, platform.MLFLOW_CONFIG_MAP_KEYS)
    alert = monitor_alert(result=watch.outputs["Output"]).set_display_name("alert on drift")
    _sized(alert, "light").set_caching_options(False)
    return watch.outputs["Output"]


def compile_monitor_pipeline(output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(monitor_pipeline, package_path=str(output))
    return output


def run_monitor_local(workdir: str | Path, **parameters: Any) -> dict[str, Any]:
    """Run the monitor pipeline on this machine with kfp.local (SubprocessRunner, no venv); returns
    the monitor step's result. A drift fails the `alert` task: kfp.local raises, as the run would fail."""
    import json

    from kfp import local

    workdir = Path(workdir).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "pipeline-root"),
               raise_on_error=True)
    task = monitor_pipeline(**{"llm_cache": str(workdir / "llm-cache"), **parameters})
    return json.loads(task.output)


def main(argv: list[str]) -> int:
    path = compile_monitor_pipeline(argv[0] if argv else COMMITTED_MONITOR_PIPELINE)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
