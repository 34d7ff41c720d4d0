"""Contract with Kubernetes RBAC: every API call a step makes is granted by the Role bound to the
identity that step uses, and those Roles grant nothing the code does not call.

The calls are recorded from the real code (the TrainJob launcher and the KServe client, through the
`kubernetes` client) against the stand-in API servers of tests/test_trainjob.py and
tests/test_deploy.py, over every path they take (create, follow, retry, failure, stuck pod,
cancellation; create, patch). Each HTTP request becomes the (verb, API group, resource) the API
server authorizes, by the rules of k8s.io/apiserver/pkg/endpoints/request/requestinfo.go
(NewRequestInfo): POST create, GET on an object get, GET on a collection list (watch with
?watch=true), PATCH patch, DELETE on an object delete, on a collection deletecollection; a third
path part after the object's name is a subresource (`pods/log`).

Identities: KFP runs every task of a run as one ServiceAccount (selfguided-pipeline); the finetune
task acts as selfguided-trainjob-launcher and the deploy task as selfguided-deployer through their
mounted tokens (components/cluster.py), and the pipeline's own account gets neither's rights.
"""

import threading
from pathlib import Path

import pytest
import yaml

from selfguided.components import cluster

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def authorized_as(method: str, path: str, query: str = "") -> tuple[str, str, str]:
    """(verb, group, resource) of an HTTP request, as the API server's request info resolves it."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # the core group: /api/v1/...
        group, rest = "", parts[2:]
    else:  # /apis/<group>/<version>/...
        group, rest = parts[1], parts[3:]
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    verb = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete"}[method]
    if not name and verb == "get":
        verb = "watch" if "watch=true" in query.lower() else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return verb, group, resource


def granted(role_file: Path) -> set[tuple[str, str, str]]:
    (role,) = [d for d in yaml.safe_load_all(role_file.read_text()) if d and d.get("kind") == "Role"]
    return {(verb, group, resource) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def bound_to(binding_file: Path) -> set[str]:
    (binding,) = [d for d in yaml.safe_load_all(binding_file.read_text()) if d and d.get("kind") == "RoleBinding"]
    return {s["name"] for s in binding["subjects"] if s["kind"] == "ServiceAccount"}


def test_authorized_as_reads_requests_as_the_api_server_does():
    assert authorized_as("GET", "/api/v1/namespaces/a/pods", "labelSelector=x") == ("list", "", "pods")
    assert authorized_as("GET", "/api/v1/namespaces/a/pods/p-0/log") == ("get", "", "pods/log")
    assert authorized_as("GET", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/a/trainjobs", "watch=true") == (
        "watch", "trainer.kubeflow.org", "trainjobs")
    assert authorized_as("DELETE", "/apis/g/v1/namespaces/a/things") == ("deletecollection", "g", "things")


def trainjob_calls() -> set[tuple[str, str, str]]:
    import test_trainjob as t

    from selfguided.components.training import trainjob as tj

    calls = set()
    scenarios = [([t.running(10), t.COMPLETE], {}), ([t.running(5), t.FAILED], {}),
                 ([t.running(0)], {"pod_status": {"phase": "Pending", "conditions": [
                     {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no GPU"}]}})]
    for script, extra in scenarios:
        fake = t.FakeTrainer(script, **extra)
        with t.serving(fake.server):
            runner = tj.TrainJobRunner(api_client=fake.api_client(), poll_s=0.01, log=lambda line: None)
            runner.create(t.full_spec())  # a retried step finds its TrainJob
            try:
                runner.run(t.full_spec(), stuck_after_s=0.05)
            except tj.TrainJobFailed:
                pass
        calls |= {authorized_as(verb, path) for verb, path in fake.requests}
    fake = t.FakeTrainer([t.running(1)])  # cancelled: SIGTERM deletes it
    with t.serving(fake.server):
        runner = tj.TrainJobRunner(api_client=fake.api_client(), poll_s=0.01, log=lambda line: None)
        threading.Timer(0.2, runner._stop.set).start()
        with pytest.raises(tj.TrainJobFailed):
            runner.run(t.full_spec())
    return calls | {authorized_as(verb, path) for verb, path in fake.requests}


def deploy_calls() -> set[tuple[str, str, str]]:
    import test_deploy as d

    from selfguided.components.serving.kserve import deploy_champion

    fake = d.FakeKubernetes()
    with d.serving(fake.server):
        for version, uri in ((f"{d.NAME}/3", d.URI_V3), (f"{d.NAME}/4", d.URI_V4)):  # create, then patch
            deploy_champion(True, uri, version, name=d.NAME, namespace=d.NAMESPACE, api_client=fake.api_client())
    calls = {authorized_as(r["method"], r["path"], r["query"]) for r in fake.requests}
    return calls | canary_calls()


def canary_calls() -> set[tuple[str, str, str]]:
    """The canary rollout (serving/canary.py) in both modes: start, roll back, start again, promote."""
    import test_canary as c

    from selfguided.components.serving import canary

    calls = set()
    for mode in (canary.SERVERLESS, canary.RAW):
        fake = c.FakeCluster()
        with c.serving(fake.server):
            cluster = canary.Cluster(fake.api_client(), c.NAMESPACE)
            c.apply_route(fake)  # by hand, from manifests/serving/canary-raw
            for version in (3, 4):  # the first deployment creates, the second starts a canary
                canary.roll_out(True, c.URI[version], f"{c.MODEL}/{version}", canary_percent=10, name=c.NAME,
                                namespace=c.NAMESPACE, api_client=fake.api_client(), mode=mode)
            canary.rollback_canary(cluster, c.NAME, mode=mode)
            canary.roll_out(True, c.URI[5], f"{c.MODEL}/5", canary_percent=10, name=c.NAME, namespace=c.NAMESPACE,
                            api_client=fake.api_client(), mode=mode)
            canary.promote_canary(cluster, c.NAME, mode=mode)
        calls |= {authorized_as(r["method"], r["path"], r["query"]) for r in fake.requests}
    return calls


@pytest.mark.parametrize("identity, folder, calls", [
    (cluster.TRAINJOB_LAUNCHER, "training", trainjob_calls),
    (cluster.DEPLOYER, "serving", deploy_calls),
], ids=["trainjob-launcher", "deployer"])
def test_each_identity_is_granted_exactly_the_calls_its_step_makes(identity, folder, calls):
    made = calls()
    role = granted(MANIFESTS / folder / "role.yaml")
    assert made - role == set(), f"calls the Role does not grant (the step would get 403): {sorted(made - role)}"
    assert role - made == set(), f"granted but never called (least privilege): {sorted(role - made)}"
    assert bound_to(MANIFESTS / folder / "rolebinding.yaml") == {identity[0]}
    accounts = [d for f in (MANIFESTS / folder).glob("*.yaml") for d in yaml.safe_load_all(f.read_text())
                if d and d.get("kind") in ("ServiceAccount", "Secret")]
    (secret,) = [d for d in accounts if d["kind"] == "Secret" and d["metadata"]["name"] == cluster.token_secret(identity)]
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == identity[0]


def test_the_pipelines_own_account_can_launch_and_deploy_nothing():
    """Every task runs as selfguided-pipeline: its Role holds only what KFP's driver and launcher need."""
    role = granted(MANIFESTS / "base" / "pipeline-runner" / "role.yaml")
    assert not {(v, g, r) for v, g, r in role if g in ("trainer.kubeflow.org", "serving.kserve.io", "batch")
                or (v == "create" and r in ("pods", "secrets"))}
    for folder in ("training", "serving"):
        assert "selfguided-pipeline" not in bound_to(MANIFESTS / folder / "rolebinding.yaml")


