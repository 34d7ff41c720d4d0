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

`create_pipeline_user` sets the pipeline identity up (the `mlflow-pipeline-user` Job runs it through
`python -m selfguided.pipelines.cli.mlflow_auth`): idempotent, so rotating the password is "change
the Secret, run it again".
`check_tracking_access` is the preflight: before any paid or GPU work it proves the current
credentials (read from the environment exactly as MLflow reads them) reach the server and can
write the experiment and the registered model, or raises `TrackingAccessError` with one line that
says why. Neither ever puts a password in a message. The REST calls and what their answers mean
are tracking_server.py's.
"""

from __future__ import annotations

from datetime import datetime, timezone

from selfguided.components.registry.names import PASSWORD_ENV, PIPELINE_PERMISSION, USERNAME_ENV
from selfguided.components.registry.tracking_server import (
    API2, DOCS, TrackingAccessError, TrackingServer, display_uri, host_url, is_remote,
)

# The admin, as the server's `mlflow-auth` Secret names it (MLflow's own bootstrap variables).
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"

# The preflight proves write access by setting this tag (value: when it was checked) on the
# experiment and on the registered model: harmless, overwritten by every check.
WRITE_CHECK_TAG = "selfguided.write_check"
PLACEHOLDER = "REPLACE_ME"  # what the manifests' secrets templates hold
MIN_PASSWORD_LENGTH = 12  # MLflow's basic-auth rule


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

    server = TrackingServer(tracking_uri, get_default_host_creds(host_url(tracking_uri)))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")

    experiment = server.experiment(experiment_name)
    if experiment is None:
        experiment_id = server.create_experiment(experiment_name)
    else:
        experiment_id = experiment["experiment_id"]
    server.call("POST", f"{API2}/experiments/set-experiment-tag",
                {"experiment_id": experiment_id, "key": WRITE_CHECK_TAG, "value": stamp},
                what=f"write experiment '{experiment_name}'")

    if server.registered_model(registered_model_name) is None:
        server.create_registered_model(registered_model_name)
    server.call("POST", f"{API2}/registered-models/set-tag",
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
        raise TrackingAccessError(f"{display_uri(tracking_uri)} is a local store, which has no users; "
                                  "create-pipeline-user needs a tracking server (http:// or https://)")
    _require_password("admin", admin_username, admin_password, ADMIN_PASSWORD_ENV)
    _require_password("pipeline", username, password, PASSWORD_ENV)
    if username == admin_username:
        raise TrackingAccessError(f"the pipeline user must not be the admin '{admin_username}': "
                                  f"give it a name of its own ({USERNAME_ENV})")
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import MlflowHostCreds

    base = get_default_host_creds(host_url(tracking_uri))
    admin = TrackingServer(tracking_uri, MlflowHostCreds(
        host_url(tracking_uri), username=admin_username, password=admin_password,
        ignore_tls_verification=base.ignore_tls_verification,
        client_cert_path=base.client_cert_path, server_cert_path=base.server_cert_path),
        secrets=(password,),
        credentials_hint=(f"check {ADMIN_USERNAME_ENV} and {ADMIN_PASSWORD_ENV} (Secret mlflow-auth in namespace "
                          "selfguided): the admin keeps the password the server first started with unless it "
                          f"was changed through the API since ({DOCS})"))
    done = []

    status, body = admin.call("GET", f"{API2}/users/get", {"username": username},
                              what=f"look up user '{username}' (needs an admin)", allow=(404,))
    if status == 404:
        admin.call("POST", f"{API2}/users/create", {"username": username, "password": password},
                   what=f"create user '{username}'")
        done.append(f"created user '{username}'")
    else:
        if body.get("user", {}).get("is_admin"):
            raise TrackingAccessError(f"user '{username}' is an MLflow admin: the pipeline identity should "
                                      "be an ordinary user with grants; pick another name")
        admin.call("PATCH", f"{API2}/users/update-password", {"username": username, "password": password},
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


def _require_password(role: str, username: str, password: str, env: str) -> None:
    if not username:
        raise TrackingAccessError(f"no {role} username given")
    if not password or password == PLACEHOLDER:
        raise TrackingAccessError(f"the {role} password ({env}) is empty or still the template's {PLACEHOLDER}; "
                                  f"fill in the Secret ({DOCS})")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise TrackingAccessError(f"the {role} password ({env}) is shorter than MLflow's minimum of "
                                  f"{MIN_PASSWORD_LENGTH} characters")
