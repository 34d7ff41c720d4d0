"""MLflow behind its `basic-auth` app, for real: `mlflow server --app-name basic-auth` on loopback
(SQLite tracking store and auth database in a temporary folder, admin password set through the
auth config file, default permission READ), as manifests/ runs it on PostgreSQL.

What the issue asks of it: an anonymous request is refused; the preflight stops a run without
credentials with a reason that names authentication; a read-only user reads but cannot register a
version or move an alias; the pipeline user made by create_pipeline_user runs the register step end
to end and moves `champion`; no message carries a password.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import mlflow
import mlflow.pyfunc
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from servers import _stop_group, _wait_healthy, free_port
from test_mlflow_genai_pages import summaries  # noqa: F401 (fixture)

from selfguided.components.registry.auth import check_tracking_access, create_pipeline_user
from selfguided.components.registry.names import CHAMPION, PIPELINE_AUTH_SECRET_NAME
from selfguided.components.registry.tracking_server import TrackingAccessError
from selfguided.pipelines.cli import mlflow_auth

pytestmark = pytest.mark.slow

EXPERIMENT = "selfguided"
MODEL = "korean-writing-assistant"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                        "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH")


@dataclass
class AuthServer:
    tracking_uri: str
    admin_username: str
    admin_password: str
    log_path: Path


@dataclass
class User:
    username: str
    password: str

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


def _password() -> str:
    return "pw-" + secrets.token_urlsafe(18)  # letters, digits, - and _: nothing an ini file interprets


@pytest.fixture(autouse=True)
def _no_inherited_credentials(monkeypatch, tmp_path):
    """No developer credentials: neither environment variables nor ~/.mlflow/credentials."""
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[AuthServer]:
    """`mlflow server --app-name basic-auth` on a free 127.0.0.1 port, stopped after the module."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    admin = User("admin", _password())
    config = workdir / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\n"
        f"admin_username = {admin.username}\n"
        f"admin_password = {admin.password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n",  # as manifests/ sets it
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(config), "HOME": str(workdir),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--artifacts-destination", str(workdir / "artifacts")]
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path)
        yield AuthServer(f"http://127.0.0.1:{port}", admin.username, admin.password, log_path)
    finally:
        _stop_group(process)


def _as(monkeypatch, user: User | None) -> None:
    for name, value in (user.env() if user else {}).items():
        monkeypatch.setenv(name, value)


def _auth_client(server: AuthServer, monkeypatch):
    """MLflow's own basic-auth client, logged in as the admin."""
    from mlflow.server import get_app_client

    _as(monkeypatch, User(server.admin_username, server.admin_password))
    return get_app_client("basic-auth", tracking_uri=server.tracking_uri)


@pytest.fixture(scope="module")
def pipeline_user(auth_server) -> User:
    user = User("selfguided-pipeline", _password())
    done = create_pipeline_user(auth_server.tracking_uri, admin_username=auth_server.admin_username,
                                admin_password=auth_server.admin_password, username=user.username,
                                password=user.password, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    assert done == [f"created user '{user.username}'", "created experiment 'selfguided' (id 1)",
                    f"created registered model '{MODEL}'", "granted EDIT on experiment 'selfguided'",
                    f"granted EDIT on registered model '{MODEL}'"]
    return user


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str]) -> list[str]:
        return model_input


@dataclass
class Registered:
    run_id: str
    version: str


