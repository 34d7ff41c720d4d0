"""Platform settings: images, GPU node pool, secrets, in-cluster service addresses.

The one place where the pipeline meets a particular cluster. Everything here can be overridden
by environment variables at compile time, so CI and users compile the same code for their own
registry and node pools without editing it.
"""

from __future__ import annotations

import json
import os

# Images are the steps' own setting (components/images.py); re-exported for the pipeline and docs.
from selfguided.components.images import CPU_IMAGE, GPU_IMAGE, IMAGE_REGISTRY, IMAGE_TAG, PACKAGE_VERSION  # noqa: F401

# GPU node pool. Finetune and generate ask for `nvidia.com/gpu`, land on nodes carrying the
# node-pool label and tolerate the pool's taint. manifests/ uses the same key and values.
from selfguided.components.cluster import GPU_RESOURCE, PIPELINE_SERVICE_ACCOUNT  # noqa: E402,F401
GPU_NODE_SELECTOR_KEY = os.environ.get("SELFGUIDED_GPU_NODE_SELECTOR_KEY", "selfguided.dev/node-pool")
GPU_NODE_SELECTOR_VALUE = os.environ.get("SELFGUIDED_GPU_NODE_SELECTOR_VALUE", "gpu")
GPU_TOLERATION_KEY = GPU_RESOURCE
GPU_TOLERATION_EFFECT = "NoSchedule"
SHM_SIZE = os.environ.get("SELFGUIDED_SHM_SIZE", "16Gi")
# CPU and host memory of every GPU task (finetune, generate, model reference rows), per the node
# profile (components/images.py: NodeProfile, SELFGUIDED_GPU_NODE_CPU / _MEMORY per GPU); an explicit
# SELFGUIDED_GPU_STEP_CPU / SELFGUIDED_GPU_STEP_MEMORY wins.
from selfguided.components.images import GPU_STEP_RESOURCES, IMAGE_PULL_POLICY, NODE_PROFILE  # noqa: E402,F401

GPU_STEP_CPU = os.environ.get("SELFGUIDED_GPU_STEP_CPU", GPU_STEP_RESOURCES["cpu"])
GPU_STEP_MEMORY = os.environ.get("SELFGUIDED_GPU_STEP_MEMORY", GPU_STEP_RESOURCES["memory"])
# The GPU pool as the pods ask for it, for the deploy step's InferenceService too.
GPU_NODE_SELECTOR = {GPU_NODE_SELECTOR_KEY: GPU_NODE_SELECTOR_VALUE}
GPU_TOLERATIONS = [{"key": GPU_TOLERATION_KEY, "operator": "Exists", "effect": GPU_TOLERATION_EFFECT}]

# Secrets: read from Kubernetes Secrets into environment variables, never pipeline parameters.
OPENAI_SECRET_NAME = "selfguided-openai"
OPENAI_SECRET_KEYS = {"OPENAI_API_KEY": "OPENAI_API_KEY"}  # secret key -> env var
# Models on endpoints of their own (a jury's judges, teachers `name@url`): one key per model in this
# Secret, mounted as files (llm/config.py owns the names: key <NAME> = the model's name upper-cased,
# other characters `_`).
from selfguided.components.llm.config import (  # noqa: E402,F401
    OWN_ENDPOINT_KEYS_MOUNT_PATH as JUDGE_KEYS_MOUNT_PATH,
    OWN_ENDPOINT_KEYS_SECRET_NAME as JUDGE_KEYS_SECRET_NAME,
)
# The pipeline's MLflow identity (components/registry/names.py owns the names; manifests/ creates it).
from selfguided.components.registry.names import (  # noqa: E402
    PIPELINE_AUTH_SECRET_KEYS as MLFLOW_AUTH_SECRET_KEYS,
    PIPELINE_AUTH_SECRET_NAME as MLFLOW_AUTH_SECRET_NAME,
)
S3_SECRET_NAME = "selfguided-s3"
# The S3 endpoint is set once, as the Secret's optional AWS_ENDPOINT_URL_S3 key (Kubeflow's MinIO or
# SeaweedFS: http://minio-service.kubeflow:9000); every S3 access of every step follows it
# (components/data/s3.py: s3_client). Without it, AWS.
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                  "AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL_S3"}

