"""The Kubeflow Pipelines backend a compiled pipeline needs, and the check that a host has it.

The compiled pipeline uses backend features that older KFP backends accept and then ignore or
mishandle, so a run on one fails late, on the cluster, with an unrelated-looking error:

- 2.15: `optional: true` on a Secret-to-env mapping (every S3 step maps AWS_ENDPOINT_URL_S3, which
  the production Secret leaves out for AWS itself); older backends ignore it, and the pod fails
  with CreateContainerConfigError;
- 2.14: `dsl.Collected` of artifacts (the judgments every loop iteration hands to compare);
- 2.4: a GPU count from a pipeline parameter (finetune's `num_gpus`); older ones give no GPU.

Kubeflow 1.10 ships KFP 2.5: install KFP 2.15 or newer (standalone, or the Kubeflow release that
carries it). `selfguided submit` and `upload` read the backend's version first and refuse an older
one with the minimum named (docs/run-on-kubeflow.md).

Where the version is: the API server's `GET /apis/v1beta1/healthz` answers `tag_name` (and
`commit_sha`); the UI server (the usual port-forward, `svc/ml-pipeline-ui`) answers the same path
with `apiServerTagName`.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

MIN_KFP_BACKEND = "2.15.0"
MIN_KFP_BACKEND_REASON = ("optional Secret keys (AWS_ENDPOINT_URL_S3) need 2.15, dsl.Collected of artifacts 2.14, "
                          "a GPU count from a pipeline parameter 2.4")
HEALTHZ_PATHS = ("/apis/v1beta1/healthz", "/apis/v2beta1/healthz")
VERSION_KEYS = ("tag_name", "apiServerTagName")
TIMEOUT_S = 15
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


class KfpBackendError(RuntimeError):
    """The backend cannot run this pipeline (too old), or cannot be asked; one line saying why."""


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of `2.5.0`, `v2.15.1`, `2.15.0-rc.1`; None for `unknown`, `dev`, ''."""
    match = _VERSION.match((text or "").strip())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def fetch_healthz(host: str, path: str, token: str | None = None, *, timeout: float = TIMEOUT_S) -> bytes:
    """GET `host + path` asking for JSON, with the bearer token when given; urllib's errors propagate
    (the callers word them for their command)."""
    request = urllib.request.Request(f"{host}{path}", headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def backend_version(host: str, token: str | None = None, *, timeout: float = TIMEOUT_S) -> str | None:
    """The version the KFP host reports (its healthz `tag_name`), or None when it reports none.

    Raises:
        KfpBackendError: the host cannot be reached, or refuses the credentials.
    """
    host = host.rstrip("/")
    for path in HEALTHZ_PATHS:
        try:
            body = fetch_healthz(host, path, token, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise KfpBackendError(f"Kubeflow Pipelines at {host} refused the credentials (HTTP {e.code}) "
                                      f"when asked for its version ({path})") from None
            continue  # this path is not served here: try the next
        except (urllib.error.URLError, OSError) as e:
            raise KfpBackendError(f"cannot reach Kubeflow Pipelines at {host}: {getattr(e, 'reason', e)}") from None
        try:
            data = json.loads(body)
        except ValueError:
            continue
        if isinstance(data, dict):
            for key in VERSION_KEYS:
                if parse_version(str(data.get(key) or "")):
                    return str(data[key])
    return None


def check_backend_version(host: str, token: str | None = None, *, minimum: str = MIN_KFP_BACKEND) -> str | None:
    """The backend version the host reports, when it is `minimum` or newer; None when it reports
    none (a development build, or a gateway that hides it: see `describe`).

    Raises:
        KfpBackendError: the host runs an older backend (the message names the minimum and why),
            or cannot be asked.
    """
    reported = backend_version(host, token)
    if reported is not None and parse_version(reported) < parse_version(minimum):
        raise KfpBackendError(
            f"Kubeflow Pipelines at {host.rstrip('/')} runs backend {reported}; this pipeline needs {minimum} or newer "
            f"({MIN_KFP_BACKEND_REASON}): upgrade Kubeflow Pipelines (docs/run-on-kubeflow.md)")
    return reported


def describe(host: str, reported: str | None, minimum: str = MIN_KFP_BACKEND) -> str:
    """One line for the user about the backend `check_backend_version` found."""
    if reported is None:
        return (f"Kubeflow Pipelines at {host.rstrip('/')} does not report its version: make sure it is "
                f"{minimum} or newer ({MIN_KFP_BACKEND_REASON})")
    return f"Kubeflow Pipelines at {host.rstrip('/')} runs backend {reported} (needs {minimum} or newer)"
