"""`selfguided models | promote | rollback`: the registry by hand, with the same evidence rules as the pipeline.

`promote VERSION` goes through gate v2 (the version's judgments paired with the current
champion's, by the same judge) unless `--force`; who and why are recorded in the version's tags.
`rollback [VERSION]` moves `champion` back to the version it replaced (or to VERSION).
"""

from __future__ import annotations

import argparse
import getpass
import os

from selfguided.components.registry.names import REGISTERED_MODEL_NAME


def _tracking_uri(args: argparse.Namespace) -> str:
    from selfguided.pipelines.workdir import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=REGISTERED_MODEL_NAME, help="registered model (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local "
                        "run's .selfguided/mlflow.db)")


def _who(args: argparse.Namespace) -> str:
    return args.by or os.environ.get("USER") or getpass.getuser()


def run_models(args: argparse.Namespace) -> int:
    from selfguided.components.registry.aliases import list_versions

    rows = list_versions(_tracking_uri(args), args.name)
    if not rows:
        print(f"{args.name}: no versions yet")
        return 0
    print(f"{'version':>7}  {'aliases':<22} {'model':<32} {'overall [95% CI]':<22} promotion")
    for r in rows:
        low, high = r["overall_ci"]
        score = "-" if r["overall"] is None else f"{r['overall']:.2f}" + (
            f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")
        note = r["promotion"] + (f" | rolled back: {r['rolled_back']}" if r["rolled_back"] else "")
        print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {r['base_model'] + '/' + r['arm']:<32} "
              f"{score:<22} {note[:160]}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from selfguided.components.registry.aliases import promote_version

    decision = promote_version(_tracking_uri(args), args.version, args.name, force=args.force, by=_who(args),
                               reason=args.reason or "")
    print(("promoted" if decision.promote else "not promoted") + f": v{args.version} of {args.name}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    return 0 if decision.promote else 1


def run_rollback(args: argparse.Namespace) -> int:
    from selfguided.components.registry.aliases import rollback_champion

    version = rollback_champion(_tracking_uri(args), args.name, args.version, by=_who(args), reason=args.reason or "")
    print(f"champion of {args.name} is now v{version}")
    return 0


def add_registry_parsers(subparsers) -> None:
    models = subparsers.add_parser("models", help="list registered versions with aliases, scores and the gate's reasons",
                                   description="List every version of the registered model, newest first.")
    _common(models)
    models.set_defaults(func=run_models)

    promote = subparsers.add_parser("promote", help="make a version the champion (through the gate unless --force)",
                                    description="Promote VERSION to champion if gate v2 says so: its judgments are "
                                    "paired with the current champion's (same judge required).")
    promote.add_argument("version", help="the version number")
    promote.add_argument("--force", action="store_true", help="skip the gate (recorded as forced)")
    promote.add_argument("--reason", help="why, recorded in the version's promotion tag")
    promote.add_argument("--by", help="who (default: $USER)")
    _common(promote)
    promote.set_defaults(func=run_promote)

    rollback = subparsers.add_parser("rollback", help="move champion back to the version it replaced (or VERSION)")
    rollback.add_argument("version", nargs="?", help="the version to make champion (default: the previous champion)")
    rollback.add_argument("--reason", help="why, recorded on the version that loses the alias")
    rollback.add_argument("--by", help="who (default: $USER)")
    _common(rollback)
    rollback.set_defaults(func=run_rollback)

