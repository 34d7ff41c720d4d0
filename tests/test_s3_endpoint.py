"""One S3 endpoint for every S3 access: a seed file and the LLM cache on `s3://`, through moto's
S3 server on a non-default endpoint. There is no other S3 to reach from here (no network): a
client that ignored the configured endpoint would fail, not quietly go to AWS."""

import json

import pytest
from servers import S3_CREDENTIALS, S3_REGION, s3_server  # noqa: F401 (fixture)

from selfguided.components.data import fetch_input, load_seed, s3_client, s3_endpoint
from selfguided.components.llm.cache import open_cache


@pytest.fixture
def configured(s3_server, monkeypatch):  # noqa: F811
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    s3_server.client().create_bucket(Bucket="seeds")
    return s3_server


def test_the_endpoint_is_set_once_and_read_in_one_place(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://mlflow-minio:9000")
    assert s3_endpoint() == "http://mlflow-minio:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio-service.kubeflow:9000")
    assert s3_endpoint() == "http://minio-service.kubeflow:9000"


def test_a_seed_file_on_s3_is_read_through_the_configured_endpoint(configured, tmp_path):
    record = {"id": "s1", "category": "시", "instruction": "봄에 대한 시를 써 주세요.", "output": "봄바람이 분다.\n꽃이 핀다."}
    configured.client().put_object(Bucket="seeds", Key="korean/seed.jsonl",
                                   Body=(json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    path = fetch_input("s3://seeds/korean/seed.jsonl", "seed.jsonl", tmp_path)
    assert load_seed(path).records[0]["category"] == "poem"
    assert s3_client().meta.endpoint_url == configured.endpoint_url


def test_the_llm_cache_on_s3_goes_through_the_configured_endpoint(configured):
    cache = open_cache("s3://seeds/llm-cache")
    cache.put("k1", {"text": "답"})
    assert cache.get("k1") == {"text": "답"}
    keys = [o["Key"] for o in configured.client().list_objects_v2(Bucket="seeds")["Contents"]]
    assert "llm-cache/k1" in keys
