"""One flag vocabulary for every `selfguided` command, and the old spellings it replaced.

The vocabulary (a word means one thing everywhere):

    --seed-data        the seed-data file            --random-seed    a random number generator's seed
    --listen-host      the address a server binds    --kfp-host       the Kubeflow Pipelines API endpoint
    --tracking-uri     the MLflow tracking URI       --registered-model  the MLflow registered model's name
    --experiment       MLflow's experiment           --kfp-experiment  KFP's experiment
    --llm-concurrency  LLM requests in flight        --score-model / --judge-model  the scoring / judging LLM

`add_option` registers an option under its name and, hidden from `--help`, under the spellings it
replaced: those still work for one release and print one deprecation line on stderr. Every parser
adds its renamed options through it, so the aliasing has one owner.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Iterable

# old spelling -> its name now (the commands that had it); tests/test_cli_vocabulary.py checks that
# no command uses an old spelling as a name of its own.
RENAMED: dict[str, str] = {
    "--seed": "--seed-data (run, submit) or --random-seed (review, calibrate)",
    "--host": "--listen-host (serve) or --kfp-host (submit, upload)",
    "--mlflow-tracking-uri": "--tracking-uri",
    "--name": "--registered-model",
    "--registered-model-name": "--registered-model",
    "--experiment-name": "--experiment",
    "--model": "--score-model (score) or --judge-model (judge)",
    "--concurrency": "--llm-concurrency",
}


def deprecation_line(old: str, new: str) -> str:
    return f"selfguided: {old} is deprecated and goes in the next release; use {new}"


_WARNING_CLASSES: dict[type, type] = {}


def _warning_class(cls: type) -> type:
    """`cls` (any argparse action) that first says so when it is reached by an old spelling."""
    if cls not in _WARNING_CLASSES:
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in self.old_spellings:
                print(deprecation_line(option_string, self.option_strings[0]), file=sys.stderr)
            return cls.__call__(self, parser, namespace, values, option_string)

        _WARNING_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
    return _WARNING_CLASSES[cls]


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, *,
               old: Iterable[str] = (), **kwargs: Any) -> argparse.Action:
    """`parser.add_argument(name, **kwargs)` that also answers to each spelling in `old`, hidden
    from `--help` and saying once per use that it is deprecated. One action under several spellings,
    so `required`, flags and defaults behave the same whichever is used. Returns the action."""
    old = tuple(old)
    action = parser.add_argument(name, *old, **kwargs)
    if old:
        action.option_strings = [name]  # help, usage and error messages name it as it is now
        action.old_spellings = old
        action.__class__ = _warning_class(type(action))
    return action


def old_spellings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Old spelling -> the option it now reaches, for every hidden alias of `parser`."""
    return {string: action.option_strings[0] for string, action in parser._option_string_actions.items()
            if string not in action.option_strings}


class UsageError(ValueError):
    """Bad input on the command line: one line naming what to change; the command exits 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line (what to change, and where the options are listed), exit 2.
    Subparsers are made of the parser's own class, so every command's parser is one of these."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the command's own parser, which points at its own --help
            commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            commands.get(getattr(parsed, "command", None), self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


TRACKING_URI_HELP = ("MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local run's "
                     ".selfguided/mlflow.db in this folder)")


def add_tracking_uri(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                     help: str = TRACKING_URI_HELP) -> argparse.Action:
    """`--tracking-uri`, the one name of the MLflow store on every command."""
    return add_option(parser, "--tracking-uri", old=("--mlflow-tracking-uri",), help=help)


def missing_sqlite_store(uri: str) -> str | None:
    """The database path of a local SQLite store URI whose file does not exist (MLflow would create it
    empty there); None for any other store, or one that exists."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    return None if path == ":memory:" or os.path.isfile(path) else path


def existing_store(given: str | None) -> str:
    """The tracking URI a command reads (`given`, else $MLFLOW_TRACKING_URI, else the work folder's
    SQLite store). A SQLite store that does not exist is refused, not created: a command run from
    another folder would otherwise leave an empty ./.selfguided/mlflow.db behind and find nothing."""
    from selfguided.pipelines.workdir import default_tracking_uri

    uri = given or default_tracking_uri()
    path = missing_sqlite_store(uri)
    if path is not None:
        raise UsageError(f"no MLflow store at {path}: run `selfguided run` in this folder first, or pass "
                         "--tracking-uri (or set MLFLOW_TRACKING_URI)")
    return uri


def quiet_libraries(verbose: bool) -> None:
    """Library progress bars and shutdown chatter off unless -v/--verbose: MLflow's "Downloading
    artifacts" bars, huggingface_hub's download bars and transformers' "Loading weights" bar (both
    follow HF_HUB_DISABLE_PROGRESS_BARS, read when they are imported), and MLflow's "Flushing the
    async trace logging queue" line at exit. A variable the user set wins."""
    import logging

    if verbose:
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    logging.getLogger("mlflow.tracing.export.async_export_queue").setLevel(logging.WARNING)
