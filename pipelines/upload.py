"""`selfguided upload`: publish the compiled pipeline as a new version of a named pipeline.

What CI runs on a push to main or a tag (.github/workflows/ci.yml): the committed
`pipelines/selfguided_pipeline.yaml`, which CI has just proved equal to what the code compiles to,
becomes a new version of the pipeline `--pipeline NAME` on a Kubeflow Pipelines host, through
`kfp.Client` and the KFP v2beta1 REST API. The pipeline is created the first time. Every version,
the first one included, carries the version name (by default the package version and the git
commit, e.g. `0.1.0-3f9c2ab1`), so the Kubeflow UI tells which code each version is.

Credentials: a bearer token from the KFP_TOKEN environment variable (never a command-line
argument, which would show in process lists and CI logs), or none for a port-forwarded or
in-cluster endpoint.
"""

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from selfguided.components.images import PACKAGE_VERSION
from selfguided.pipelines.options import add_option
from selfguided.pipelines.kfp_backend import KfpBackendError, check_backend_version, describe, fetch_healthz

DEFAULT_PACKAGE = "pipelines/selfguided_pipeline.yaml"
TOKEN_ENV = "KFP_TOKEN"
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client's own variable for the host
API = "/apis/v2beta1"
PROBE_TIMEOUT_S = 15


class UploadError(RuntimeError):
    """The upload cannot be done; the message is one line saying why and what to do."""


def default_version_name(package_path: str | Path = DEFAULT_PACKAGE, *, now: datetime | None = None) -> str:
    """`<package version>-<git short sha>` of the checkout holding `package_path`; with uncommitted
    changes, or outside git, a UTC timestamp is added so that two uploads never collide."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    cwd = Path(package_path).resolve().parent
    git = ["git", "-C", str(cwd)]
    try:
        sha = subprocess.run([*git, "rev-parse", "--short=8", "HEAD"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{PACKAGE_VERSION}-{stamp}"
    return f"{PACKAGE_VERSION}-{sha}" + (f"-dirty-{stamp}" if dirty else "")


def upload_pipeline(
    package_path: str | Path,
    *,
    host: str,
    pipeline_name: str,
    version_name: str | None = None,
    namespace: str | None = None,
    existing_token: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Upload `package_path` as a new version of the pipeline `pipeline_name`, creating the pipeline
    the first time.

    Args:
        package_path: the compiled pipeline (KFP IR YAML).
        host: the KFP API endpoint, e.g. `http://localhost:8080` (port-forward of ml-pipeline-ui)
            or `https://kubeflow.example.com/pipeline`.
        pipeline_name: the pipeline's display name in the Kubeflow UI.
        version_name: the new version's name (default: `default_version_name`).
        namespace: a profile namespace for a private pipeline (multi-user Kubeflow); None: shared.
        existing_token: a bearer token for the endpoint.
        description: shown with the pipeline and the version.

    Returns:
        {"host", "pipeline_name", "pipeline_id", "created_pipeline", "version_name",
         "pipeline_version_id", "url"}

    Raises:
        UploadError: a one-line reason: the package is missing or not a pipeline, the host is
            unreachable or is not a KFP API, the credentials were refused (401/403), the backend is
            older than the pipeline needs (pipelines/kfp_backend.py: MIN_KFP_BACKEND), the version
            name is taken.
    """
    package_path = Path(package_path)
    _check_package(package_path)
    if not host.startswith(("http://", "https://")):
        raise UploadError(f"--kfp-host {host!r} must start with http:// or https://")
    host = host.rstrip("/")
    version_name = version_name or default_version_name(package_path)
    _probe(host, existing_token)
    try:
        if check_backend_version(host, existing_token) is None:
            print(f"upload: warning: {describe(host, None)}", file=sys.stderr)
    except KfpBackendError as e:
        raise UploadError(str(e)) from None

    import kfp
    import kfp_server_api

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 and later"
        client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=existing_token)
    try:
        pipeline_id = _find_pipeline(client, pipeline_name, namespace)
        created = pipeline_id is None
        if created:
            pipeline = client.pipelines.pipeline_service_create_pipeline(kfp_server_api.V2beta1Pipeline(
                display_name=pipeline_name, description=description, namespace=namespace))
            pipeline_id = pipeline.pipeline_id
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own link; ours follows
            version = client.upload_pipeline_version(str(package_path), pipeline_version_name=version_name,
                                                     pipeline_id=pipeline_id, description=description)
    except kfp_server_api.ApiException as e:
        raise _explain(e, host, pipeline_name, version_name) from None
    except OSError as e:  # the connection failed after the probe
        raise UploadError(f"lost the connection to Kubeflow Pipelines at {host}: {e}") from None
    return {
        "host": host,
        "pipeline_name": pipeline_name,
        "pipeline_id": pipeline_id,
        "created_pipeline": created,
        "version_name": version_name,
        "pipeline_version_id": version.pipeline_version_id,
        "url": f"{host}/#/pipelines/details/{pipeline_id}/version/{version.pipeline_version_id}",
    }


