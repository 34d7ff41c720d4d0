"""Versioned seed data: every seed version content-addressed, stored, and compared.

A seed version is a multiset of seed records, named by its content: the manifest lists each
record's content hash (data.hashing.record_hash: category, instruction, input, output), id and
category, and the version id is `seed-` + the first 16 hex digits of the sha256 of the sorted
hashes. The same records in any order are the same version; one changed character is another.

The manifest also says where the version came from: `parent` (the version it extends, or None) and
`source` (free-form strings: the traces, teacher and prompt versions it was harvested with, the
file it was read from). Lineage in MLflow is registry/seed_lineage.py's job.

A store (`SeedStore`) keeps `<root>/<version>/manifest.json` and `<root>/<version>/records.jsonl`;
the root is a local folder or `s3://bucket/prefix` (through data/s3.s3_client). Saving a version
that is already there writes nothing (content-addressed).

`diff_versions(a, b)` says what changed from a to b: records added, removed, and changed (the same
id, other content), with counts per category. `new_records(newest, base)` counts the records of a
version that another lacks (the retrain trigger: records since the champion's seed version), and
`resolve_seed_data` turns a version name given as seed data into where its records are.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from selfguided.components.data.hashing import record_hash
from selfguided.components.data.jsonl import DataError

VERSION_PATTERN = re.compile(r"seed-[0-9a-f]{16}")


def version_id(hashes: Iterable[str]) -> str:
    """The version of a multiset of record hashes (order does not matter, duplicates do)."""
    return "seed-" + hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


@dataclass
class SeedManifest:
    """One seed version: its records' hashes, ids and categories, and where it came from."""

    version: str
    records: list[dict[str, str]]
    """{"hash", "id", "category"} per record, in the order they were saved."""
    parent: str | None = None
    source: dict[str, str] = field(default_factory=dict)
    created: str = ""

    @classmethod
    def of(cls, records: list[Mapping[str, Any]], *, parent: str | None = None,
           source: Mapping[str, str] | None = None) -> SeedManifest:
        entries = [{"hash": record_hash(dict(r)), "id": str(r.get("id") or ""), "category": str(r.get("category") or "")}
                   for r in records]
        return cls(version_id(e["hash"] for e in entries), entries, parent, dict(source or {}),
                   datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def by_category(self) -> dict[str, int]:
        return dict(sorted(Counter(e["category"] for e in self.records).items()))

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "parent": self.parent, "source": self.source, "created": self.created,
                "count": len(self.records), "by_category": self.by_category(), "records": self.records}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeedManifest:
        return cls(str(data["version"]), [dict(r) for r in data["records"]], data.get("parent"),
                   dict(data.get("source") or {}), str(data.get("created") or ""))


class SeedStore:
    """Seed versions under a local folder or `s3://bucket/prefix`."""

    def __init__(self, root: str | Path, client: Any = None) -> None:
        self.root = str(root)
        self._client = client
        match = re.fullmatch(r"s3://([^/]+)/?(.*)", self.root)
        self.bucket, self.prefix = (match[1], match[2].strip("/")) if match else (None, "")

    def _s3(self) -> Any:
        if self._client is None:
            from selfguided.components.data.s3 import s3_client

            self._client = s3_client()
        return self._client

    def _read(self, version: str, name: str) -> str | None:
        if self.bucket:
            key = "/".join(p for p in (self.prefix, version, name) if p)
            try:
                return self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read().decode("utf-8")
            except self._s3().exceptions.NoSuchKey:
                return None
        path = Path(self.root) / version / name
        return path.read_text(encoding="utf-8") if path.exists() else None

    def _write(self, version: str, name: str, text: str) -> None:
        if self.bucket:
            key = "/".join(p for p in (self.prefix, version, name) if p)
            self._s3().put_object(Bucket=self.bucket, Key=key, Body=text.encode("utf-8"))
            return
        path = Path(self.root) / version / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)

    def save(self, records: list[Mapping[str, Any]], *, parent: str | None = None,
             source: Mapping[str, str] | None = None) -> tuple[SeedManifest, bool]:
        """Store `records` as a version; returns its manifest and whether it is new (an existing
        version keeps its first manifest: its lineage is what it was saved with)."""
        if parent is not None and self.manifest(parent) is None:
            raise DataError(f"seed version {parent!r} (the parent) is not in {self.root}")
        manifest = SeedManifest.of(list(records), parent=parent, source=source)
        existing = self.manifest(manifest.version)
        if existing is not None:
            return existing, False
        self._write(manifest.version, "records.jsonl",
                    "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records))
        self._write(manifest.version, "manifest.json", json.dumps(manifest.to_json(), ensure_ascii=False, indent=1))
        return manifest, True

    def manifest(self, version: str) -> SeedManifest | None:
        text = self._read(version, "manifest.json") if VERSION_PATTERN.fullmatch(version) else None
        return SeedManifest.from_json(json.loads(text)) if text else None

    def records(self, version: str) -> list[dict[str, Any]]:
        text = self._read(version, "records.jsonl")
        if text is None:
            raise DataError(f"seed version {version!r} is not in {self.root}")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def location(self, version: str, name: str = "records.jsonl") -> str:
        return f"{self.root.rstrip('/')}/{version}/{name}"

    def attach(self, version: str, name: str, text: str) -> str:
        """Keep a file beside a stored version (e.g. the held-out questions of the harvest that made
        it: where a cluster run can read them); returns its location. Not part of the version's content."""
        if self.manifest(version) is None or name in ("records.jsonl", "manifest.json") or "/" in name:
            raise DataError(f"cannot attach {name!r} to seed version {version!r} in {self.root}")
        self._write(version, name, text)
        return self.location(version, name)


@dataclass
class SeedDiff:
    """What changed from seed version `a` to `b`."""

    a: str
    b: str
    added: list[dict[str, str]]
    removed: list[dict[str, str]]
    changed: list[tuple[dict[str, str], dict[str, str]]]
    """(the record in a, the record in b): the same id, other content."""
    unchanged: int

    def by_category(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {"added": 0, "removed": 0, "changed": 0})
        for entry in self.added:
            counts[entry["category"]]["added"] += 1
        for entry in self.removed:
            counts[entry["category"]]["removed"] += 1
        for _, entry in self.changed:
            counts[entry["category"]]["changed"] += 1
        return dict(sorted(counts.items()))

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "added": self.added, "removed": self.removed,
                "changed": [{"a": x, "b": y} for x, y in self.changed], "unchanged": self.unchanged,
                "by_category": self.by_category()}


