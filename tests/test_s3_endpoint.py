"""One S3 endpoint for every S3 access: a seed file and the LLM cache on `s3://`, through moto's
S3 server on a non-default endpoint. There is no other S3 to reach from here (no network): a
client that ignored the configured endpoint would fail, not quietly go to AWS."""

import json

import pytest
from servers import S3_CREDENTIALS, S3_REGION, s3_server  # noqa: F401 (fixture)

from selfguided.components.data.inputs import fetch_input
from selfguided.components.data.s3 import s3_client, s3_endpoint
from selfguided.components.data.seed import load_seed
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


def test_preflight_proves_the_predictors_keys_read_mlflows_bucket(configured, tmp_path, monkeypatch):
    """KServe's predictor downloads the champion with the profile's S3 keys: the preflight lists and
    reads MLflow's artifact destination with them, under moto's IAM enforcement, before any GPU work.
    A key with read access passes; a key of the same account without it, or a bucket that is not
    there, stops the run with one line naming the URI and S3's error code."""
    import boto3
    from moto import settings

    from selfguided.components.data.jsonl import DataError
    from selfguided.components.data.s3 import check_s3_read_access
    from selfguided.components.cluster import PREDICTOR_S3_ENV
    from selfguided.components.steps.preflight import PreflightError, run_preflight

    admin = configured.client()
    admin.create_bucket(Bucket="mlflow-artifacts")
    admin.put_object(Bucket="mlflow-artifacts", Key="artifacts/1/run/merged/config.json", Body=b"{}")
    iam = boto3.client("iam", endpoint_url=configured.endpoint_url, region_name=S3_REGION,
                       aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    keys = {}
    # The reader holds read on MLflow's bucket, the stranger the same read on another bucket only.
    # "Read" is the policy AWS documents for these calls (s3:ListBucket for ListObjectsV2,
    # s3:GetObject for a ranged GetObject) plus, because moto 5.2.6 checks a ListObjectsV2 request
    # against the operation's name (moto/s3/responses.py at 5.2.6 sets the request's IAM action to
    # "ListObjectsV2"), that name too: with both, every moto that pyproject.toml allows (5.2.4, 5.2.5
    # and 5.2.6 checked) enforces the same two policies. GetObject is one name in both schemes.
    # The lister may list MLflow's bucket but not read an object in it.
    read = ["s3:ListBucket", "s3:GetObject", "s3:ListObjectsV2"]
    for user, bucket, actions in (("reader", "mlflow-artifacts", read), ("stranger", "other-bucket", read),
                                  ("lister", "mlflow-artifacts", ["s3:ListBucket", "s3:ListObjectsV2"])):
        iam.create_user(UserName=user)
        resource = f"arn:aws:s3:::{bucket}"
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": [resource, resource + "/*"]}]}
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # from here on moto enforces IAM

    def as_user(user):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[user]["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[user]["SecretAccessKey"])
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3 keeps the first credentials it resolved
        # the preflight task gets the predictor's keys (selfguided-s3-readonly) under names of their own
        monkeypatch.setenv(PREDICTOR_S3_ENV["AWS_ACCESS_KEY_ID"], keys[user]["AccessKeyId"])
        monkeypatch.setenv(PREDICTOR_S3_ENV["AWS_SECRET_ACCESS_KEY"], keys[user]["SecretAccessKey"])

    as_user("reader")
    assert "listed and read" in check_s3_read_access("s3://mlflow-artifacts/artifacts")
    checked = run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e",
                            registered_model_name="m", llm_models=[], serving_storage="s3://mlflow-artifacts/artifacts")
    assert any(line.startswith("serving storage s3://mlflow-artifacts/artifacts: listed and read") for line in checked)
    as_user("stranger")
    with pytest.raises(PreflightError, match=r"selfguided-s3-readonly keys, and s3://mlflow-artifacts/artifacts cannot be read "
                                             r"with these S3 credentials at http://127\.0\.0\.1:\d+ \(AccessDenied\)"):
        run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e", registered_model_name="m",
                      llm_models=[], serving_storage="s3://mlflow-artifacts/artifacts")
    # the pipeline's own (read-write) keys are not what the predictor uses: a stranger as the
    # pipeline with reader keys mounted for the predictor passes, and without them nothing is claimed
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["stranger"]["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["stranger"]["SecretAccessKey"])
    monkeypatch.setenv(PREDICTOR_S3_ENV["AWS_ACCESS_KEY_ID"], keys["reader"]["AccessKeyId"])
    monkeypatch.setenv(PREDICTOR_S3_ENV["AWS_SECRET_ACCESS_KEY"], keys["reader"]["SecretAccessKey"])
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    checked = run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e",
                            registered_model_name="m", llm_models=[], serving_storage="s3://mlflow-artifacts/artifacts")
    assert any("listed and read" in line for line in checked)
    monkeypatch.delenv(PREDICTOR_S3_ENV["AWS_ACCESS_KEY_ID"])
    checked = run_preflight(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment_name="e",
                            registered_model_name="m", llm_models=[], serving_storage="s3://mlflow-artifacts/artifacts")
    assert any("no selfguided-s3-readonly keys mounted" in line for line in checked)
    as_user("lister")  # listing alone is not reading: the ranged GetObject is refused
    with pytest.raises(DataError, match=r"s3://mlflow-artifacts/artifacts cannot be read .* \(AccessDenied\)"):
        check_s3_read_access("s3://mlflow-artifacts/artifacts")
    # a first run: nothing stored under the prefix yet, and the line says read access is unproven
    assert "not proven" in check_s3_read_access("s3://mlflow-artifacts/empty-prefix")
    as_user("reader")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    with pytest.raises(DataError, match=r"s3://no-such-bucket/x cannot be read .* \(NoSuchBucket\)"):
        check_s3_read_access("s3://no-such-bucket/x")