@pytest.fixture(scope="module")
def registered(auth_server, pipeline_user) -> Registered:
    """What the register step does, as the pipeline user: a run with params, metrics and tags, a
    logged model (artifacts proxied through the server) registered as a version, its tags, and the
    `challenger` and `champion` aliases."""
    with pytest.MonkeyPatch.context() as mp:
        for name in CREDENTIAL_VARIABLES:
            mp.delenv(name, raising=False)
        _as(mp, pipeline_user)
        mlflow.set_tracking_uri(auth_server.tracking_uri)
        try:
            client = MlflowClient(tracking_uri=auth_server.tracking_uri, registry_uri=auth_server.tracking_uri)
            experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
            with mlflow.start_run(experiment_id=experiment_id, tags={"pipeline_run": "auth-run-1"}) as run:
                mlflow.log_params({"base_model": "tiny", "arm": "self_guided"})
                mlflow.log_metrics({"judge/overall": 5.5})
                info = mlflow.pyfunc.log_model(name="model", python_model=_Echo(), pip_requirements=["mlflow"],
                                               registered_model_name=MODEL)
            version = str(info.registered_model_version)
            client.set_model_version_tag(MODEL, version, "pipeline_run", "auth-run-1")
            for alias in ("challenger", CHAMPION):
                client.set_registered_model_alias(MODEL, alias, version)
        finally:
            mlflow.set_tracking_uri(None)
    return Registered(run.info.run_id, version)


@pytest.fixture
def reader(auth_server, monkeypatch) -> User:
    """A user the admin created and granted nothing: the server's default permission, READ."""
    user = User(f"reader-{secrets.token_hex(3)}", _password())
    _auth_client(auth_server, monkeypatch).create_user(user.username, user.password)
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return user


