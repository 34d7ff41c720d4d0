"""`selfguided data save | diff | lineage`: versioned seed data (components/data/seed_versions.py).

`save FILE` reads a seed file (the usable records, as the score step reads them), stores it as a
content-addressed version in the seed store (a folder, or `s3://bucket/prefix`) and logs it to
MLflow as a dataset with its lineage (`--extends` the version it grows from, `--source key=value`
for the traces, teacher and prompt versions it came from). `diff A B` says what changed between two
versions (or seed files): records added, removed and changed, per category. `lineage VERSION`
prints the chain of versions MLflow recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from selfguided.components.registry.names import EXPERIMENT_NAME
from selfguided.pipelines.options import UsageError, add_tracking_uri

DEFAULT_SEED_STORE = ".selfguided/seed-versions"


def seed_store_root(given: str | None = None) -> str:
    """The seed store a command uses: `--seed-store`, else $SELFGUIDED_SEED_STORE, else DEFAULT_SEED_STORE."""
    return given or os.environ.get("SELFGUIDED_SEED_STORE") or DEFAULT_SEED_STORE


def _store(args: argparse.Namespace):
    from selfguided.components.data.seed_versions import SeedStore

    return SeedStore(seed_store_root(args.seed_store))


def _manifest(store, name: str):
    """A version in the store, or a seed file read as a version (not stored)."""
    from selfguided.components.data.seed import load_seed
    from selfguided.components.data.seed_versions import VERSION_PATTERN, SeedManifest

    if VERSION_PATTERN.fullmatch(name):
        manifest = store.manifest(name)
        if manifest is None:
            raise UsageError(f"seed version {name} is not in the seed store {store.root}: pass --seed-store, "
                           "or `selfguided data save FILE` first")
        return manifest
    if Path(name).is_file():
        return SeedManifest.of(load_seed(name).records, source={"file": name})
    raise UsageError(f"{name!r} is neither a seed version (seed-<16 hex digits>) nor a seed file")


def _sources(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--source {pair!r}: write key=value, e.g. --source teacher=gpt-4o")
        out[key.strip()] = value.strip()
    return out


def run_save(args: argparse.Namespace) -> int:
    from selfguided.components.data.seed import load_seed
    from selfguided.components.data.seed_versions import diff_markdown, diff_versions

    if not Path(args.file).is_file():
        raise UsageError(f"seed file {args.file} does not exist")
    store = _store(args)
    loaded = load_seed(args.file)
    if args.extends:
        _manifest(store, args.extends)  # refused with a clear line if it is not in the store
    manifest, new = store.save(loaded.records, parent=args.extends,
                               source={"file": str(Path(args.file).resolve()), **_sources(args.source)})
    print(f"Seed version {manifest.version}: {len(manifest.records)} records"
          + ("" if new else " (already stored; its first lineage kept)") + f", in {store.location(manifest.version)}"
          + (f"; {len(loaded.rejects)} unusable record(s) left out" if loaded.rejects else ""))
    print("  " + ", ".join(f"{c} {n}" for c, n in manifest.by_category().items()))
    if manifest.parent:
        print(diff_markdown(diff_versions(store.manifest(manifest.parent), manifest)), end="")
    if not args.no_mlflow:
        from selfguided.components.registry.seed_lineage import log_seed_version
        from selfguided.pipelines.workdir import default_tracking_uri

        uri = args.tracking_uri or default_tracking_uri()
        run_id = log_seed_version(uri, args.experiment, manifest, store.location(manifest.version))
        print(f"MLflow: dataset {manifest.version} (context seed) on run {run_id} in experiment {args.experiment}")
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from selfguided.components.data.seed_versions import diff_markdown, diff_versions

    store = _store(args)
    diff = diff_versions(_manifest(store, args.a), _manifest(store, args.b))
    print(diff_markdown(diff, show=args.show), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(diff.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


def run_lineage(args: argparse.Namespace) -> int:
    from selfguided.components.registry.seed_lineage import seed_lineage
    from selfguided.pipelines.workdir import default_tracking_uri

    chain = seed_lineage(args.tracking_uri or default_tracking_uri(), args.experiment, args.version)
    if not chain:
        raise UsageError(f"seed version {args.version} was never logged to experiment {args.experiment!r}")
    for entry in chain:
        source = ", ".join(f"{k}={v}" for k, v in sorted(entry["source"].items()))
        print(f"{entry['version']}  <- {entry['parent'] or '(first)'}  run {entry['run_id']}  {source}")
    return 0


def _guarded(func):
    def run(args: argparse.Namespace) -> int:
        from selfguided.components.data.jsonl import DataError

        try:
            return func(args)
        except (UsageError, DataError) as exc:
            print(f"selfguided data {args.data_command}: {exc}", file=sys.stderr)
            return 2
    return run


def add_data_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="versioned seed data: save a version, diff two, show a lineage",
                                 description=__doc__.split("\n\n", 1)[1])
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{save,diff,lineage}")
    store_help = f"seed store: a folder or s3://bucket/prefix (default: $SELFGUIDED_SEED_STORE, else {DEFAULT_SEED_STORE})"

    save = sub.add_parser("save", help="store a seed file as a content-addressed version and log it to MLflow")
    save.add_argument("file", help="seed file (JSONL)")
    save.add_argument("--extends", metavar="VERSION", help="the seed version this one grows from (its parent)")
    save.add_argument("--source", action="append", metavar="KEY=VALUE",
                      help="where the records came from, e.g. teacher=gpt-4o, traces=<experiment>; repeatable")
    save.add_argument("--seed-store", help=store_help)
    add_tracking_uri(save)
    save.add_argument("--experiment", default=EXPERIMENT_NAME, help="MLflow experiment (default: %(default)s)")
    save.add_argument("--no-mlflow", action="store_true", help="store only; log nothing to MLflow")
    save.set_defaults(func=_guarded(run_save))

    diff = sub.add_parser("diff", help="what changed from seed version A to B (records added, removed, changed)")
    diff.add_argument("a", metavar="A", help="a seed version (seed-...) or a seed file")
    diff.add_argument("b", metavar="B", help="a seed version (seed-...) or a seed file")
    diff.add_argument("--seed-store", help=store_help)
    diff.add_argument("--show", type=int, default=10, help="records listed per kind (default: %(default)s)")
    diff.add_argument("--json", help="also write the whole diff as JSON to this file")
    diff.set_defaults(func=_guarded(run_diff))

    lineage = sub.add_parser("lineage", help="the versions a seed version grew from, as MLflow recorded them")
    lineage.add_argument("version", metavar="VERSION")
    add_tracking_uri(lineage)
    lineage.add_argument("--experiment", default=EXPERIMENT_NAME, help="MLflow experiment (default: %(default)s)")
    lineage.set_defaults(func=_guarded(run_lineage))
