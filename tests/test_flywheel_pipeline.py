"""The flywheel (pipelines/flywheel_pipeline.py): harvest, then the training pipeline nested under
dsl.If(retrain), wired to the harvest's outputs; the harvest step's function on replayed traffic
below and at the retrain threshold; a harvest that makes no version still moves the watermark; the
pipeline under kfp.local with retrain false (the training pipeline never runs in a test)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from kfp.dsl import Dataset, Markdown
from llm_server import FakeOpenAI
from mlflow import MlflowClient
from registry_fixtures import empty_store  # noqa: F401  (fixture)
from test_harvest import _serve

from selfguided.components.data.seed_versions import SeedStore
from selfguided.components.registry.seed_lineage import HarvestMark, harvest_watermark
from selfguided.components.steps.harvest import HarvestConfig, harvest, run_harvest
from selfguided.pipelines.compile import COMMITTED_PIPELINE
from selfguided.pipelines.flywheel_pipeline import COMMITTED_FLYWHEEL_PIPELINE, run_flywheel_local

BASE = {"id": "s1", "category": "poem", "instruction": "가을 밤하늘을 노래하는 시를 지어 주세요", "input": "",
        "output": "별이 빛나는 밤"}


def test_the_compiled_flywheel_nests_training_under_the_retrain_condition():
    """The committed spec (tests/test_pipeline_compile.py checks it is the code's): harvest, then a
    condition on its `retrain` output holding the training pipeline (its own DAG), whose seed_uri and
    fresh_questions_uri are the harvest's outputs."""
    spec, platform_spec = yaml.safe_load_all(COMMITTED_FLYWHEEL_PIPELINE.read_text())
    assert spec["pipelineInfo"]["name"] == "selfguided-flywheel"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"harvest", "condition-1"}
    assert not tasks["harvest"]["cachingOptions"].get("enableCache")  # every execution reads new traces
    condition = tasks["condition-1"]
    assert condition["dependentTasks"] == ["harvest"]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--harvest-retrain'] == true"
    for output in ("retrain", "seed_uri", "fresh_questions_uri"):
        assert condition["inputs"]["parameters"][f"pipelinechannel--harvest-{output}"] == {
            "taskOutputParameter": {"outputParameterKey": output, "producerTask": "harvest"}}
    (nested,) = spec["components"]["comp-condition-1"]["dag"]["tasks"].values()
    assert nested["componentRef"]["name"] == "comp-selfguided"
    wired = nested["inputs"]["parameters"]
    assert wired["seed_uri"] == {"componentInputParameter": "pipelinechannel--harvest-seed_uri"}
    assert wired["fresh_questions_uri"] == {"componentInputParameter": "pipelinechannel--harvest-fresh_questions_uri"}
    training = spec["components"]["comp-selfguided"]["dag"]["tasks"]
    assert {"preflight", "score", "split", "compare", "register", "deploy"} <= set(training)
    outputs = spec["components"]["comp-harvest"]["outputDefinitions"]["parameters"]
    assert outputs["retrain"]["parameterType"] == "BOOLEAN" and outputs["new_records"]["parameterType"] == "NUMBER_INTEGER"
    # The nested training tasks keep their cluster settings (GPU pool, secrets) as in the training pipeline's own YAML.
    executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    training_executors = list(yaml.safe_load_all(COMMITTED_PIPELINE.read_text()))[1]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    for name in ("exec-finetune", "exec-generate", "exec-register", "exec-score"):
        assert executors[name] == training_executors[name], name
    secrets = {s["secretName"] for s in executors["exec-harvest"]["secretAsEnv"]}
    assert {"selfguided-openai", "selfguided-s3", "selfguided-mlflow-auth"} <= secrets


def _outputs(tmp_path, name):
    return (Markdown(name="report", uri=str(tmp_path / f"{name}-report.md"), metadata={}),
            Dataset(name="hard_prompts", uri=str(tmp_path / f"{name}-hard.jsonl"), metadata={}))