def _status(url: str, headers: dict[str, str] | None = None):
    """(status, headers): the headers a case-insensitive mapping."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers


def test_anonymous_request_is_refused(auth_server):
    status, headers = _status(f"{auth_server.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1")
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Basic")
    assert _status(f"{auth_server.tracking_uri}/health")[0] == 200, "probes must not need a login"


def test_preflight_without_credentials_names_authentication(auth_server):
    with pytest.raises(TrackingAccessError) as raised:
        check_tracking_access(auth_server.tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    message = str(raised.value)
    assert "authenticat" in message and "(401)" in message
    assert "MLFLOW_TRACKING_USERNAME" in message and PIPELINE_AUTH_SECRET_NAME in message
    assert auth_server.tracking_uri in message and "\n" not in message


def test_preflight_with_a_wrong_password_names_the_user_not_the_password(auth_server, pipeline_user, monkeypatch):
    wrong = User(pipeline_user.username, _password())
    _as(monkeypatch, wrong)
    with pytest.raises(TrackingAccessError) as raised:
        check_tracking_access(auth_server.tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    message = str(raised.value)
    assert f"user '{pipeline_user.username}'" in message and "(401)" in message
    assert wrong.password not in message and pipeline_user.password not in message


def test_preflight_reports_an_unreachable_server_at_once():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingAccessError, match=r"^MLflow at http://127\.0\.0\.1:\d+ is unreachable \(connection refused\)"):
        check_tracking_access(uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    assert time.monotonic() - started < 10, "the preflight must not sit in MLflow's retry back-off"


def test_preflight_passes_local_stores(tmp_path):
    for uri in (f"sqlite:///{tmp_path / 'mlflow.db'}", f"file://{tmp_path / 'mlruns'}", str(tmp_path / "mlruns")):
        check_tracking_access(uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    assert not (tmp_path / "mlflow.db").exists(), "a local store needs no check and gets no write"


def test_pipeline_user_registers_a_version_and_moves_champion(auth_server, pipeline_user, registered, monkeypatch):
    _as(monkeypatch, pipeline_user)
    check_tracking_access(auth_server.tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    client = MlflowClient(tracking_uri=auth_server.tracking_uri, registry_uri=auth_server.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert (champion.version, champion.run_id) == ("1", registered.run_id)
    assert champion.tags["pipeline_run"] == "auth-run-1"
    assert client.get_run(champion.run_id).data.metrics["judge/overall"] == 5.5
    # The grants are what the module promises: EDIT, not MANAGE.
    auth = _auth_client(auth_server, monkeypatch)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert auth.get_user_permission(pipeline_user.username, "experiment", experiment_id).permission == "EDIT"
    assert auth.get_user_permission(pipeline_user.username, "registered_model", MODEL).permission == "EDIT"


def test_read_only_user_reads_but_cannot_register_or_move_an_alias(auth_server, registered, reader, monkeypatch):
    _as(monkeypatch, reader)
    client = MlflowClient(tracking_uri=auth_server.tracking_uri, registry_uri=auth_server.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert EXPERIMENT in {e.name for e in client.search_experiments()}
    runs = client.search_runs([experiment.experiment_id])
    assert runs and runs[0].data.tags["pipeline_run"] == "auth-run-1"
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert [v.version for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]

    with pytest.raises(MlflowException, match="403"):
        client.create_model_version(MODEL, source=champion.source, run_id=champion.run_id)
    with pytest.raises(MlflowException, match="403"):
        client.set_registered_model_alias(MODEL, "champion", champion.version)
    with pytest.raises(MlflowException, match="403"):
        client.create_run(experiment.experiment_id)
    assert client.get_model_version_by_alias(MODEL, CHAMPION).version == champion.version

    with pytest.raises(TrackingAccessError) as raised:
        check_tracking_access(auth_server.tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    message = str(raised.value)
    assert f"user '{reader.username}' may read but not write experiment '{EXPERIMENT}' (403)" in message
    assert reader.password not in message and "\n" not in message


def test_create_pipeline_user_is_idempotent_and_rotates_the_password(auth_server, pipeline_user, monkeypatch, capsys):
    """The Job's command, run twice: the second run sets the new password and changes no grant."""
    user = User("rotating-pipeline", _password())
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", auth_server.admin_username)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", auth_server.admin_password)
    argv = ["create-pipeline-user", f"--tracking-uri={auth_server.tracking_uri}", "--experiment", EXPERIMENT,
            "--registered-model", MODEL, "--wait-seconds", "5"]
    _as(monkeypatch, user)
    assert mlflow_auth.main(argv) == 0
    rotated = User(user.username, _password())
    _as(monkeypatch, rotated)
    assert mlflow_auth.main(argv) == 0
    out = capsys.readouterr()
    assert f"user '{user.username}' exists: password set" in out.out
    assert f"'{user.username}' already holds EDIT on registered model '{MODEL}'" in out.out
    assert not [p for p in (user.password, rotated.password, auth_server.admin_password) if p in out.out + out.err]

    check_tracking_access(auth_server.tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)
    _as(monkeypatch, user)  # the old password no longer logs in
    with pytest.raises(TrackingAccessError, match=r"\(401\)"):
        check_tracking_access(auth_server.tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL)


def test_create_pipeline_user_refuses_a_wrong_admin_password_without_echoing_it(auth_server, monkeypatch, capsys):
    wrong, pipeline_password = _password(), _password()
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", auth_server.admin_username)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", wrong)
    _as(monkeypatch, User("another-pipeline", pipeline_password))
    assert mlflow_auth.main(["create-pipeline-user", f"--tracking-uri={auth_server.tracking_uri}",
                          "--experiment", EXPERIMENT, "--registered-model", MODEL]) == 1
    err = capsys.readouterr().err
    assert f"user '{auth_server.admin_username}': not authenticated (401)" in err
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in err and wrong not in err and pipeline_password not in err


@pytest.mark.parametrize("password", ["", "REPLACE_ME", "short"])
def test_create_pipeline_user_refuses_unusable_passwords(password):
    with pytest.raises(TrackingAccessError, match="pipeline password"):
        create_pipeline_user(f"http://127.0.0.1:{free_port()}", admin_username="admin",
                             admin_password="an-admin-password", username="pipeline", password=password,
                             experiment_name=EXPERIMENT, registered_model_name=MODEL)


