"""`selfguided canary status | promote | rollback`: the canary rollout of the champion, by hand.

On the cluster of the kubeconfig (KUBECONFIG or ~/.kube/config; in a pod, the deployer identity or
the pod's ServiceAccount), with the `champion` alias of the MLflow registry at --tracking-uri:
`status` shows the split, `promote` gives the canary 100% of traffic, `rollback` moves the alias
back and all traffic to the stable version, as one transaction (components/serving/canary_apply.py;
the monitor calls the same function with its decision).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from selfguided.components.registry.names import REGISTERED_MODEL_NAME
from selfguided.pipelines.options import add_tracking_uri

SERVICE_NAME = REGISTERED_MODEL_NAME  # serving/kserve.py DEFAULT_SERVICE_NAME, without importing the client here


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"selfguided canary {args.action}: {message}", file=sys.stderr)
    return code


def run_canary(args: argparse.Namespace) -> int:
    from selfguided.components.serving.canary import Cluster, canary_status
    from selfguided.components.serving.canary_apply import apply_canary_decision, status_lines
    from selfguided.components.serving.kserve import DeployError

    try:
        if args.action == "status":
            for line in status_lines(canary_status(Cluster(namespace=args.namespace), args.name, mode=args.mode)):
                print(line)
            return 0
        from selfguided.pipelines.workdir import default_tracking_uri

        message = apply_canary_decision(args.action, name=args.name, namespace=args.namespace,
                                        tracking_uri=args.tracking_uri or default_tracking_uri(),
                                        registered_model=args.registered_model, mode=args.mode,
                                        reasons=[args.reason] if args.reason else [],
                                        by=args.by or os.environ.get("USER") or getpass.getuser())
    except DeployError as e:
        return _fail(args, str(e), 1)
    print(message)
    return 0


def add_canary_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "canary", help="the champion's canary rollout: status, promote to 100%%, or roll back (KServe and the alias)",
        description="The canary rollout the deploy step starts (pipeline parameter canary_percent): see the split, "
        "promote the canary to 100% of traffic, or roll it back (the champion alias and the cluster, one transaction).")
    parser.add_argument("action", choices=("status", "promote", "rollback"))
    parser.add_argument("--serving-name", dest="name", default=SERVICE_NAME,
                        help="the InferenceService, as the pipeline parameter serving_name (default: %(default)s)")
    parser.add_argument("--namespace", help="its namespace (default: the kubeconfig context's)")
    parser.add_argument("--mode", choices=("Serverless", "RawDeployment"),
                        help="KServe deployment mode (default: the InferenceService's serving.kserve.io/deploymentMode "
                        "annotation, else Serverless)")
    add_tracking_uri(parser, help="MLflow tracking URI of the champion alias (default: $MLFLOW_TRACKING_URI, else "
                     "the local run's .selfguided/mlflow.db)")
    parser.add_argument("--registered-model", default=REGISTERED_MODEL_NAME,
                        help="registered model whose champion alias follows (default: %(default)s)")
    parser.add_argument("--reason", help="why, recorded on the canary's model version")
    parser.add_argument("--by", help="who (default: $USER)")
    parser.set_defaults(func=run_canary)
