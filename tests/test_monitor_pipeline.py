"""The monitor pipeline (pipelines/monitor_pipeline.py): the committed YAML is the code's, and it runs
locally with kfp.local: green on undegraded traffic, failed by its alert step on a drift."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from selfguided.pipelines.monitor_pipeline import COMMITTED_MONITOR_PIPELINE, run_monitor_local
from test_monitor import Store, _champion, _serve


def test_committed_monitor_pipeline_matches_the_code(tmp_path):
    """CI fails when the monitor pipeline changed without `make compile`; recompiling fixes it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFGUIDED_")}
    fresh = tmp_path / "fresh.yaml"
    subprocess.run([sys.executable, "-m", "selfguided.pipelines.monitor_pipeline", str(fresh)], check=True, env=env,
                   capture_output=True)
    assert fresh.read_text() == COMMITTED_MONITOR_PIPELINE.read_text(), (
        "pipelines/selfguided_monitor.yaml is out of date: run `make compile` and commit the result")
    spec = next(yaml.safe_load_all(fresh.read_text()))
    assert spec["pipelineInfo"]["name"] == "selfguided-monitor"
    assert set(spec["root"]["dag"]["tasks"]) == {"monitor-production", "monitor-alert"}


def test_monitor_pipeline_runs_locally_and_its_alert_step_fails_on_drift(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = Store(uri, "watched", "production", "monitor")
    store.version = _champion(uri, store.model)
    _serve(store, store.version, requests=60)
    parameters = dict(mlflow_tracking_uri=uri, registered_model_name=store.model, production_experiment=store.production,
                      monitor_experiment=store.monitor, per_category=8)
    result = run_monitor_local(tmp_path / "work", **parameters)
    assert result["drifted"] == [] and result["execution"] == 1 and result["counts"]["traces_read"] == 60
    _serve(store, store.version, requests=60, seed=9, degraded="blog")
    with pytest.raises(RuntimeError, match="monitor-alert"):
        run_monitor_local(tmp_path / "work", **parameters)
    client = MlflowClient(uri)
    (latest,) = client.search_runs([client.get_experiment_by_name(store.monitor).experiment_id],
                                   filter_string="tags.`monitor.execution` = '2'")
    assert latest.data.metrics["drift/blog"] == 1.0 and latest.data.metrics["monitor/findings"] == 1.0
