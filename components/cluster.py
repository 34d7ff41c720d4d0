"""Names the cluster and the code share, each written once (manifests/ creates what they name):
the resource a GPU is asked for by, and the ServiceAccounts the pipeline's pods and the served
model run as. Imported by the pipeline's platform settings, the TrainJob launcher and the KServe
client, so it imports nothing."""

GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource of NVIDIA's device plugin: what GPU pods request, and the taint key GPU
node pools carry (pipelines/platform.py tolerates it)."""

PIPELINE_SERVICE_ACCOUNT = "selfguided-pipeline"
"""The ServiceAccount of pipeline pods (manifests/base/pipeline-runner); the deployer Role of
manifests/serving is bound to it."""

PREDICTOR_SERVICE_ACCOUNT = "selfguided-predictor"
"""The served model's ServiceAccount (manifests/serving): it reads the weights with the
selfguided-s3 Secret."""
