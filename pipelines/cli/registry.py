"""`selfguided models | promote | rollback`: the registry by hand, with the same evidence rules as the pipeline.

`promote VERSION` goes through the gate (the version's judgments paired with the current
champion's, by the same judge) unless `--force`; who and why are recorded in the version's tags.
`rollback [VERSION]` moves `champion` back to the version it replaced (or to VERSION).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import textwrap

from selfguided.components.registry.names import REGISTERED_MODEL_NAME, RegistryError
from selfguided.pipelines.options import UsageError, add_option, add_tracking_uri, existing_store


def _tracking_uri(args: argparse.Namespace) -> str:
    """The store the command works on; one that does not exist is an error, never created."""
    return existing_store(args.tracking_uri)


def _common(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--registered-model", old=("--name",), default=REGISTERED_MODEL_NAME,
               help="registered model name (default: %(default)s)")
    add_tracking_uri(parser)


def _version(value: str | None) -> str | None:
    if value is not None and not (value.isdigit() and int(value) > 0):
        raise UsageError(f"VERSION {value!r} is not a version number: give one that `selfguided models` lists, e.g. 1")
    return value


@contextlib.contextmanager
def _registry_errors(args: argparse.Namespace):
    """MLflow's refusals (an unknown version, a registered model that does not exist) as one line."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        first = (str(exc.message).strip().splitlines() or ["MLflow refused the request"])[0]
        raise RegistryError(f"{first} (at {args.tracking_uri or 'the local store'}; `selfguided models` lists "
                            f"the versions of {args.registered_model})") from None


def _who(args: argparse.Namespace) -> str:
    return args.by or os.environ.get("USER") or getpass.getuser()


def run_models(args: argparse.Namespace) -> int:
    from selfguided.components.registry.aliases import list_versions

    with _registry_errors(args):
        rows = list_versions(_tracking_uri(args), args.registered_model)
    if not rows:
        print(f"{args.registered_model}: no versions yet")
        return 0
    print(f"{'version':>7}  {'aliases':<22} {'model':<32} {'overall [95% CI]':<22}")
    for r in rows:
        low, high = r["overall_ci"]
        score = "-" if r["overall"] is None else f"{r['overall']:.2f}" + (
            f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")
        print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {r['base_model'] + '/' + r['arm']:<32} "
              f"{score:<22}")
        # the gate's record in full, wrapped between words (never cut inside a figure)
        for note in (r["promotion"], f"rolled back: {r['rolled_back']}" if r["rolled_back"] else ""):
            if note:
                print(textwrap.fill(note, width=110, initial_indent=" " * 9, subsequent_indent=" " * 11,
                                    break_long_words=False, break_on_hyphens=False))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from selfguided.components.registry.aliases import promote_version

    version = _version(args.version)
    with _registry_errors(args):
        decision = promote_version(_tracking_uri(args), version, args.registered_model, force=args.force,
                                   by=_who(args), reason=args.reason or "")
    print(("promoted" if decision.promote else "not promoted") + f": v{version} of {args.registered_model}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    return 0 if decision.promote else 1


def run_rollback(args: argparse.Namespace) -> int:
    from selfguided.components.registry.aliases import rollback_champion

    with _registry_errors(args):
        version = rollback_champion(_tracking_uri(args), args.registered_model, _version(args.version), by=_who(args),
                                    reason=args.reason or "")
    print(f"champion of {args.registered_model} is now v{version}")
    return 0


def add_registry_parsers(subparsers) -> None:
    models = subparsers.add_parser("models", help="list registered versions with aliases, scores and the gate's reasons",
                                   description="List every version of the registered model, newest first.")
    _common(models)
    models.set_defaults(func=run_models)

    promote = subparsers.add_parser("promote", help="make a version the champion (through the gate unless --force)",
                                    description="Promote VERSION to champion if the gate says so: its judgments are "
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

