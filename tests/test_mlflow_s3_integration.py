"""The register step against real servers: `mlflow server` (SQLite backend) storing artifacts on
an S3-compatible server (moto), as on the cluster where MLflow proxies to a bucket. Versions,
metrics and aliases are read back through the MLflow API, the model files straight from S3."""

import mlflow
import pytest
from mlflow import MlflowClient
import registry_fixtures
from registry_fixtures import category_scores, make_model_dir, make_summary, write_summary

from selfguided.components.evaluation.compare_result import CompareResult
from servers import mlflow_server, s3_server  # noqa: F401  (pytest fixtures)

from selfguided.components.registry.names import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION_TAG
from selfguided.components.registry.promotion import register_candidates
from selfguided.components.registry.runs import load_candidates

pytestmark = pytest.mark.slow

NAME = "korean-writing-assistant"
HUB_BASE = "EleutherAI/polyglot-ko-1.3b"


def decided(base_model: str, promote: bool, champion_version: str | None) -> CompareResult:
    """A compare step result naming the self_guided model of `base_model` (the gate is tested in
    test_compare_step.py; here the registry follows it through a real server and S3)."""
    return registry_fixtures.decided(promote, base_model=base_model, champion_version=champion_version)


def bucket_keys(s3, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def test_register_through_mlflow_server_stores_models_on_s3(tmp_path, mlflow_server, s3_server,  # noqa: F811
                                                            monkeypatch):
    uri = mlflow_server.tracking_uri
    models = [
        make_model_dir(tmp_path / "m", arm="unscored"),
        make_model_dir(tmp_path / "m", arm="self_guided"),
        make_model_dir(tmp_path / "m", base_model=HUB_BASE, arm="self_guided"),
    ]
    summaries = [
        write_summary(tmp_path / "s" / "1.json", make_summary("tiny", "unscored", category_scores(5.0))),
        write_summary(tmp_path / "s" / "2.json", make_summary("tiny", "self_guided", category_scores(5.5))),
        write_summary(tmp_path / "s" / "3.json", make_summary(HUB_BASE, "self_guided", category_scores(6.0))),
    ]
    # The register step is told where the server keeps artifacts, so serving gets a real S3 URI.
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", f"s3://{mlflow_server.bucket}/{mlflow_server.prefix}")
    first = register_candidates(load_candidates(models, summaries), evaluation=decided("tiny", True, None),
                                tracking_uri=uri, pipeline_run="run-1", scored_data_sha256="a" * 64)

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {v.version: v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert sorted(versions, key=int) == ["1", "2", "3"]
    assert {(v.tags["base_model"], v.tags["arm"]) for v in versions.values()} == {
        ("tiny", "unscored"), ("tiny", "self_guided"), (HUB_BASE, "self_guided")}
    assert all(v.tags["pipeline_run"] == "run-1" and v.tags["train_data_sha256"] == "ab" * 32
               for v in versions.values())
    # The champion is the tiny one: promoting logs merged weights, and a hub base is not reachable here.
    assert first.challenger.label == "tiny/self_guided" and first.decision.promote
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "2"
    assert first.champion_storage_uri.startswith(f"s3://{mlflow_server.bucket}/{mlflow_server.prefix}/")
    merged_key = first.champion_storage_uri.removeprefix(f"s3://{mlflow_server.bucket}/") + "/config.json"
    assert s3_server.client().head_object(Bucket=mlflow_server.bucket, Key=merged_key)  # really there

    run = client.get_run(versions["3"].run_id)
    assert run.data.metrics["judge/overall"] == 6.0
    assert run.data.metrics["judge/novel/detail"] == 6.0
    assert run.data.metrics["train/train_loss"] == 2.5
    assert run.data.params["base_model_ref"] == HUB_BASE

    # The files are in the bucket, under the server's artifact destination, byte for byte.
    s3 = s3_server.client()
    keys = bucket_keys(s3, mlflow_server.bucket, f"{mlflow_server.prefix}/")
    model_id = versions["3"].source.removeprefix("models:/")
    adapter_key = next(k for k in keys if model_id in k and k.endswith("artifacts/model_dir/adapter/adapter_model.safetensors"))
    body = s3.get_object(Bucket=mlflow_server.bucket, Key=adapter_key)["Body"].read()
    assert body == (models[2] / "adapter" / "adapter_model.safetensors").read_bytes()
    hub_files = [k for k in keys if model_id in k]
    assert any(k.endswith("/MLmodel") for k in hub_files)
    assert any(k.endswith("artifacts/model_dir/tokenizer/tokenizer.json") for k in hub_files)
    assert not any("/artifacts/model_dir/base/" in k for k in hub_files), "a hub base must be referenced, not uploaded"
    assert not any("checkpoints" in k for k in keys)
    tiny_id = versions["1"].source.removeprefix("models:/")
    assert any(tiny_id in k and k.endswith("artifacts/model_dir/base/model.safetensors") for k in keys)

    # A second pipeline run: a worse challenger leaves the champion, a better one takes over.
    worse_dir = make_model_dir(tmp_path / "run-2", arm="self_guided")
    worse = register_candidates(
        load_candidates([worse_dir], [write_summary(tmp_path / "run-2" / "s.json",
                                                    make_summary("tiny", "self_guided", category_scores(5.9)))]),
        evaluation=decided("tiny", False, "2"), tracking_uri=uri, pipeline_run="run-2", scored_data_sha256="b" * 64)
    assert not worse.decision.promote
    assert client.get_model_version_by_alias(NAME, CHALLENGER).version == "4"
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "2"

    better_dir = make_model_dir(tmp_path / "run-3", arm="self_guided")
    better = register_candidates(
        load_candidates([better_dir], [write_summary(tmp_path / "run-3" / "s.json",
                                                     make_summary("tiny", "self_guided", category_scores(6.4)))]),
        evaluation=decided("tiny", True, "2"), tracking_uri=uri, pipeline_run="run-3", scored_data_sha256="c" * 64)
    assert better.decision.promote
    champion = client.get_model_version_by_alias(NAME, CHAMPION)
    assert champion.version == "5" and champion.tags[PREVIOUS_CHAMPION_TAG] == "2"

    # What a serving job does: fetch the champion through the server (which reads S3) and load it.
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    answers = served.predict(["가을 밤에 대한 시를 써 주세요."], params={"max_new_tokens": 4})
    assert len(answers) == 1 and isinstance(answers[0], str)
