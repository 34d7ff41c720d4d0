"""manifests/: every kustomization renders, every object passes the Kubernetes schemas and the
security scanner, and the names the compiled pipeline relies on agree with pipelines/platform.py.

Rendering needs `kubectl` (its built-in kustomize works offline); the scanner is checkov, whose
findings must be fixed or skipped in place with a `checkov.io/skip<N>: CHECK=reason` annotation.
"""

from __future__ import annotations

import base64
import configparser
import copy
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.server.security_utils import is_allowed_host_header
from manifest_tools import checkov_results, findings, kubectl
from manifest_tools import expand as _expand
from manifest_tools import kubelet_env as _kubelet_env
from manifest_tools import secret_data as _secret_data
from servers import S3_CREDENTIALS, _stop_group, _wait_healthy, free_port, s3_server  # noqa: F401 (fixture)

from selfguided.components.registry import auth as tracking
from selfguided.components.registry import names
from selfguided.pipelines import platform

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
KUBERNETES_VERSION = "1.31"  # the oldest version the manifests promise to work on
PLACEHOLDER = "REPLACE_ME"
# Keys whose values are secrets: templates must leave them as the placeholder.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY")
# Things that look like real credentials, whatever key they sit under.
REAL_LOOKING = re.compile(r"sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|[A-Za-z0-9/+]{40}")

# What users apply: every overlay, and the GPU node-pool check.
KUSTOMIZATIONS = sorted(f"overlays/{p.name}" for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
KUSTOMIZATIONS.append("gpu-check")
POD_KINDS = {"Deployment": ("spec", "template", "spec"), "StatefulSet": ("spec", "template", "spec"),
             "Job": ("spec", "template", "spec"), "Pod": ("spec",)}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """Each kustomization rendered, as YAML text, from a copy of manifests/ whose secrets files are
    the committed templates: a developer's filled-in *.env files never reach a test."""
    tree = tmp_path_factory.mktemp("render") / "manifests"
    shutil.copytree(MANIFESTS, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))  # openai.env.example -> openai.env
    out = {}
    for name in KUSTOMIZATIONS:
        proc = subprocess.run([kubectl(), "kustomize", str(tree / name)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"`kubectl kustomize manifests/{name}` failed:\n{proc.stderr}"
        out[name] = proc.stdout
    return out


@pytest.fixture(scope="module")
def objects(rendered) -> dict[str, list[dict]]:
    return {name: [doc for doc in yaml.safe_load_all(text) if doc] for name, text in rendered.items()}


def _id(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '-')}/{meta['name']}"


def _find(objs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name
             and namespace in (None, o["metadata"].get("namespace"))]
    assert len(found) == 1, f"expected one {kind} {namespace or '*'}/{name}, found {len(found)}"
    return found[0]


def _pod_specs(objs: list[dict]):
    for obj in objs:
        if obj["kind"] in POD_KINDS:
            spec = obj
            for key in POD_KINDS[obj["kind"]]:
                spec = spec[key]
            yield obj, spec


def _validation_error(obj: dict) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"
    except kubernetes_validate.SchemaNotFoundError as e:  # an unknown kind is an unvalidated kind
        return e.message
    return None


def test_every_kustomization_renders_something(objects):
    for name, objs in objects.items():
        assert objs, f"manifests/{name} rendered no objects"
        for obj in objs:
            assert obj["kind"] == "Namespace" or obj["metadata"].get("namespace"), \
                f"manifests/{name}: {obj['kind']}/{obj['metadata']['name']} has no namespace and would land in `default`"


def test_every_object_passes_the_kubernetes_schema(objects):
    errors = [f"manifests/{name}: {_id(obj)}: {err}"
              for name, objs in objects.items() for obj in objs if (err := _validation_error(obj))]
    assert not errors, f"objects failing the Kubernetes {KUBERNETES_VERSION} schema (strict):\n" + "\n".join(errors)


def test_schema_check_rejects_a_misspelled_field(objects):
    deployment = copy.deepcopy(_find(objects["overlays/local"], "Deployment", "mlflow"))
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    assert _validation_error(deployment) is not None, "strict validation let an unknown field through"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pods_run_restricted(objects, name):
    """Non-root, no privilege escalation, no capabilities, read-only root, seccomp, sized."""
    problems = []
    for obj, spec in _pod_specs(objects[name]):
        where = _id(obj)
        pod_ctx = spec.get("securityContext", {})
        if pod_ctx.get("runAsNonRoot") is not True or pod_ctx.get("runAsUser", 0) < 10000:
            problems.append(f"{where}: pod must set runAsNonRoot and a runAsUser of 10000 or more")
        if pod_ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod must use the RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: pod calls no Kubernetes API and must not mount a token")
        for container in spec.get("initContainers", []) + spec["containers"]:
            at = f"{where} container {container['name']}"
            ctx = container.get("securityContext", {})
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation must be false")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: readOnlyRootFilesystem must be true (mount an emptyDir where it writes)")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{at}: must drop ALL capabilities")
            for bound in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(container.get("resources", {}).get(bound, {}))
                if missing:
                    problems.append(f"{at}: resources.{bound} lacks {sorted(missing)}")
            image = container["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{at}: image {image} must be pinned to a version tag")
    assert not problems, "\n".join(problems)


