"""S3 as every step reaches it: one endpoint setting, one client factory (seed and question files,
the LLM cache), and the free check that this process may read a bucket."""

from __future__ import annotations

import os

from selfguided.components.data.jsonl import DataError

S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    """The S3 endpoint every S3 access of every step uses: AWS_ENDPOINT_URL_S3 (set once, in the
    cluster from the `selfguided-s3` Secret's optional key of that name: Kubeflow's MinIO or
    SeaweedFS, a corporate S3), else MLFLOW_S3_ENDPOINT_URL, else AWS itself (None)."""
    return next((os.environ[v] for v in S3_ENDPOINT_VARIABLES if os.environ.get(v)), None)


def s3_client(credentials: dict[str, str] | None = None):
    """The one boto3 S3 client factory: seed and question files, the LLM cache. MLflow's own S3
    access follows the same variable (botocore reads AWS_ENDPOINT_URL_S3 when no endpoint is given).
    `credentials` ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}): other keys than this process's."""
    import boto3  # only needed for S3

    if credentials:
        return boto3.client("s3", endpoint_url=s3_endpoint(), aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])
    return boto3.client("s3", endpoint_url=s3_endpoint())


def check_s3_read_access(uri: str, credentials: dict[str, str] | None = None) -> str:
    """Prove the S3 credentials of this process (or `credentials`) may list and read under `s3://bucket/prefix`, for
    almost free: one ListObjectsV2 of one key, then a ranged GetObject of that key's first byte when
    there is one. A GET, not a HEAD: under SSE-KMS only a GET proves `kms:Decrypt`, which is what
    KServe's storage initializer needs. An empty prefix (a first run) proves listing only, and the
    returned line says so. Raises DataError in one line naming the URI, the endpoint and S3's error code."""
    import botocore.exceptions

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise DataError(f"{uri}: expected s3://BUCKET[/PREFIX]")
    where = s3_endpoint() or "AWS S3"
    client = s3_client(credentials)
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/" if prefix else "", MaxKeys=1)
        first = [o["Key"] for o in listed.get("Contents", []) if o.get("Size", 1) > 0]
        if first:
            client.get_object(Bucket=bucket, Key=first[0], Range="bytes=0-0")["Body"].read()
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise DataError(f"{uri} cannot be read with these S3 credentials at {where} ({code})") from None
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise DataError(f"{uri} cannot be read at {where} ({type(exc).__name__}: {exc})") from None
    if not first:
        return (f"{uri}: listed at {where}; empty so far, so reading (GetObject, kms:Decrypt) is not proven "
                f"until a model is stored there")
    return f"{uri}: listed and read at {where}"
