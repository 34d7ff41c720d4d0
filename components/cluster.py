"""Names the cluster and the code share, each written once (manifests/ creates what they name):
the resource a GPU is asked for by, and the ServiceAccounts the pipeline's pods and the served
model run as, and the narrow identities of the two tasks that change the cluster. Imported by the
pipeline's platform settings, the TrainJob launcher and the KServe client; it imports nothing at
the top (the kubernetes client only inside `api_client`)."""

GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource of NVIDIA's device plugin: what GPU pods request, and the taint key GPU
node pools carry (pipelines/platform.py tolerates it)."""

PIPELINE_SERVICE_ACCOUNT = "selfguided-pipeline"
"""The ServiceAccount of pipeline pods (manifests/base/pipeline-runner); the deployer Role of
manifests/serving is bound to it."""

PREDICTOR_SERVICE_ACCOUNT = "selfguided-predictor"
"""The served model's ServiceAccount (manifests/serving): it reads the weights with the read-only
PREDICTOR_S3_SECRET, never the pipeline's read-write keys (or, on EKS, an IAM role of its own)."""

PREDICTOR_S3_SECRET = "selfguided-s3-readonly"
"""S3 keys that may only list and read MLflow's artifact bucket (manifests/overlays/*/profile)."""

PREDICTOR_S3_ENV = {"AWS_ACCESS_KEY_ID": "SELFGUIDED_PREDICTOR_AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY": "SELFGUIDED_PREDICTOR_AWS_SECRET_ACCESS_KEY"}
"""Where the preflight task gets those keys, beside its own: it proves they read the bucket."""


# Narrow identities. KFP runs every task of a run as one ServiceAccount, so that account gets no
# right to create TrainJobs or InferenceServices: an LLM-facing step's token must not be able to
# launch a pod with any image, command and volume. The two tasks that need such rights mount the
# token of an account that has only those verbs (manifests/training, manifests/serving), and talk
# to the API server with it (`api_client`).
TRAINJOB_LAUNCHER = ("selfguided-trainjob-launcher", "/var/run/secrets/selfguided/trainjob-launcher")
"""(ServiceAccount, where the finetune task mounts its token Secret `<account>-token`)."""

DEPLOYER = ("selfguided-deployer", "/var/run/secrets/selfguided/deployer")
"""(ServiceAccount, where the deploy task mounts its token Secret `<account>-token`)."""


def token_secret(identity: tuple[str, str]) -> str:
    """The Secret (type kubernetes.io/service-account-token) holding an identity's token."""
    return f"{identity[0]}-token"


def kubeconfig_path() -> str | None:
    """KUBECONFIG as set now (the kubernetes package reads it once, when imported)."""
    import os

    return os.environ.get("KUBECONFIG") or None


def api_client(identity: tuple[str, str]):
    """A kubernetes ApiClient acting as `identity` when its token is mounted (in the pipeline's task);
    else the pod's own ServiceAccount, else the kubeconfig (a laptop, a test). Returns None when
    none of them is available, for the caller to say what is missing."""
    import os
    from pathlib import Path

    from kubernetes import client, config

    mounted = Path(identity[1])
    configuration = client.Configuration()
    if (mounted / "token").is_file() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        configuration.host = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
        configuration.api_key = {"authorization": (mounted / "token").read_text().strip()}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        configuration.ssl_ca_cert = str(mounted / "ca.crt")
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig_path(), client_configuration=configuration)
        except (config.ConfigException, OSError):
            return None
    return client.ApiClient(configuration)