# In-cluster services (manifests/ deploys MLflow under this name and namespace).
MLFLOW_TRACKING_URI_IN_CLUSTER = "http://mlflow.selfguided.svc.cluster.local:5000"
# Where that server keeps artifacts (its --artifacts-destination) reaches the register step at run
# time from this ConfigMap in the profile namespace (manifests/: made from the same file as the
# server's setting), so the s3:// URI of a champion's merged weights that serving gets is where the
# server put them, never a compile-time guess.
MLFLOW_CONFIG_MAP_NAME = "selfguided-mlflow"
MLFLOW_CONFIG_MAP_KEYS = {"MLFLOW_ARTIFACTS_DESTINATION": "MLFLOW_ARTIFACTS_DESTINATION"}

# A ReadWriteMany volume (manifests/: PersistentVolumeClaim `selfguided-cache`) holding the LLM
# response cache and the training checkpoints, so a retried or re-run task resumes.
CACHE_PVC_NAME = "selfguided-cache"
CACHE_MOUNT_PATH = "/mnt/selfguided"
HF_HOME = f"{CACHE_MOUNT_PATH}/huggingface"

# The ServiceAccount of pipeline pods (manifests/base/pipeline-runner): components/cluster.py, imported above.

# A multi-node fine-tuning (num_nodes > 1) runs as a Kubeflow Trainer TrainJob (manifests/training):
# its nodes mount the cache volume for data, checkpoints and the model output, and land on the GPU
# pool. The finetune task reads these (components/training/multinode.py: ClusterSettings).
# Image pull secrets of every task and TrainJob pod (comma-separated Secret names; "" = none).
IMAGE_PULL_SECRETS = [n.strip() for n in os.environ.get("SELFGUIDED_IMAGE_PULL_SECRETS", "").split(",") if n.strip()]
# Kueue (optional): a LocalQueue of the profile namespace that every GPU pod and TrainJob is labelled
# with, so GPU work waits for the ClusterQueue's quota (docs/run-on-kubeflow.md, "Kueue").
KUEUE_QUEUE = os.environ.get("SELFGUIDED_KUEUE_QUEUE", "")
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# At most this many (base model, arm, replicate) runs train at once: arms x replicates cannot
# scale the GPU pool without bound.
GPU_PARALLELISM = int(os.environ.get("SELFGUIDED_GPU_PARALLELISM", "4"))
# A fine-tuning's wall-clock bound: the TrainJob's activeDeadlineSeconds, and (plus an hour) the
# finetune task's own timeout, so nothing waits forever.
from selfguided.components.training.trainjob import ACTIVE_DEADLINE_S  # noqa: E402

TRAINJOB_DEADLINE_S = int(os.environ.get("SELFGUIDED_TRAINJOB_DEADLINE_S", str(ACTIVE_DEADLINE_S)))
FINETUNE_TIMEOUT_S = TRAINJOB_DEADLINE_S + 3600

TRAINJOB_ENV = {
    "SELFGUIDED_SHARED_PVC": CACHE_PVC_NAME,
    "SELFGUIDED_SHARED_MOUNT": CACHE_MOUNT_PATH,
    "SELFGUIDED_GPU_NODE_SELECTOR": json.dumps(GPU_NODE_SELECTOR),
    "SELFGUIDED_GPU_TOLERATIONS": json.dumps(GPU_TOLERATIONS),
    # the image this pipeline was compiled with, not the default the pod would compute
    "SELFGUIDED_TRAINJOB_IMAGE": GPU_IMAGE,
    "SELFGUIDED_GPU_STEP_CPU": GPU_STEP_CPU,  # per GPU: the TrainJob asks for gpus_per_node times it
    "SELFGUIDED_GPU_STEP_MEMORY": GPU_STEP_MEMORY,
    "SELFGUIDED_SHM_SIZE": SHM_SIZE,
    "SELFGUIDED_SERVICE_ACCOUNT": PIPELINE_SERVICE_ACCOUNT,
    "SELFGUIDED_IMAGE_PULL_SECRETS": ",".join(IMAGE_PULL_SECRETS),
    "SELFGUIDED_KUEUE_QUEUE": KUEUE_QUEUE,
    "SELFGUIDED_TRAINJOB_DEADLINE_S": str(TRAINJOB_DEADLINE_S),
}
TRAINJOB_ENV = {name: value for name, value in TRAINJOB_ENV.items() if value}  # unset ones are not set