def _check_package(path: Path) -> None:
    if not path.is_file():
        raise UploadError(f"{path}: no such file; compile the pipeline first (selfguided compile -o {path})")
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UploadError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
        raise UploadError(f"{path}: not a compiled KFP pipeline (no pipelineInfo/root); write one with selfguided compile")


def _probe(host: str, token: str | None) -> None:
    """One GET of the health endpoint, so a wrong host or token fails at once with a clear line
    (kfp.Client would retry for half a minute and then report a timeout)."""
    try:
        body = fetch_healthz(host, f"{API}/healthz", token, timeout=PROBE_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise UploadError(f"Kubeflow Pipelines at {host} refused the credentials (HTTP {e.code}): "
                              f"set {TOKEN_ENV} to a token the endpoint accepts") from None
        if e.code == 404:
            raise UploadError(f"no KFP v2 API at {host} ({API}/healthz answered 404): give the KFP endpoint, e.g. "
                              "http://localhost:8080 after `kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`, "
                              "or https://<kubeflow host>/pipeline") from None
        raise UploadError(f"Kubeflow Pipelines at {host} answered HTTP {e.code} to {API}/healthz: {_said(e.read())}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UploadError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    try:
        json.loads(body)
    except ValueError:
        raise UploadError(f"{host}{API}/healthz answered with something other than JSON (a login page?): "
                          f"set {TOKEN_ENV}, or use a port-forward or the in-cluster address") from None


def _find_pipeline(client, name: str, namespace: str | None) -> str | None:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = client.list_pipelines(filter=flt, namespace=namespace, page_size=2).pipelines or []
    if len(found) > 1:
        raise UploadError(f"{len(found)} pipelines are named {name!r} on this host: give a unique --pipeline")
    return found[0].pipeline_id if found else None


def _said(body: bytes | str | None) -> str:
    """The server's message: KFP's upload handler writes {"error_message"}, the gRPC gateway {"message"}."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(data, dict):
        return str(data.get("error_message") or data.get("message") or data)[:300]
    return str(data)[:300]


def _explain(e, host: str, pipeline: str, version: str) -> UploadError:
    said = _said(e.body)
    if e.status in (401, 403):
        return UploadError(f"Kubeflow Pipelines at {host} refused the request (HTTP {e.status}): {said}; "
                           f"check {TOKEN_ENV} and that it may create pipelines")
    if e.status == 409:
        return UploadError(f"pipeline {pipeline!r} already has a version named {version!r}: versions are immutable, "
                           "pass --version with a new name")
    return UploadError(f"Kubeflow Pipelines at {host} answered HTTP {e.status}: {said}")


def add_upload_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `upload --kfp-host URL --pipeline NAME [--version NAME] [--package FILE]`."""
    parser = subparsers.add_parser(
        "upload",
        help="publish the compiled pipeline as a new version of a named pipeline on a KFP host",
        description="Upload the compiled pipeline (KFP IR YAML) as a new version of the pipeline NAME on a "
        "Kubeflow Pipelines host, creating the pipeline the first time. CI runs this on every push to main "
        f"and every tag. A bearer token, when the endpoint needs one, is read from ${TOKEN_ENV}.",
    )
    add_option(parser, "--kfp-host", old=("--host",), default=os.environ.get(HOST_ENV),
               required=not os.environ.get(HOST_ENV),
               help=f"KFP API endpoint, e.g. http://localhost:8080 or https://kubeflow.example.com/pipeline "
                    f"(default: ${HOST_ENV})")
    parser.add_argument("--pipeline", required=True, help="pipeline name in the Kubeflow UI, e.g. selfguided")
    parser.add_argument("--version", help="name of the new version (default: package version + git commit, "
                        "plus a timestamp when the checkout has uncommitted changes)")
    parser.add_argument("--package", default=DEFAULT_PACKAGE, help="compiled pipeline to upload (default: %(default)s)")
    parser.add_argument("--namespace", help="profile namespace for a private pipeline (multi-user Kubeflow); "
                        "default: a shared pipeline")
    parser.add_argument("--description", help="description shown with the pipeline and the version")
    parser.set_defaults(func=run_upload)
    return parser


def run_upload(args: argparse.Namespace) -> int:
    try:
        result = upload_pipeline(args.package, host=args.kfp_host, pipeline_name=args.pipeline, version_name=args.version,
                                 namespace=args.namespace, existing_token=os.environ.get(TOKEN_ENV) or None,
                                 description=args.description)
    except UploadError as e:
        print(f"upload: {e}", file=sys.stderr)
        return 1
    what = "created pipeline" if result["created_pipeline"] else "pipeline"
    print(f"uploaded {args.package} to {what} {result['pipeline_name']!r} ({result['pipeline_id']}) as version "
          f"{result['version_name']!r} ({result['pipeline_version_id']}): {result['url']}")
    return 0