def _excess(entries: list[dict[str, str]], counts: Counter) -> list[dict[str, str]]:
    """The first counts[hash] entries of each hash."""
    left, out = Counter(counts), []
    for entry in entries:
        if left[entry["hash"]] > 0:
            left[entry["hash"]] -= 1
            out.append(entry)
    return out


def diff_versions(a: SeedManifest, b: SeedManifest) -> SeedDiff:
    """Records of b not in a (by content hash) are added, or changed when a had a record of that id
    that b no longer has; records of a not in b are removed unless changed. Duplicates count."""
    left, right = Counter(e["hash"] for e in a.records), Counter(e["hash"] for e in b.records)
    gone, new = _excess(a.records, left - right), _excess(b.records, right - left)
    gone_by_id: dict[str, list[dict[str, str]]] = defaultdict(list)
    for entry in gone:
        if entry["id"]:
            gone_by_id[entry["id"]].append(entry)
    changed, added = [], []
    for entry in new:
        if gone_by_id.get(entry["id"]):
            changed.append((gone_by_id[entry["id"]].pop(0), entry))
        else:
            added.append(entry)
    matched = {id(x) for x, _ in changed}
    removed = [e for e in gone if id(e) not in matched]
    return SeedDiff(a.version, b.version, added, removed, changed, sum((left & right).values()))


def diff_markdown(diff: SeedDiff, *, show: int = 10) -> str:
    """The diff as text: totals, per category counts, and the first `show` records of each kind."""
    lines = [f"Seed {diff.a} -> {diff.b}: {len(diff.added)} added, {len(diff.removed)} removed, "
             f"{len(diff.changed)} changed, {diff.unchanged} unchanged", ""]
    if diff.by_category():
        lines += ["| category | added | removed | changed |", "|---|---|---|---|"]
        lines += [f"| {c} | {n['added']} | {n['removed']} | {n['changed']} |" for c, n in diff.by_category().items()]
        lines.append("")
    for kind, entries in (("added", diff.added), ("removed", diff.removed)):
        for e in entries[:show]:
            lines.append(f"{'+' if kind == 'added' else '-'} {e['id'] or '(no id)'} [{e['category']}] {e['hash'][:12]}")
    for x, y in diff.changed[:show]:
        lines.append(f"~ {y['id']} [{y['category']}] {x['hash'][:12]} -> {y['hash'][:12]}")
    return "\n".join(lines).rstrip() + "\n"


def new_records(newest: SeedManifest, base: SeedManifest | None) -> int:
    """How many records of `newest` are not in `base`, by content hash (an extra copy counts); every
    record of `newest` when there is no base (no champion, or one trained from no known version)."""
    if base is None:
        return len(newest.records)
    return sum((Counter(e["hash"] for e in newest.records) - Counter(e["hash"] for e in base.records)).values())


def resolve_seed_data(value: str, store_root: str) -> str:
    """Seed data as given (`--seed-data`): a version name (`seed-<16 hex>`) becomes its records'
    location in the store at `store_root`; anything else (a path, an s3:// URI, "") is returned as is."""
    if not VERSION_PATTERN.fullmatch(value or ""):
        return value
    store = SeedStore(store_root)
    if store.manifest(value) is None:
        raise DataError(f"seed version {value} is not in the seed store {store_root} (SELFGUIDED_SEED_STORE sets it)")
    return store.location(value)
