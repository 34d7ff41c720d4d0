"""Answer caches: get / put / delete of small JSON objects by key (the sha256 `cache_key` of a
request), in a directory (a PVC in the pipeline) or on S3, so a rerun pays only for what is missing."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Cache backends: get / put / delete of small JSON objects by key


class DirCache:
    """One JSON file per key under `root/<first two hex digits>/<key>.json` (on a PVC in the pipeline).

    Written to a temporary file in the same directory and moved into place with os.replace, which
    is atomic, so a kill -9 mid-write leaves no torn entry.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("%s: unreadable cache entry (%s); treating it as missing", path, exc)
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Cache:
    """The same interface on S3 (or MinIO): one object per key under s3://bucket/prefix/.

    A PUT is atomic in S3, so there are no torn entries either. The client is data/s3.s3_client's
    (the configured endpoint, credentials from the usual AWS_* variables) unless one is given.
    """

    def __init__(self, url: str, client: Any = None) -> None:
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
        if not match:
            raise ValueError(f"cache location {url!r} is not s3://bucket/prefix")
        self.bucket, prefix = match[1], match[2].strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        if client is None:
            from selfguided.components.data.s3 import s3_client

            client = s3_client()
        self.client = client

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read().decode("utf-8"))

    def put(self, key: str, value: dict[str, Any]) -> None:
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, ContentType="application/json")

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def open_cache(location: str | None) -> DirCache | S3Cache | None:
    if not location:
        return None
    return S3Cache(location) if location.startswith("s3://") else DirCache(location)

