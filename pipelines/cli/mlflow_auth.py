"""The pipeline's MLflow identity from a shell: `create-pipeline-user` (what the mlflow-pipeline-user
Job runs: the user and its EDIT grants, idempotent) and `check` (can the current credentials write
the experiment and the registered model). The work is components/registry/auth.py's.

    python -m selfguided.pipelines.cli.mlflow_auth create-pipeline-user --tracking-uri URL \
        --experiment selfguided --registered-model korean-writing-assistant
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from selfguided.components.registry.auth import (
    ADMIN_PASSWORD_ENV, ADMIN_USERNAME_ENV, check_tracking_access, create_pipeline_user,
)
from selfguided.components.registry.names import PASSWORD_ENV, PIPELINE_AUTH_SECRET_NAME, USERNAME_ENV
from selfguided.components.registry.tracking_server import TrackingAccessError, display_uri, wait_until_reachable


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m selfguided.pipelines.cli.mlflow_auth create-pipeline-user | check`.

    Passwords come from the environment, never from the command line (where `ps` would show them).
    """
    parser = argparse.ArgumentParser(prog="python -m selfguided.pipelines.cli.mlflow_auth",
                                     description="Who may write to the MLflow tracking server, and a check that "
                                                 "the pipeline may, before it spends.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser(
        "create-pipeline-user",
        help="create or update the pipeline's MLflow user and its EDIT grants (idempotent)",
        description=(f"Admin credentials from {ADMIN_USERNAME_ENV} / {ADMIN_PASSWORD_ENV}; the pipeline user's from "
                     f"{USERNAME_ENV} / {PASSWORD_ENV} (the keys of Secret {PIPELINE_AUTH_SECRET_NAME})."))
    check = commands.add_parser(
        "check", help="check that the current credentials can write the experiment and the registered model",
        description=f"Credentials as MLflow reads them: {USERNAME_ENV} / {PASSWORD_ENV}.")
    for sub in (create, check):
        sub.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                         help="the tracking server (default: MLFLOW_TRACKING_URI)")
        # Required, as the pipeline's own parameters name them (selfguided, korean-writing-assistant by default).
        sub.add_argument("--experiment", required=True, help="the pipeline's MLflow experiment, e.g. selfguided")
        sub.add_argument("--registered-model", required=True,
                         help="the pipeline's registered model, e.g. korean-writing-assistant")
    create.add_argument("--wait-seconds", type=float, default=0.0,
                        help="wait this long for the server to come up first (a Job started with it)")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri is required (or set MLFLOW_TRACKING_URI)")

    try:
        if args.command == "check":
            check_tracking_access(args.tracking_uri, experiment_name=args.experiment,
                                  registered_model_name=args.registered_model)
            print(f"MLflow at {display_uri(args.tracking_uri)}: may write experiment '{args.experiment}' "
                  f"and registered model '{args.registered_model}'")
            return 0
        if args.wait_seconds > 0:
            wait_until_reachable(args.tracking_uri, args.wait_seconds)
        done = create_pipeline_user(
            args.tracking_uri,
            admin_username=os.environ.get(ADMIN_USERNAME_ENV, ""),
            admin_password=os.environ.get(ADMIN_PASSWORD_ENV, ""),
            username=os.environ.get(USERNAME_ENV, ""),
            password=os.environ.get(PASSWORD_ENV, ""),
            experiment_name=args.experiment,
            registered_model_name=args.registered_model,
        )
    except TrackingAccessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in done:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
