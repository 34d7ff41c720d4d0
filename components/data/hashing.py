"""The content hash of a file (sha256, streamed): how a training file is named in a run's
checkpoint fingerprint, a trained model's manifest and a TrainJob's name."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
