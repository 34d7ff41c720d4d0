"""Content hashes. Of a file (sha256, streamed): how a training file is named in a run's checkpoint
fingerprint, a trained model's manifest and a TrainJob's name. Of a seed record (`record_hash`):
its address in a seed version (data/seed_versions.py) and in the scorer's cache."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RECORD_CONTENT_FIELDS = ("category", "instruction", "input", "output")
"""What a seed record is, for its content hash (its id and any scores are not part of it)."""


def record_hash(record: dict) -> str:
    """sha256 of a seed record's content (category, instruction, input, output; a missing field
    counts as ""): the address of the record in a seed version's manifest and in the scorer's cache."""
    import json

    content = [record.get(name) or "" for name in RECORD_CONTENT_FIELDS]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()