def test_a_local_run_without_credentials_stops_at_preflight_before_any_training(auth_server, tmp_path, capsys):
    """`selfguided run` against the basic-auth server with no login: one line naming the cause."""
    from selfguided.pipelines.cli.main import main

    monkeypatch_env = {"MLFLOW_TRACKING_URI": auth_server.tracking_uri}
    with pytest.MonkeyPatch.context() as env:
        for name, value in monkeypatch_env.items():
            env.setenv(name, value)
        code = main(["run", "--workdir", str(tmp_path / "run"), "--arms", "unscored"])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [line for line in err.splitlines() if line.startswith("selfguided run: step 'preflight' failed: ")]
    assert "authenticat" in line.lower()  # the cause in one line, not a traceback
    log = next((tmp_path / "run" / "logs").glob("run-*.log")).read_text(encoding="utf-8")
    assert "Executing task 'finetune'" not in log and "Executing task 'score'" not in log


def test_the_pipeline_user_runs_the_register_step_and_moves_the_champion(auth_server, pipeline_user, tmp_path,
                                                                           monkeypatch):
    from registry_fixtures import category_scores, decided, make_model_dir, make_summary

    from selfguided.components.registry.promotion import register_candidates
    from selfguided.components.registry.runs import Candidate

    _as(monkeypatch, pipeline_user)
    client = mlflow.MlflowClient(tracking_uri=auth_server.tracking_uri, registry_uri=auth_server.tracking_uri)
    try:  # another test of this module may have promoted one already: the evidence names it
        current = str(client.get_model_version_by_alias(MODEL, CHAMPION).version)
    except mlflow.exceptions.MlflowException:
        current = None
    candidate = Candidate(make_model_dir(tmp_path, arm="self_guided"),
                          make_summary("tiny", "self_guided", category_scores(6.0)))
    evaluation = decided(True, ("better on evidence",), champion_version=current)
    report = register_candidates([candidate], evaluation=evaluation, tracking_uri=auth_server.tracking_uri,
                                 pipeline_run="auth-run", scored_data_sha256="0" * 64)
    assert report.decision.promote
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == report.challenger.version


def test_the_pipeline_user_fills_the_datasets_and_judges_pages_with_no_refusal(auth_server, pipeline_user, tmp_path,
                                                                               summaries, monkeypatch, capsys):
    """The register step's Datasets page as the pipeline user, not the admin: MLflow 3.17's basic-auth
    refuses a dataset search without experiment ids to everyone but the admin
    (mlflow/server/auth/__init__.py: validate_can_search_evaluation_datasets), so the search is
    scoped to the experiment; the same questions in a second experiment are found there or made
    anew, and nothing is refused."""
    from test_mlflow_genai_pages import _check_judges, _questions_file

    from selfguided.components.registry.genai_pages import publish_genai_pages

    _as(monkeypatch, pipeline_user)
    client = MlflowClient(tracking_uri=auth_server.tracking_uri)
    questions = _questions_file(tmp_path)
    for name in ("selfguided-datasets-a", "selfguided-datasets-b"):
        experiment_id = client.create_experiment(f"{name}-{secrets.token_hex(3)}")
        run_id = client.create_run(experiment_id).info.run_id
        for _ in range(2):  # a second run reuses the dataset
            done = publish_genai_pages(auth_server.tracking_uri, experiment_id, summaries=summaries[:1],
                                       run_ids=[run_id], questions_file=questions)
            assert done["dataset"], done
            assert {done["judges"][j] for j in ("fair", "long")} <= {"registered", "unchanged"}, done
        (dataset,) = client.search_datasets(experiment_ids=[experiment_id])
        assert dataset.name == done["dataset"] and len(client.get_dataset(dataset.dataset_id).records) == 3
        mlflow.set_tracking_uri(auth_server.tracking_uri)
        _check_judges(experiment_id, {"fair", "long"})
    said = capsys.readouterr().out
    assert "PERMISSION_DENIED" not in said and "Permission denied" not in said, said
