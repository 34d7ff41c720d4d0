"""A multi-node fine-tuning from the finetune step: where its TrainJob runs (`ClusterSettings`, the
settings the pipeline puts on the finetune task) and the run itself (`finetune_on_trainjob`: the
training file onto the shared volume, the TrainJob created and followed through trainjob.py, the
nodes' artifact copied into the step's output)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfguided.components.images import for_gpus
from selfguided.components.training.trainjob import ACTIVE_DEADLINE_S, SHM_SIZE, TrainJobRunner, TrainJobSpec


@dataclass
class ClusterSettings:
    """Where the TrainJob runs; the pipeline sets these on the finetune task (pipelines/platform.py
    owns the values), so that this library never imports the pipeline."""

    namespace: str
    image: str
    volume_claim: str
    mount_path: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    gpu_memory_gb: float | None = None
    cpu_per_gpu: str = ""  # the node profile's share per GPU (components/images.py: NodeProfile.gpu_step)
    memory_per_gpu: str = ""
    shm_size: str = SHM_SIZE
    service_account: str = ""
    image_pull_secrets: list[str] = field(default_factory=list)
    queue_name: str = ""
    active_deadline_s: int = ACTIVE_DEADLINE_S

    ENV = {"volume_claim": "SELFGUIDED_SHARED_PVC", "mount_path": "SELFGUIDED_SHARED_MOUNT",
           "node_selector": "SELFGUIDED_GPU_NODE_SELECTOR", "tolerations": "SELFGUIDED_GPU_TOLERATIONS"}
    # optional: set by the pipeline from what it was compiled with (pipelines/platform.py: TRAINJOB_ENV)
    OPTIONAL_ENV = {"gpu_memory_gb": "SELFGUIDED_GPU_MEMORY_GB", "image": "SELFGUIDED_TRAINJOB_IMAGE", "cpu_per_gpu": "SELFGUIDED_GPU_STEP_CPU",
                    "memory_per_gpu": "SELFGUIDED_GPU_STEP_MEMORY", "shm_size": "SELFGUIDED_SHM_SIZE",
                    "service_account": "SELFGUIDED_SERVICE_ACCOUNT", "image_pull_secrets": "SELFGUIDED_IMAGE_PULL_SECRETS",
                    "queue_name": "SELFGUIDED_KUEUE_QUEUE", "active_deadline_s": "SELFGUIDED_TRAINJOB_DEADLINE_S"}
    NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

    @classmethod
    def from_env(cls, image: str, env: dict[str, str] | None = None) -> "ClusterSettings":
        import json
        import os
        from pathlib import Path

        env = os.environ if env is None else env
        missing = [name for name in cls.ENV.values() if not env.get(name)]
        if missing:
            raise RuntimeError(f"num_nodes > 1 launches a TrainJob and needs {', '.join(missing)} (the pipeline sets "
                               "them on the finetune task from pipelines/platform.py)")
        namespace = env.get("SELFGUIDED_NAMESPACE") or (
            Path(cls.NAMESPACE_FILE).read_text().strip() if Path(cls.NAMESPACE_FILE).is_file() else "")
        if not namespace:
            raise RuntimeError(f"no namespace for the TrainJob: set SELFGUIDED_NAMESPACE or run in a pod "
                               f"({cls.NAMESPACE_FILE})")
        optional = {key: env[name] for key, name in cls.OPTIONAL_ENV.items() if env.get(name)}
        if "gpu_memory_gb" in optional:
            optional["gpu_memory_gb"] = float(optional["gpu_memory_gb"])
        if "image_pull_secrets" in optional:
            optional["image_pull_secrets"] = [n.strip() for n in optional["image_pull_secrets"].split(",") if n.strip()]
        if "active_deadline_s" in optional:
            optional["active_deadline_s"] = int(optional["active_deadline_s"])
        optional.setdefault("image", image)  # the compiled image wins over this process's default
        return cls(namespace=namespace, volume_claim=env[cls.ENV["volume_claim"]],
                   mount_path=env[cls.ENV["mount_path"]], node_selector=json.loads(env[cls.ENV["node_selector"]]),
                   tolerations=json.loads(env[cls.ENV["tolerations"]]), **optional)


def trainjob_name(*identity: str) -> str:
    """A DNS-1035 name, the same for the same run (so a retried step finds its TrainJob)."""
    import hashlib

    return "selfguided-ft-" + hashlib.sha256("\x00".join(identity).encode()).hexdigest()[:12]


def finetune_on_trainjob(train_file, base_model: str, arm: str, strategy: str, config, num_nodes: int,
                         gpus_per_node: int, checkpoint_dir: str, output_dir,
                         settings: ClusterSettings, runner: TrainJobRunner | None = None) -> dict[str, Any]:
    """Train on `num_nodes` nodes through a TrainJob and copy the Model artifact to `output_dir`.

    The training file goes to the shared volume, the nodes write the artifact there (rank 0, the
    same layout as a one-node run), and it is copied into the step's own output: downstream steps
    see no difference. Returns the training metrics of the artifact's manifest.
    """
    import json
    import os
    import shutil
    from pathlib import Path

    from selfguided.components.data.hashing import file_sha256
    from selfguided.components.model.artifact import copy_artifact, read_manifest
    from selfguided.components.training.memory_plan import plan_for_run
    from selfguided.components.training.worker import WorkerRun

    plan = plan_for_run(base_model, config, gpus_per_node, num_nodes, settings.gpu_memory_gb)  # DoesNotFit stops here
    config_json = json.dumps(config.to_dict(), sort_keys=True)
    name = trainjob_name(file_sha256(train_file), base_model, arm, strategy, config_json, str(num_nodes),
                         str(gpus_per_node))
    work = Path(settings.mount_path) / "trainjobs" / name
    work.mkdir(parents=True, exist_ok=True)
    shared_file = work / f"{arm}.jsonl"
    shutil.copyfile(train_file, shared_file)
    command = ["torchrun", *WorkerRun(str(shared_file), base_model, str(work / "model"), config, arm=arm,
                                      strategy=strategy, checkpoint_dir=checkpoint_dir or str(work / "checkpoints")).args()]
    cpu_per_node, memory_per_node = for_gpus(settings.cpu_per_gpu, settings.memory_per_gpu, gpus_per_node)
    spec = TrainJobSpec(name=name, namespace=settings.namespace, image=settings.image, command=command,
                        num_nodes=num_nodes, gpus_per_node=gpus_per_node, volume_claim=settings.volume_claim,
                        mount_path=settings.mount_path, node_selector=settings.node_selector,
                        tolerations=settings.tolerations,
                        env={k: os.environ[k] for k in ("HF_HOME", "HF_ENDPOINT") if os.environ.get(k)},
                        cpu_per_node=cpu_per_node, memory_per_node=memory_per_node, shm_size=settings.shm_size,
                        service_account=settings.service_account, image_pull_secrets=settings.image_pull_secrets,
                        active_deadline_s=settings.active_deadline_s, queue_name=settings.queue_name)
    runner = runner or TrainJobRunner()
    if plan is not None:
        runner.log(f"memory plan: {plan.describe()}")
    runner.run(spec)
    copy_artifact(work / "model", output_dir)
    return read_manifest(output_dir).train_metrics