def test_the_harvest_step_decides_retrain_at_n_new_records_and_a_harvest_without_a_version_moves_the_watermark(
        tmp_path, empty_store, monkeypatch):  # noqa: F811
    """The component's function (as the flywheel runs it), N = 3 against the champion's seed version:
    2 new records -> retrain false; 1 more (and 1 held out) -> true, with the version's records and the
    held-out slice beside it as outputs. Then traffic that is all left out makes no version, and the
    next harvest does not read it again (the execution run's watermark)."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    root = str(tmp_path / "seeds")
    store = SeedStore(root)
    base, _ = store.save([BASE])
    client = MlflowClient(uri)
    client.create_registered_model("flywheel-model")
    champion = client.create_model_version("flywheel-model", source=str(tmp_path / "m"), tags={"seed_version": base.version})
    client.set_registered_model_alias("flywheel-model", "champion", champion.version)
    with FakeOpenAI() as server:
        step = dict(tracking_uri=uri, seed_store=root, teacher="gpt-4o", score_model="gpt-4o",
                    production_experiment="selfguided-production", experiment_name="selfguided",
                    registered_model_name="flywheel-model", min_new_records=3, holdout_fraction=0.1, hard_below=5.0,
                    llm_base_url=server.base_url, llm_concurrency=2, llm_cache=str(tmp_path / "cache"))
        _serve(uri, [("poem", "봄비 내리는 오후를 그린 시를 써 주세요"), ("news", "시장 개장 소식을 짧은 기사로 써 주세요")])
        report, hard = _outputs(tmp_path, "one")  # the first harvest grows the champion's seed version
        one = harvest.python_func(**step, extends=base.version, report=report, hard_prompts=hard)
        assert (one.retrain, one.new_records) == (False, 2) and one.seed_version.startswith("seed-")
        assert one.seed_uri == f"{root}/{one.seed_version}/records.jsonl" and one.fresh_questions_uri == ""
        assert server.chat_requests == 2 + 2  # teacher and scorer, once per prompt
        assert "retrain: 2 new records (< 3): waiting" in open(report.path, encoding="utf-8").read()

        server.reset_counters()
        _serve(uri, [("news", "도서관 야간 개방 소식을 기사로 써 주세요"), ("poem", "겨울 바다를 그리는 시를 써 주세요")])
        report, hard = _outputs(tmp_path, "two")
        two = harvest.python_func(**step, extends="", report=report, hard_prompts=hard)
        text = open(report.path, encoding="utf-8").read()
        assert "2 production prompts read" in text and f"the newest trace the harvest that made {one.seed_version}" in text
        assert (two.retrain, two.new_records) == (True, 3) and server.chat_requests == 1 + 1  # 겨울 바다 held out
        assert f"retrain: 3 new records since the champion's seed version {base.version} (>= 3)" in text
        assert two.seed_uri == f"{root}/{two.seed_version}/records.jsonl"
        assert two.fresh_questions_uri == f"{root}/{two.seed_version}/fresh-questions.jsonl"
        rows = [json.loads(line) for line in open(two.fresh_questions_uri, encoding="utf-8")]
        assert [(r["turns"][0], r["slice"]) for r in rows] == [("겨울 바다를 그리는 시를 써 주세요", "unseen"),
                                                               ("도서관 야간 개방 소식을 기사로 써 주세요", "seen")]
        assert [r["id"] for r in store.records(two.seed_version)][0] == "s1" and len(store.records(two.seed_version)) == 4

        # Traffic that is all left out (a question of the seed, and the held-out prompt again): no version...
        server.reset_counters()
        _serve(uri, [("poem", BASE["instruction"]), ("poem", "겨울 바다를 그리는 시를 써 주세요")])
        report, hard = _outputs(tmp_path, "three")
        three = harvest.python_func(**step, extends="", report=report, hard_prompts=hard)
        text = open(report.path, encoding="utf-8").read()
        assert "1  already in the seed" in text and "1  test-set question" in text and three.seed_version == ""
        assert not three.retrain and three.seed_uri == "" and server.chat_requests == 0
        mark = harvest_watermark(uri, "selfguided", "selfguided-production")
        assert mark.version == two.seed_version and not mark.made  # the line stays at two; this harvest made none
        # ... and the next harvest starts after it: nothing is read again.
        report, hard = _outputs(tmp_path, "four")
        four = harvest.python_func(**step, extends="", report=report, hard_prompts=hard)
        text = open(report.path, encoding="utf-8").read()
        assert "the newest trace the last harvest read (it made no seed version)" in text
        assert "No new traffic in selfguided-production since the watermark: no seed version made." in text
        assert f"Extends {two.seed_version}" in text and four.seed_version == "" and server.chat_requests == 0
    assert harvest_watermark(uri, "selfguided", "other-traces") == HarvestMark()


def test_the_flywheel_runs_locally_and_skips_training_when_retrain_is_false(tmp_path, empty_store):  # noqa: F811
    """kfp.local (kfp 2.17.3) runs the harvest step and the pipeline ends green without training.
    (kfp.local cannot take this branch even when retrain is true: its condition evaluator reads
    `pipelinechannel--harvest-retrain` as a pipeline input, fails to find it and skips the branch.)"""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_flywheel_local(tmp_path / "work", mlflow_tracking_uri=uri, seed_store=str(tmp_path / "seeds"),
                       min_new_records=3)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("selfguided").experiment_id],
                                filter_string="tags.row_kind = 'harvest'")
    assert run.data.tags["harvest.version"] == "" and run.data.tags["harvest.traces"] == "selfguided-production"
    (root,) = (tmp_path / "work" / "pipeline-root").iterdir()
    assert {p.name for p in root.iterdir()} == {"harvest"}  # the training pipeline's tasks never ran


@pytest.fixture(autouse=True)
def _no_stray_mlruns(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