def test_secret_templates_hold_only_placeholders():
    examples = sorted(MANIFESTS.rglob("*.env.example"))
    assert examples, "no secrets templates (*.env.example) under manifests/"
    problems = []
    for path in examples:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition("=")
            where = f"{path.relative_to(REPO)}:{lineno}: {key}"
            if not sep:
                problems.append(f"{where}: not a KEY=VALUE line")
            elif SECRET_KEY.search(key) and value != PLACEHOLDER:
                problems.append(f"{where}: a secret's template must hold {PLACEHOLDER}, not a value")
            elif REAL_LOOKING.search(value):
                problems.append(f"{where}: looks like a real credential")
    assert not problems, "\n".join(problems)


def test_filled_in_secrets_files_are_ignored_by_git():
    for example in MANIFESTS.rglob("*.env.example"):
        secrets_file = example.with_suffix("").relative_to(REPO)
        proc = subprocess.run(["git", "check-ignore", "--quiet", "--no-index", str(secrets_file)], cwd=REPO)
        assert proc.returncode == 0, f"git would commit {secrets_file}, the filled-in copy of {example.name}"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_rendered_secrets_carry_no_values(objects, name):
    for secret in (o for o in objects[name] if o["kind"] == "Secret"):
        for key, value in _secret_data(secret).items():
            if SECRET_KEY.search(key):
                assert value == PLACEHOLDER, f"{_id(secret)} {key}: rendered from the templates, yet holds a value"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_pipeline_namespace_has_what_the_compiled_pipeline_names(objects, name):
    """The Secrets, cache volume and ServiceAccount the pipeline refers to by name, in one namespace."""
    objs = objects[name]
    runner = [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "selfguided-pipeline"]
    assert len(runner) == 1, f"manifests/{name}: expected one ServiceAccount selfguided-pipeline"
    namespace = runner[0]["metadata"]["namespace"]
    for secret_name, keys in ((platform.OPENAI_SECRET_NAME, platform.OPENAI_SECRET_KEYS),
                              (platform.S3_SECRET_NAME, platform.S3_SECRET_KEYS),
                              (names.PIPELINE_AUTH_SECRET_NAME, names.PIPELINE_AUTH_SECRET_KEYS)):
        secret = _find(objs, "Secret", secret_name, namespace)
        optional = {"AWS_ENDPOINT_URL_S3"}  # the S3 endpoint: absent means AWS itself
        assert set(keys) - optional <= set(_secret_data(secret)) <= set(keys), \
            f"{_id(secret)}: keys differ from pipelines/platform.py"
    _find(objs, "PersistentVolumeClaim", platform.CACHE_PVC_NAME, namespace)
    binding = _find(objs, "RoleBinding", "selfguided-pipeline", namespace)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "selfguided-pipeline", "namespace": namespace}]
    role = _find(objs, "Role", binding["roleRef"]["name"], namespace)
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"], f"{_id(role)}: wildcard in {rule}"
        if "secrets" in rule["resources"]:
            assert rule.get("resourceNames"), f"{_id(role)}: may read secrets only by name"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_mlflow_answers_at_the_compiled_tracking_uri(objects, name):
    objs = objects[name]
    uri = urlsplit(platform.MLFLOW_TRACKING_URI_IN_CLUSTER)
    service_name, namespace = uri.hostname.split(".")[:2]
    service = _find(objs, "Service", service_name, namespace)
    assert [p["port"] for p in service["spec"]["ports"]] == [uri.port], f"{_id(service)}: port differs from {uri.geturl()}"
    deployment = _find(objs, "Deployment", "mlflow", namespace)
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), f"{_id(service)} selects no MLflow pod"
    server = pod["spec"]["containers"][0]
    assert server["command"] == ["mlflow", "server"] and "--serve-artifacts" in server["args"]
    assert pod["spec"]["initContainers"][0]["command"][:3] == ["mlflow", "db", "upgrade"], "no migration on start"

    config_name = next(ref["configMapRef"]["name"] for ref in server["envFrom"] if "configMapRef" in ref)
    config = _find(objs, "ConfigMap", config_name, namespace)["data"]
    allowed = config["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in (uri.netloc, f"localhost:{uri.port}"):  # pipeline pods, and `kubectl port-forward`
        assert is_allowed_host_header(allowed, host), f"MLflow would reject Host: {host} (MLFLOW_SERVER_ALLOWED_HOSTS)"
    assert config["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_register_step_learns_where_the_server_keeps_artifacts(objects, name):
    """The profile's ConfigMap the register step reads (pipelines/platform.py) holds the server's own
    --artifacts-destination, so the s3:// URI serving gets is where the files are."""
    objs = objects[name]
    namespace = _find(objs, "ServiceAccount", "selfguided-pipeline")["metadata"]["namespace"]
    profile = _find(objs, "ConfigMap", platform.MLFLOW_CONFIG_MAP_NAME, namespace)["data"]
    server = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("mlflow-config"))["data"]
    assert set(profile) == set(platform.MLFLOW_CONFIG_MAP_KEYS)
    assert profile["MLFLOW_ARTIFACTS_DESTINATION"] == server["MLFLOW_ARTIFACTS_DESTINATION"]


def test_overlays_differ_in_database_and_object_store(objects):
    local, production = objects["overlays/local"], objects["overlays/production"]
    local_config = next(o for o in local if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("mlflow-config"))
    assert "MLFLOW_S3_ENDPOINT_URL" in local_config["data"], "local should use the cluster's S3-compatible store"
    _find(local, "StatefulSet", "postgres", "selfguided")
    assert not [o for o in production if o["kind"] == "StatefulSet"], "production uses a managed database"
    assert _find(production, "Deployment", "mlflow")["spec"]["replicas"] >= 2
    _find(production, "PodDisruptionBudget", "mlflow", "selfguided")
    postgres_secrets = {n: _secret_data(next(o for o in objs if o["kind"] == "Secret"
                                              and o["metadata"]["name"].startswith("mlflow-postgres")))
                        for n, objs in (("local", local), ("production", production))}
    assert postgres_secrets["production"]["POSTGRES_SSLMODE"] == "verify-full", \
        "a managed database is reached over TLS, its certificate checked"
    assert postgres_secrets["production"]["POSTGRES_SSLROOTCERT"].startswith("/etc/ssl/postgres/")
    mounts = {m["mountPath"]: m["name"] for c in _find(production, "Deployment", "mlflow")["spec"]["template"]["spec"][
        "containers"] for m in c["volumeMounts"]}
    assert mounts["/etc/ssl/postgres"] == "postgres-ca"
    for objs in (local, production):  # the upload spool is node disk: asked for, not just capped
        (mlflow_container,) = _find(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
        assert "ephemeral-storage" in mlflow_container["resources"]["requests"]


def test_gpu_check_schedules_like_the_pipeline_gpu_steps(objects):
    job = _find(objects["gpu-check"], "Job", "selfguided-gpu-check")
    spec = job["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {platform.GPU_NODE_SELECTOR_KEY: platform.GPU_NODE_SELECTOR_VALUE}
    assert {"key": platform.GPU_TOLERATION_KEY, "operator": "Exists",
            "effect": platform.GPU_TOLERATION_EFFECT} in spec["tolerations"]
    container = spec["containers"][0]
    assert container["resources"]["limits"][platform.GPU_RESOURCE] == 1
    assert container["image"] == platform.GPU_IMAGE
    # It asks for what a real GPU step asks for, so it passes only where those steps fit.
    for bound in ("requests", "limits"):
        assert str(container["resources"][bound]["cpu"]) == platform.GPU_STEP_CPU
        assert container["resources"][bound]["memory"] == platform.GPU_STEP_MEMORY


def test_images_built_here_carry_the_package_version(objects):
    ours = {c["image"] for objs in objects.values() for _, spec in _pod_specs(objs)
            for c in spec.get("initContainers", []) + spec["containers"] if c["image"].startswith(platform.IMAGE_REGISTRY + "/")}
    assert f"{platform.IMAGE_REGISTRY}/selfguided-mlflow:{platform.IMAGE_TAG}" in ours
    for image in ours:
        assert image.endswith(f":{platform.IMAGE_TAG}"), f"{image}: tag differs from the package version {platform.IMAGE_TAG}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_image_of_ours_is_named_by_the_kustomizations_images_block(objects, name):
    """An image nobody pushes is ImagePullBackOff on the first apply: each kustomization names our
    images in one `images:` block (what `kustomize edit set image` changes and CI's bundle job pins
    by digest), at the package version, which CI pushes for a release tag (.github/workflows/ci.yml)."""
    ours = {c["image"] for _, spec in _pod_specs(objects[name])
            for c in spec.get("initContainers", []) + spec["containers"] if "/selfguided-" in c["image"]}
    block = yaml.safe_load((MANIFESTS / name / "kustomization.yaml").read_text(encoding="utf-8")).get("images", [])
    named = {f"{entry['newName']}:{entry['newTag']}" for entry in block}
    assert ours and ours <= named, f"manifests/{name}: {sorted(ours - named)} not in its images: block"
    workflow = (REPO / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    assert '--tag "$registry/selfguided-$IMAGE:$version"' in workflow, "CI no longer pushes the version tag"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_mlflow_backend_uri_is_assembled_from_the_database_secret(objects, name):
    objs = objects[name]
    pod = _find(objs, "Deployment", "mlflow", "selfguided")["spec"]["template"]["spec"]
    db = _secret_data(next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith("mlflow-postgres")))
    expected = (f"postgresql+psycopg2://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@{db['POSTGRES_HOST']}:"
                f"{db['POSTGRES_PORT']}/{db['POSTGRES_DB']}?sslmode={db['POSTGRES_SSLMODE']}"
                f"&sslrootcert={db['POSTGRES_SSLROOTCERT']}")
    for container in pod["initContainers"] + pod["containers"]:
        env = _kubelet_env(container, objs, "selfguided")
        assert env["MLFLOW_BACKEND_STORE_URI"] == expected, f"{container['name']}: backend URI miswired"
        argv = [_expand(a, env) for a in container["command"] + container.get("args", [])]
        assert not [a for a in argv if "$(" in a], f"{container['name']}: undefined variable in {argv}"


def _container(pod: dict, name: str) -> dict:
    found = [c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name}, found {len(found)}"
    return found[0]


def _mounts(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_mlflow_asks_for_a_login_and_lets_people_read(objects, name):
    """basic-auth, READ by default, the auth database beside the backend store, admin and Flask key
    from a Secret, the admin password nowhere but that Secret."""
    objs = objects[name]
    pod = _find(objs, "Deployment", "mlflow", "selfguided")["spec"]["template"]
    server, writer = _container(pod, "mlflow"), _container(pod, "auth-config")
    assert "--app-name=basic-auth" in server["args"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}

    # The writer fills the in-memory volume the server reads its config from.
    server_env, writer_env = _kubelet_env(server, objs, "selfguided"), _kubelet_env(writer, objs, "selfguided")
    config_path = Path(server_env["MLFLOW_AUTH_CONFIG_PATH"])
    assert writer_env["MLFLOW_AUTH_CONFIG_PATH"] == str(config_path)
    written = next(n for n, m in _mounts(writer).items() if config_path.is_relative_to(m["mountPath"]))
    assert _mounts(server)[written] == {"name": written, "mountPath": _mounts(writer)[written]["mountPath"], "readOnly": True}
    assert volumes[written]["emptyDir"]["medium"] == "Memory", "the file holds the database password: keep it off disk"
    assert pod["spec"]["initContainers"][-1]["name"] == "auth-config", "written before the server starts"

    # Its settings: the ConfigMap behind the template path.
    template = Path(writer_env["MLFLOW_AUTH_CONFIG_TEMPLATE"])
    source = next(n for n, m in _mounts(writer).items() if template.parent == Path(m["mountPath"]))
    config_map = _find(objs, "ConfigMap", volumes[source]["configMap"]["name"], "selfguided")
    ini = configparser.ConfigParser()
    ini.read_string(config_map["data"][template.name])
    assert ini["mlflow"]["default_permission"] == "READ", "people read; only grants write"
    assert not {"database_uri", "admin_password", "admin_username"} & set(ini["mlflow"]), \
        "the database and the admin come from Secrets at start, not from the ConfigMap"

    auth = _secret_data(_find(objs, "Secret", next(ref["secretRef"]["name"] for ref in server["envFrom"]
                                                   if "secretRef" in ref and ref["secretRef"]["name"].startswith("mlflow-auth")),
                              "selfguided"))
    assert set(auth) == {tracking.ADMIN_USERNAME_ENV, tracking.ADMIN_PASSWORD_ENV, "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    for key in (tracking.ADMIN_USERNAME_ENV, tracking.ADMIN_PASSWORD_ENV, "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert server_env[key] == auth[key], f"the server does not get {key} from the mlflow-auth Secret"


@pytest.mark.parametrize("name", [k for k in KUSTOMIZATIONS if k.startswith("overlays/")])
def test_pipeline_user_job_creates_the_identity_the_pipeline_logs_in_with(objects, name):
    objs = objects[name]
    runner_namespace = _find(objs, "ServiceAccount", "selfguided-pipeline")["metadata"]["namespace"]
    identity = _secret_data(_find(objs, "Secret", names.PIPELINE_AUTH_SECRET_NAME, runner_namespace))
    job = _find(objs, "Job", "mlflow-pipeline-user", "selfguided")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == platform.CPU_IMAGE
    assert container["command"] == ["python", "-m", "selfguided.pipelines.cli.mlflow_auth", "create-pipeline-user"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["tracking-uri"] == platform.MLFLOW_TRACKING_URI_IN_CLUSTER

    from selfguided.pipelines.pipeline import self_guided_pipeline

    defaults = self_guided_pipeline.component_spec.inputs
    assert args["experiment"] == defaults["experiment_name"].default, "the Job grants on another experiment than the pipeline's"
    assert args["registered-model"] == defaults["registered_model_name"].default

    env = _kubelet_env(container, objs, "selfguided")
    assert {k: env[k] for k in identity} == identity, "the Job creates another user than the one the pipeline logs in as"
    auth = _secret_data(next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith("mlflow-auth-")))
    assert env[tracking.ADMIN_USERNAME_ENV] == auth[tracking.ADMIN_USERNAME_ENV]
    assert env[tracking.ADMIN_PASSWORD_ENV] == auth[tracking.ADMIN_PASSWORD_ENV]
    assert not [a for a in container["args"] if "PASSWORD" in a.upper()], "passwords travel as env, never as args"
    assert job["spec"].get("ttlSecondsAfterFinished"), "a finished Job must go, or a changed Secret cannot re-run it"

    # The tracking server's network policy admits the Job's pod.
    policy = _find(objs, "NetworkPolicy", "mlflow", "selfguided")
    labels = pod["metadata"]["labels"]
    assert any(set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= labels.items()
               for rule in policy["spec"]["ingress"] for peer in rule["from"]), "the Job could not reach MLflow"


def test_pipeline_user_job_arguments_parse(objects):
    """The Job's arguments are ones the command accepts (a typo would fail only in the cluster)."""
    container = _find(objects["overlays/local"], "Job", "mlflow-pipeline-user")["spec"]["template"]["spec"]["containers"][0]
    proc = subprocess.run([sys.executable, *container["command"][1:], *container["args"], "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_mlflow_server_runs_with_the_manifest_settings(objects, s3_server, tmp_path, monkeypatch):
    """The local overlay's init and server commands, environment, ConfigMaps and login settings, run
    for real: SQLite stands in for PostgreSQL, moto for the S3 store, a temporary folder for the
    pod's memory volume, and the server binds 127.0.0.1."""
    objs = objects["overlays/local"]
    pod = _find(objs, "Deployment", "mlflow", "selfguided")["spec"]["template"]["spec"]
    (upgrade, writer), (server,) = pod["initContainers"], pod["containers"]
    stand_ins = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "HOME": str(tmp_path),
                 "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url, **S3_CREDENTIALS}
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))

    def argv(container: dict, env: dict[str, str]) -> list[str]:
        args = [_expand(a, env) for a in container["command"] + container.get("args", [])]
        assert args[0] == "mlflow"
        return [mlflow_cli, *args[1:]]

    upgrade_env = _kubelet_env(upgrade, objs, "selfguided") | stand_ins
    subprocess.run(argv(upgrade, upgrade_env), env=os.environ | upgrade_env, check=True, capture_output=True, timeout=300)

    # The auth config: refused while the Secret holds the templates' placeholders, written once filled in.
    writer_env = _kubelet_env(writer, objs, "selfguided") | stand_ins
    template = tmp_path / "template" / Path(writer_env["MLFLOW_AUTH_CONFIG_TEMPLATE"]).name
    source = next(m["name"] for m in writer["volumeMounts"] if m["mountPath"] == str(Path(writer_env["MLFLOW_AUTH_CONFIG_TEMPLATE"]).parent))
    config_map_name = next(v["configMap"]["name"] for v in pod["volumes"] if v["name"] == source)
    template.parent.mkdir()
    template.write_text(_find(objs, "ConfigMap", config_map_name, "selfguided")["data"][template.name], encoding="utf-8")
    config_path = tmp_path / "auth" / "basic_auth.ini"
    config_path.parent.mkdir()
    writer_env |= {"MLFLOW_AUTH_CONFIG_TEMPLATE": str(template), "MLFLOW_AUTH_CONFIG_PATH": str(config_path)}
    assert writer["command"] == ["sh", "-c"]
    refused = subprocess.run(["sh", "-c", *writer["args"]], env=os.environ | writer_env, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr and PLACEHOLDER in refused.stderr
    assert not config_path.exists(), "a server with the template's admin password must not start"
    filled = {tracking.ADMIN_PASSWORD_ENV: "admin-" + secrets.token_hex(8), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    subprocess.run(["sh", "-c", *writer["args"]], env=os.environ | writer_env | filled, check=True, timeout=30)
    assert config_path.stat().st_mode & 0o077 == 0, "the auth config holds the database password: owner only"
    ini = configparser.ConfigParser()
    ini.read(config_path)
    assert ini["mlflow"]["database_uri"] == stand_ins["MLFLOW_BACKEND_STORE_URI"], "the auth tables live beside MLflow's"

    server_env = _kubelet_env(server, objs, "selfguided") | stand_ins | filled | {"MLFLOW_AUTH_CONFIG_PATH": str(config_path)}
    bucket = urlsplit(server_env["MLFLOW_ARTIFACTS_DESTINATION"]).netloc
    s3_server.client().create_bucket(Bucket=bucket)
    port = free_port()
    command = argv(server, server_env)
    for flag, local in (("--host=0.0.0.0", "--host=127.0.0.1"), ("--port=5000", f"--port={port}")):
        assert flag in command, f"the manifest's server command lacks {flag}"
        command[command.index(flag)] = local
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=os.environ | server_env, cwd=tmp_path, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path)
        uri = urlsplit(platform.MLFLOW_TRACKING_URI_IN_CLUSTER)
        search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
        admin = (server_env[tracking.ADMIN_USERNAME_ENV], server_env[tracking.ADMIN_PASSWORD_ENV])
        login = "Basic " + base64.b64encode(":".join(admin).encode()).decode()
        for host, authorization, status in ((uri.netloc, None, 401), (uri.netloc, login, 200),
                                            ("attacker.example:5000", login, 403)):
            request = urllib.request.Request(search, headers={"Host": host} | ({"Authorization": authorization} if authorization else {}))
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answered = response.status
            except urllib.error.HTTPError as e:
                answered = e.code
            assert answered == status, f"Host: {host}, {'admin' if authorization else 'no login'}: answered {answered}, expected {status}"

        # The admin the server created from the Secret logs in; artifacts still go to the store.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin[1])
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment_id = client.create_experiment("manifest-check")
        assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
        run = client.create_run(experiment_id)
        client.log_text(run.info.run_id, "proxied", "check/hello.txt")
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/check/hello.txt") for k in keys), keys
    finally:
        _stop_group(process)


def test_checkov_finds_nothing_unjustified(rendered, tmp_path):
    for name, text in rendered.items():
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(text, encoding="utf-8")
    results = checkov_results(tmp_path)  # asserts the canary was flagged: the scan really runs

    failed = findings(results)
    assert not failed, "checkov findings to fix, or skip in place with a reason:\n" + "\n".join(
        f"{c['file_path']}: {c['resource']}: {c['check_id']} {c['check_name']}" for c in failed)
    assert len(results["passed_checks"]) > 100
    for skipped in results["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) >= 40, f"{skipped['resource']}: skip of {skipped['check_id']} needs a reason, got {reason!r}"
