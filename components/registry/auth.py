"""Who may write to the MLflow tracking server, and a check that the pipeline may, before it spends.

The tracking server in manifests/ runs MLflow's `basic-auth` app. Its permission model, as this
project sets it up (docs/mlflow-auth.md walks through it):

- every request needs a login: an anonymous one is answered 401;
- `default_permission = READ`: every user the admin creates reads every experiment, run and
  registered model, and writes none of the project's (an MLflow user may still create
  experiments and models of their own, which they then manage);
- the pipeline identity (Secret `selfguided-mlflow-auth`, keys MLFLOW_TRACKING_USERNAME and
  MLFLOW_TRACKING_PASSWORD) holds EDIT on the experiment `selfguided` and on the registered model
  `korean-writing-assistant`: create runs and log to them, register versions, tag them and move
  the `challenger` / `champion` aliases (MLflow checks `update` for setting an alias). It cannot
  delete versions, aliases or the model, nor grant anyone anything (those need MANAGE);
- the admin (Secret `mlflow-auth` in the `selfguided` namespace) creates users and grants, and is
  used by nothing else.

`create_pipeline_user` sets the pipeline identity up (the `mlflow-pipeline-user` Job runs it):
idempotent, so rotating the password is "change the Secret, run it again".
`check_tracking_access` is the preflight: before any paid or GPU work it proves the current
credentials (read from the environment exactly as MLflow reads them) reach the server and can
write the experiment and the registered model, or raises `TrackingAccessError` with one line that
says why. Neither ever puts a password in a message.

Only MLflow's REST API is used, through MLflow's own HTTP helper (its TLS, token and retry
settings apply): the basic-auth client module would import the server-side auth app, which needs
Flask-WTF and reads a server config at import.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

# mlflow is imported inside the functions that call the server: the pipeline definition and the
# CLI read this module's Secret names, and importing mlflow costs them more than a second.

# The pipeline identity: the Secret every MLflow-writing step gets as environment variables
# (secret key -> env var, like the other Secrets in pipelines/platform.py), named by the messages
# below and created from the overlays' profile/mlflow-auth.env.
PIPELINE_AUTH_SECRET_NAME = "selfguided-mlflow-auth"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
PIPELINE_AUTH_SECRET_KEYS = {USERNAME_ENV: USERNAME_ENV, PASSWORD_ENV: PASSWORD_ENV}
# The admin, as the server's `mlflow-auth` Secret names it (MLflow's own bootstrap variables).
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"

# EDIT is what the register step needs (runs, versions, tags, alias moves) and no more.
PIPELINE_PERMISSION = "EDIT"
# The preflight proves write access by setting this tag (value: when it was checked) on the
# experiment and on the registered model: harmless, overwritten by every check.
WRITE_CHECK_TAG = "selfguided.write_check"
PLACEHOLDER = "REPLACE_ME"  # what the manifests' secrets templates hold
MIN_PASSWORD_LENGTH = 12  # MLflow's basic-auth rule
DOCS = "docs/mlflow-auth.md"
REQUEST_TIMEOUT_S = 10.0

_API2 = "/api/2.0/mlflow"
_API3 = "/api/3.0/mlflow"


class TrackingAccessError(RuntimeError):
    """The tracking server cannot be used as needed; the message is one line that names the cause."""


def is_remote(tracking_uri: str) -> bool:
    """Whether `tracking_uri` is a tracking server (http/https) rather than a local store."""
    return urlsplit(str(tracking_uri)).scheme.lower() in ("http", "https")


def check_tracking_access(tracking_uri: str, *, experiment_name: str, registered_model_name: str) -> None:
    """Prove that the current credentials can write the experiment and the registered model.

    Run before any paid or GPU work. A local store (a `sqlite:///` or `file:` URI, a path) passes
    without a check. Against a server: the experiment and the registered model are fetched, or
    created when missing (as the register step would), and the tag `selfguided.write_check` is set
    on each, which needs the same permission as logging runs, registering versions and moving
    aliases. Credentials are MLflow's own: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or
    ~/.mlflow/credentials), MLFLOW_TRACKING_TOKEN.

    Args:
        tracking_uri: where the pipeline logs to.
        experiment_name: the experiment its runs go to.
        registered_model_name: the registered model its versions and aliases go to.

    Raises:
        TrackingAccessError: one line naming the cause: unreachable, not authenticated (401),
            not allowed to write (403), or an unexpected answer.
    """
    if not is_remote(tracking_uri):
        return
    from mlflow.utils.credentials import get_default_host_creds

    server = _Server(tracking_uri, get_default_host_creds(_base(tracking_uri)))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")

    experiment = server.experiment(experiment_name)
    if experiment is None:
        experiment_id = server.create_experiment(experiment_name)
    else:
        experiment_id = experiment["experiment_id"]
    server.call("POST", f"{_API2}/experiments/set-experiment-tag",
                {"experiment_id": experiment_id, "key": WRITE_CHECK_TAG, "value": stamp},
                what=f"write experiment '{experiment_name}'")

    if server.registered_model(registered_model_name) is None:
        server.create_registered_model(registered_model_name)
    server.call("POST", f"{_API2}/registered-models/set-tag",
                {"name": registered_model_name, "key": WRITE_CHECK_TAG, "value": stamp},
                what=f"write registered model '{registered_model_name}'")


def create_pipeline_user(
    tracking_uri: str,
    *,
    admin_username: str,
    admin_password: str,
    username: str,
    password: str,
    experiment_name: str,
    registered_model_name: str,
) -> list[str]:
    """Create (or update) the pipeline's MLflow user and give it EDIT on its experiment and model.

    Idempotent, so it is also how the password is rotated: the user is created, or its password
    set when it exists; the experiment and the registered model are created by the admin when
    missing (so no other user can claim them first and own them); the EDIT grants are added, or
    changed to EDIT when the user held another level. Every other user keeps the server's default
    permission (READ).

    Args:
        tracking_uri: the tracking server (http or https) running `--app-name basic-auth`.
        admin_username: an MLflow admin (the server's `mlflow-auth` Secret).
        admin_password: that admin's password.
        username: the pipeline user (Secret `selfguided-mlflow-auth`, MLFLOW_TRACKING_USERNAME).
        password: its password, at least 12 characters.
        experiment_name: the experiment the pipeline's runs go to.
        registered_model_name: the registered model the pipeline registers and promotes.

    Returns:
        One line per thing done, for a log.

    Raises:
        TrackingAccessError: the server is unreachable or refused a request (one line), or the
            credentials given are unusable (empty, the template's placeholder, too short).
    """
    if not is_remote(tracking_uri):
        raise TrackingAccessError(f"{_display(tracking_uri)} is a local store, which has no users; "
                                  "create-pipeline-user needs a tracking server (http:// or https://)")
    _require_password("admin", admin_username, admin_password, ADMIN_PASSWORD_ENV)
    _require_password("pipeline", username, password, PASSWORD_ENV)
    if username == admin_username:
        raise TrackingAccessError(f"the pipeline user must not be the admin '{admin_username}': "
                                  f"give it a name of its own ({USERNAME_ENV})")
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import MlflowHostCreds

    base = get_default_host_creds(_base(tracking_uri))
    admin = _Server(tracking_uri, MlflowHostCreds(
        _base(tracking_uri), username=admin_username, password=admin_password,
        ignore_tls_verification=base.ignore_tls_verification,
        client_cert_path=base.client_cert_path, server_cert_path=base.server_cert_path),
        secrets=(password,),
        credentials_hint=(f"check {ADMIN_USERNAME_ENV} and {ADMIN_PASSWORD_ENV} (Secret mlflow-auth in namespace "
                          "selfguided): the admin keeps the password the server first started with unless it "
                          f"was changed through the API since ({DOCS})"))
    done = []

    status, body = admin.call("GET", f"{_API2}/users/get", {"username": username},
                              what=f"look up user '{username}' (needs an admin)", allow=(404,))
    if status == 404:
        admin.call("POST", f"{_API2}/users/create", {"username": username, "password": password},
                   what=f"create user '{username}'")
        done.append(f"created user '{username}'")
    else:
        if body.get("user", {}).get("is_admin"):
            raise TrackingAccessError(f"user '{username}' is an MLflow admin: the pipeline identity should "
                                      "be an ordinary user with grants; pick another name")
        admin.call("PATCH", f"{_API2}/users/update-password", {"username": username, "password": password},
                   what=f"set the password of user '{username}'")
        done.append(f"user '{username}' exists: password set")

    experiment = admin.experiment(experiment_name)
    if experiment is None:
        experiment_id = admin.create_experiment(experiment_name)
        done.append(f"created experiment '{experiment_name}' (id {experiment_id})")
    else:
        experiment_id = experiment["experiment_id"]
    if admin.registered_model(registered_model_name) is None:
        admin.create_registered_model(registered_model_name)
        done.append(f"created registered model '{registered_model_name}'")

    for resource_type, resource_id, label in (
        ("experiment", experiment_id, f"experiment '{experiment_name}'"),
        ("registered_model", registered_model_name, f"registered model '{registered_model_name}'"),
    ):
        done.append(admin.grant(username, resource_type, resource_id, PIPELINE_PERMISSION, label))
    return done


def wait_until_reachable(tracking_uri: str, timeout_s: float) -> None:
    """Poll the server until it answers anything at all (a Job may start before the server does).

    Raises:
        TrackingAccessError: still unreachable after `timeout_s` seconds.
    """
    from mlflow.utils.rest_utils import MlflowHostCreds

    server = _Server(tracking_uri, MlflowHostCreds(_base(tracking_uri)))
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
                                      f"MLflow at {_display(tracking_uri)} is not ready ({reason}) after {timeout_s:g} s")
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))


# --- the REST calls, and what their answers mean ---------------------------------------------


@dataclass
class _Server:
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
        return _display(self.tracking_uri)

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
        status, body = self.call("GET", f"{_API2}/experiments/get-by-name", {"experiment_name": name},
                                 what=f"read experiment '{name}'", allow=(404,))
        if status == 404:
            if body.get("error_code") != "RESOURCE_DOES_NOT_EXIST":
                raise self._error(f"MLflow at {self.url} does not look like an MLflow tracking server "
                                  f"(HTTP 404 on {_API2}/experiments/get-by-name)")
            return None
        experiment = body["experiment"]
        if experiment.get("lifecycle_stage") == "deleted":
            raise self._error(f"MLflow at {self.url}: experiment '{name}' is deleted; restore it "
                              f"(mlflow experiments restore --experiment-id {experiment['experiment_id']}) "
                              "or use another name")
        return experiment

    def create_experiment(self, name: str) -> str:
        _, body = self.call("POST", f"{_API2}/experiments/create", {"name": name},
                            what=f"create experiment '{name}'")
        return body["experiment_id"]

    def registered_model(self, name: str) -> dict | None:
        status, body = self.call("GET", f"{_API2}/registered-models/get", {"name": name},
                                 what=f"read registered model '{name}'", allow=(404,))
        return None if status == 404 else body["registered_model"]

    def create_registered_model(self, name: str) -> None:
        self.call("POST", f"{_API2}/registered-models/create", {"name": name},
                  what=f"create registered model '{name}'")

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str, label: str) -> str:
        """Give `username` exactly `permission` on one resource; say what changed."""
        grant = {"username": username, "resource_type": resource_type, "resource_id": resource_id,
                 "permission": permission}
        what = f"grant {permission} on {label} to '{username}'"
        status, body = self.call("POST", f"{_API3}/users/permissions/grant", grant, what=what, allow=(400,))
        if status == 200:
            return f"granted {permission} on {label}"
        if body.get("error_code") != "RESOURCE_ALREADY_EXISTS":
            raise self._refused(status, body, "", what)
        _, current = self.call("GET", f"{_API3}/users/permissions/get",
                               {k: grant[k] for k in ("username", "resource_type", "resource_id")},
                               what=f"read the permission of '{username}' on {label}")
        if current.get("permission") == permission:
            return f"'{username}' already holds {permission} on {label}"
        # A grant exists at another level: replace it (MLflow has no in-place update of a user grant).
        self.call("POST", f"{_API3}/users/permissions/revoke",
                  {k: grant[k] for k in ("username", "resource_type", "resource_id")}, what=what)
        self.call("POST", f"{_API3}/users/permissions/grant", grant, what=what)
        return f"changed the permission of '{username}' on {label} from {current.get('permission')} to {permission}"


def _base(tracking_uri: str) -> str:
    return str(tracking_uri).rstrip("/")


def _display(tracking_uri: str) -> str:
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


def _require_password(role: str, username: str, password: str, env: str) -> None:
    if not username:
        raise TrackingAccessError(f"no {role} username given")
    if not password or password == PLACEHOLDER:
        raise TrackingAccessError(f"the {role} password ({env}) is empty or still the template's {PLACEHOLDER}; "
                                  f"fill in the Secret ({DOCS})")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise TrackingAccessError(f"the {role} password ({env}) is shorter than MLflow's minimum of "
                                  f"{MIN_PASSWORD_LENGTH} characters")


# --- command line (the mlflow-pipeline-user Job, an operator's shell) ---------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m selfguided.components.registry.auth create-pipeline-user | check`.

    Passwords come from the environment, never from the command line (where `ps` would show them).
    """
    parser = argparse.ArgumentParser(prog="python -m selfguided.components.registry.auth", description=__doc__.split("\n")[0])
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
            print(f"MLflow at {_display(args.tracking_uri)}: may write experiment '{args.experiment}' "
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
