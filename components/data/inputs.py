"""Where a step's input file comes from: the sample bundled with the package, S3, or a local path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from selfguided.components.data.jsonl import DataError
from selfguided.components.data.s3 import s3_client

SAMPLE_SEED = "seed.jsonl"
SAMPLE_QUESTIONS = "questions.jsonl"


def sample_path(name: str) -> Path:
    """Path of a sample file bundled with the package (`seed.jsonl`, `questions.jsonl`)."""
    return Path(str(resources.files("selfguided.components") / "sample_data" / name))


def fetch_input(uri: str, default_sample: str, workdir: str | Path) -> Path:
    """Resolve a step's input location to a local file.

    "" means the sample bundled with the package; `s3://bucket/key` is downloaded through
    `s3_client` (the configured endpoint, credentials from the usual AWS_* variables); anything
    else is a local path (in a cluster: a mounted volume).
    """
    if not uri:
        return sample_path(default_sample)
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise DataError(f"{uri}: expected s3://BUCKET/KEY")
        target = Path(workdir) / Path(key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        s3_client().download_file(bucket, key, str(target))
        return target
    path = Path(uri)
    if not path.exists():
        raise DataError(f"{uri}: file not found")
    return path
