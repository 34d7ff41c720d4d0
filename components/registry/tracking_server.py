"""One MLflow tracking server over its REST API, as one identity sees it (`TrackingServer`): every
call that fails becomes one line (`TrackingAccessError`) naming the cause, and never a password.

Only MLflow's REST API is used, through MLflow's own HTTP helper (its TLS, token and retry
settings apply): the basic-auth client module would import the server-side auth app, which needs
Flask-WTF and reads a server config at import. mlflow is imported inside the functions that call the
server: the pipeline definition and the CLI import the modules around this one, and importing
mlflow costs them more than a second.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from selfguided.components.registry.names import (
    PASSWORD_ENV, PIPELINE_AUTH_SECRET_NAME, PIPELINE_PERMISSION, USERNAME_ENV,
)

DOCS = "docs/mlflow-auth.md"
REQUEST_TIMEOUT_S = 10.0
API2 = "/api/2.0/mlflow"
API3 = "/api/3.0/mlflow"


class TrackingAccessError(RuntimeError):
    """The tracking server cannot be used as needed; the message is one line that names the cause."""


def is_remote(tracking_uri: str) -> bool:
    """Whether `tracking_uri` is a tracking server (http/https) rather than a local store."""
    return urlsplit(str(tracking_uri)).scheme.lower() in ("http", "https")


def wait_until_reachable(tracking_uri: str, timeout_s: float) -> None:
    """Poll the server until it answers anything at all (a Job may start before the server does).

    Raises:
        TrackingAccessError: still unreachable after `timeout_s` seconds.
    """
    from mlflow.utils.rest_utils import MlflowHostCreds

    server = TrackingServer(tracking_uri, MlflowHostCreds(host_url(tracking_uri)))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, _ = server.call("GET", "/health", what="answer /health", allow=range(100, 600))
            if status < 500:
                return
            reason = f"HTTP {status}"
        except TrackingAccessError as e:
            if "unreachable" not in str(e):
                raise
            reason = str(e)
        if time.monotonic() >= deadline:
            raise TrackingAccessError(reason if "unreachable" in reason else
                                      f"MLflow at {display_uri(tracking_uri)} is not ready ({reason}) after {timeout_s:g} s")
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


@dataclass
class TrackingServer:
    """One tracking server as seen by one identity: every call's failure becomes one line."""

    tracking_uri: str
    creds: Any  # mlflow.utils.rest_utils.MlflowHostCreds
    secrets: Sequence[str] = ()  # never to appear in a message, besides the identity's password
    # Where a refused login's credentials come from, for the 401 message.
    credentials_hint: str = (f"check {USERNAME_ENV} and {PASSWORD_ENV} (in a cluster: Secret "
                             f"{PIPELINE_AUTH_SECRET_NAME}, and that the mlflow-pipeline-user Job ran with the "
                             f"same values: {DOCS})")
    timeout_s: float = REQUEST_TIMEOUT_S

    def call(self, method: str, endpoint: str, payload: dict | None = None, *, what: str,
             allow: Sequence[int] = ()) -> tuple[int, dict]:
        """Send one request (no retries: a check must be quick) and return (status, JSON body) when
        it succeeded or its status is in `allow`; raise TrackingAccessError otherwise."""
        from mlflow.exceptions import MlflowException
        from mlflow.utils.rest_utils import http_request

        kwargs: dict[str, Any] = {"params": payload} if method == "GET" else {"json": payload or {}}
        try:
            response = http_request(self.creds, endpoint, method, max_retries=0, backoff_factor=0,
                                    timeout=self.timeout_s, raise_on_status=False, **kwargs)
        except MlflowException as e:
            raise self._error(f"MLflow at {self.url} is unreachable ({_unreachable_reason(e, self.timeout_s)}); "
                              "check the tracking URI and that the server runs") from None
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code == 200 or response.status_code in allow:
            return response.status_code, body
        raise self._refused(response.status_code, body, response.text, what)

    @property
    def url(self) -> str:
        return display_uri(self.tracking_uri)

    @property
    def who(self) -> str:
        if self.creds.username:
            return f"user '{self.creds.username}'"
        return "the token in MLFLOW_TRACKING_TOKEN" if self.creds.token else "an anonymous request"

    def _refused(self, status: int, body: dict, text: str, what: str) -> TrackingAccessError:
        detail = _one_line(body.get("message") or text)
        if status == 401:
            if self.creds.username and not self.creds.password:
                fix = f"{USERNAME_ENV} is set but {PASSWORD_ENV} is not; set both"
            elif self.creds.username or self.creds.token:
                return self._error(f"MLflow at {self.url} refused the credentials of {self.who}: "
                                   f"not authenticated (401); {self.credentials_hint}")
            else:
                fix = f"set {USERNAME_ENV} and {PASSWORD_ENV}"
            return self._error(f"MLflow at {self.url} refused the request: not authenticated (401); {fix} "
                               f"(in a cluster: Secret {PIPELINE_AUTH_SECRET_NAME}; {DOCS})")
        if status == 403 and "host header" in detail.lower():
            return self._error(f"MLflow at {self.url} rejected the Host header (403): add "
                               f"'{urlsplit(self.tracking_uri).netloc}' to the server's MLFLOW_SERVER_ALLOWED_HOSTS")
        if status == 403:
            if what.startswith("write "):
                return self._error(
                    f"MLflow at {self.url}: {self.who} may read but not {what} (403); the pipeline user needs "
                    f"{PIPELINE_PERMISSION} on it: run create-pipeline-user ({DOCS})")
            return self._error(f"MLflow at {self.url}: {self.who} may not {what} (403); see {DOCS}")
        code = body.get("error_code")
        return self._error(f"MLflow at {self.url} answered HTTP {status} when asked to {what}"
                           + (f": {code}" if code else "") + (f": {detail}" if detail else ""))

    def _error(self, message: str) -> TrackingAccessError:
        for secret in (self.creds.password, self.creds.token, *self.secrets):
            if secret:
                message = message.replace(secret, "***")
        return TrackingAccessError(message)

    # The objects the pipeline writes to.

    def experiment(self, name: str) -> dict | None:
        """The experiment named `name`, None when there is none."""
        status, body = self.call("GET", f"{API2}/experiments/get-by-name", {"experiment_name": name},
                                 what=f"read experiment '{name}'", allow=(404,))
        if status == 404:
            if body.get("error_code") != "RESOURCE_DOES_NOT_EXIST":
                raise self._error(f"MLflow at {self.url} does not look like an MLflow tracking server "
                                  f"(HTTP 404 on {API2}/experiments/get-by-name)")
            return None
        experiment = body["experiment"]
        if experiment.get("lifecycle_stage") == "deleted":
            raise self._error(f"MLflow at {self.url}: experiment '{name}' is deleted; restore it "
                              f"(mlflow experiments restore --experiment-id {experiment['experiment_id']}) "
                              "or use another name")
        return experiment

    def create_experiment(self, name: str) -> str:
        _, body = self.call("POST", f"{API2}/experiments/create", {"name": name},
                            what=f"create experiment '{name}'")
        return body["experiment_id"]

    def registered_model(self, name: str) -> dict | None:
        status, body = self.call("GET", f"{API2}/registered-models/get", {"name": name},
                                 what=f"read registered model '{name}'", allow=(404,))
        return None if status == 404 else body["registered_model"]

    def create_registered_model(self, name: str) -> None:
        self.call("POST", f"{API2}/registered-models/create", {"name": name},
                  what=f"create registered model '{name}'")

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str, label: str) -> str:
        """Give `username` exactly `permission` on one resource; say what changed."""
        grant = {"username": username, "resource_type": resource_type, "resource_id": resource_id,
                 "permission": permission}
        what = f"grant {permission} on {label} to '{username}'"
        status, body = self.call("POST", f"{API3}/users/permissions/grant", grant, what=what, allow=(400,))
        if status == 200:
            return f"granted {permission} on {label}"
        if body.get("error_code") != "RESOURCE_ALREADY_EXISTS":
            raise self._refused(status, body, "", what)
        _, current = self.call("GET", f"{API3}/users/permissions/get",
                               {k: grant[k] for k in ("username", "resource_type", "resource_id")},
                               what=f"read the permission of '{username}' on {label}")
        if current.get("permission") == permission:
            return f"'{username}' already holds {permission} on {label}"
        # A grant exists at another level: replace it (MLflow has no in-place update of a user grant).
        self.call("POST", f"{API3}/users/permissions/revoke",
                  {k: grant[k] for k in ("username", "resource_type", "resource_id")}, what=what)
        self.call("POST", f"{API3}/users/permissions/grant", grant, what=what)
        return f"changed the permission of '{username}' on {label} from {current.get('permission')} to {permission}"


def host_url(tracking_uri: str) -> str:
    return str(tracking_uri).rstrip("/")


def display_uri(tracking_uri: str) -> str:
    """The URI without user info, query or fragment: safe to print."""
    parts = urlsplit(str(tracking_uri))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unreachable_reason(error: BaseException, timeout_s: float) -> str:
    """What went wrong below HTTP, in a few words, from the exception and what caused it."""
    chain, seen = [], error
    while seen is not None and len(chain) < 12:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host name not found"
        if isinstance(e, (TimeoutError, socket.timeout)) or type(e).__name__ in ("Timeout", "ReadTimeout", "ConnectTimeout"):
            return f"no answer within {timeout_s:g} s"
        if type(e).__name__ == "SSLError":
            return "TLS handshake failed"
    text = " ".join(str(e) for e in chain)
    for needle, reason in (("Connection refused", "connection refused"),
                           ("Name or service not known", "host name not found"),
                           ("nodename nor servname", "host name not found"),
                           ("Temporary failure in name resolution", "host name not found"),
                           ("timed out", f"no answer within {timeout_s:g} s"),
                           ("SSL", "TLS handshake failed")):
        if needle in text:
            return reason
    return type(chain[-1]).__name__