def test_only_the_finetune_and_deploy_tasks_mount_those_tokens(tmp_path):
    from kfp import compiler

    from selfguided.pipelines.pipeline import self_guided_pipeline

    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(self_guided_pipeline, str(path))
    kube = list(yaml.safe_load_all(path.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounts = {(executor, volume["secretName"], volume["mountPath"]) for executor, config in kube.items()
              for volume in config.get("secretAsVolume", [])
              if volume["secretName"] in (cluster.token_secret(cluster.TRAINJOB_LAUNCHER),
                                          cluster.token_secret(cluster.DEPLOYER))}
    assert mounts == {("exec-finetune", cluster.token_secret(cluster.TRAINJOB_LAUNCHER), cluster.TRAINJOB_LAUNCHER[1]),
                      ("exec-deploy", cluster.token_secret(cluster.DEPLOYER), cluster.DEPLOYER[1])}


def test_a_mounted_token_is_the_identity_the_client_uses(tmp_path, monkeypatch):
    folder = tmp_path / "launcher"
    folder.mkdir()
    (folder / "token").write_text("launcher-token\n")
    (folder / "ca.crt").write_text("")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    client = cluster.api_client(("selfguided-trainjob-launcher", str(folder)))
    assert client.configuration.host == "https://10.0.0.1:443"
    assert client.configuration.api_key == {"authorization": "launcher-token"}
    assert client.configuration.ssl_ca_cert == str(folder / "ca.crt")
