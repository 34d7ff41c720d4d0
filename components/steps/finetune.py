"""The finetune step: supervised fine-tuning of a GPT-NeoX base (Polyglot-ko or `tiny`) on one arm
of the split data, written as the Model artifact.

- `run_finetune_step`: what the KFP component does: train `<train_dir>/<arm>.jsonl` in this
  process, or under `torchrun --nproc_per_node=num_gpus` when num_gpus > 1 (every rank runs the
  training worker, components/training/worker.py).
- `finetune`: the thin @dsl.component.

The work is in components/training/: config.py (FinetuneConfig), data.py (tokenizing, packing),
loop.py (the training loop), checkpoints.py, job.py (one run from file to artifact), worker.py (the
command line of a rank), trainjob.py (several nodes). Those are
imported inside the functions, so that the pipeline definition importing this component does not
import torch.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import dataclasses
import signal
import subprocess
import sys
from pathlib import Path
from typing import List, NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.images import CPU_IMAGE, GPU_IMAGE


def run_finetune_step(train_dir: str | Path, base_model: str, arm: str, strategy: str, config_json: str,
                      num_gpus: int, checkpoint_dir: str, output_dir: str | Path, replicate: int = 0,
                      num_nodes: int = 1, gpus_per_node: int = 0) -> dict[str, float]:
    """What the KFP component does: train `<train_dir>/<arm>.jsonl`, in this process on one
    device, under `torchrun --nproc_per_node=num_gpus` (DDP or FSDP) when num_gpus > 1, or on
    `num_nodes` nodes x gpus_per_node through a Kubeflow Trainer TrainJob when num_nodes > 1 (this
    pod then only launches and follows it). Replicate r (a training-seed replicate of its (base model,
    arm)) trains with the config's seed + r."""
    from selfguided.components.data.jsonl import DataError
    from selfguided.components.model.artifact import read_manifest, write_manifest
    from selfguided.components.model.prompting import ARMS
    from selfguided.components.training.config import FinetuneConfig

    train_file = Path(train_dir) / f"{arm}.jsonl"
    if not train_file.exists():
        raise DataError(f"{train_file}: no training file for arm {arm!r} (the split step writes "
                        f"{', '.join(a + '.jsonl' for a in ARMS)})")
    config = FinetuneConfig.from_json(config_json, base_model)
    if replicate:
        config = dataclasses.replace(config, seed=config.seed + int(replicate))
    metrics = _train_where_asked(train_file, base_model, arm, strategy, config, num_gpus, checkpoint_dir, output_dir,
                                 num_nodes, gpus_per_node)
    # The replicate is part of what the model is: register checks its judge summary against it.
    manifest = read_manifest(output_dir)
    write_manifest(output_dir, dataclasses.replace(manifest, replicate=int(replicate)))
    return metrics


def _train_where_asked(train_file: Path, base_model: str, arm: str, strategy: str, config, num_gpus: int,
                       checkpoint_dir: str, output_dir: str | Path, num_nodes: int, gpus_per_node: int
                       ) -> dict[str, float]:
    from selfguided.components.model.artifact import read_manifest
    from selfguided.components.training.job import train
    from selfguided.components.training.worker import WorkerRun

    if num_nodes > 1:
        from selfguided.components.training.multinode import ClusterSettings, finetune_on_trainjob

        return finetune_on_trainjob(train_file, base_model, arm, strategy, config, num_nodes, gpus_per_node,
                                    checkpoint_dir, output_dir, settings=ClusterSettings.from_env(GPU_IMAGE))
    from selfguided.components.training.parallel import require_gpus

    require_gpus(num_gpus)
    if num_gpus <= 1:
        return train(train_file, base_model, output_dir, config, checkpoint_dir or None, arm=arm, strategy=strategy)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}",
               *WorkerRun(str(train_file), base_model, str(output_dir), config, arm=arm, strategy=strategy,
                          checkpoint_dir=checkpoint_dir or None).args()]
    process = subprocess.Popen(command)
    # Kubernetes signals this process only; torchrun passes SIGTERM on to its workers.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signal.SIGTERM))
    try:
        returncode = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if returncode != 0:
        raise RuntimeError(f"torchrun exited with code {returncode}: {' '.join(command)}")
    return read_manifest(output_dir).train_metrics


@component(base_image=GPU_IMAGE, install_kfp_package=False)  # the image has kfp
def finetune(
    train_data: Input[Dataset],
    base_model: str,
    arm: str,
    strategy: str,
    config_json: str,
    num_gpus: int,
    checkpoint_dir: str,
    model: Output[Model],
    metrics: Output[Metrics],
    replicate: int = 0,
    num_nodes: int = 1,
    gpus_per_node: int = 0,
):
    """Fine-tune a small Korean LM on one arm of the split data.

    Args:
        train_data: directory written by the split step, holding `<arm>.jsonl` per arm, rows
            `{"id", "category", "prompt", "response"}`.
        base_model: `tiny` (built locally, nothing downloaded), a hub id such as
            EleutherAI/polyglot-ko-1.3b, or a local path reachable from the pod.
        arm: which file to train on: `unscored`, `self_guided` or `control`.
        strategy: how the split used the scores (`condition` or `filter`); written into the model's
            manifest, where generate and serving read it to prompt the model as it was trained.
        config_json: "" for the per-size defaults, else a JSON object of FinetuneConfig overrides,
            e.g. '{"method": "full", "num_epochs": 2}'.
        num_gpus: GPUs of this pod; more than 1 runs torchrun (DDP or FSDP, FinetuneConfig.parallelism)
            inside the step. 0 with num_nodes > 1.
        checkpoint_dir: a persistent folder (PVC mount), shareable by all tasks: each run uses the
            subfolder named by its fingerprint, so a retried pod resumes from its last checkpoint;
            "" keeps checkpoints inside the output only (no resume across pods).
        model: the trained model directory (layout: components/model/artifact.py).
        metrics: every training metric (train_loss, tokens_per_s, peak_memory_gb, ...).
        replicate: which training-seed replicate of (base_model, arm) this is: trains with the
            config's seed + replicate (0: the config's seed, as with one replicate).
        num_nodes: more than 1: train on that many nodes as a Kubeflow Trainer v2 TrainJob (runtime
            torch-distributed) of gpus_per_node GPUs per node, that this step creates, follows and
            deletes when cancelled; the pod asks for no GPU itself (`finetune_pod_gpus`).
            The model output is the same.
        gpus_per_node: GPUs per TrainJob node (num_nodes > 1 only).
    """
    from selfguided.components.steps.finetune import run_finetune_step

    results = run_finetune_step(train_data.path, base_model, arm, strategy, config_json, num_gpus, checkpoint_dir,
                                model.path, replicate, num_nodes, gpus_per_node)
    for name, value in results.items():
        metrics.log_metric(name, value)
    model.metadata.update({"base_model": base_model, "arm": arm, "strategy": strategy, "replicate": replicate})




def pod_placement(num_gpus: int, num_nodes: int, node_selector: dict, tolerations: list) -> tuple[int, dict, list]:
    """(GPUs, node selector, tolerations) of the finetune task's own pod: num_gpus on the GPU pool on
    one node; with num_nodes > 1 the TrainJob's pods hold the GPUs and the task only launches and
    follows it, so it asks for no GPU and is not pinned to the GPU pool (it would take a GPU node's
    CPU and memory from the TrainJob's own pods)."""
    if num_nodes > 1:
        return 0, {}, []
    return num_gpus, dict(node_selector), list(tolerations)


@component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_runs(base_models: List[str], arms: List[str], replicates: int) -> List[dict]:
    """Every (base model, arm, training-seed replicate) to train, as loop items."""
    if not base_models or not arms:
        raise ValueError("base_models and arms must both be non-empty")
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates}")
    return [{"base_model": m, "arm": a, "replicate": r} for m in base_models for a in arms for r in range(replicates)]


@component(base_image=CPU_IMAGE, install_kfp_package=False)
def finetune_placement(num_gpus: int, num_nodes: int, node_selector: dict, tolerations: list
                       ) -> NamedTuple("Outputs", [("gpus", int), ("gpu_limit", str), ("node_selector", dict),
                                                   ("tolerations", list)]):
    """Where the finetune task's own pod runs (`pod_placement`): its GPU count, node selector and
    tolerations, as task outputs the pipeline sets on the finetune task at run time.

    `gpu_limit` is the same count as a string, for the task's accelerator limit: the KFP driver
    resolves a runtime resource value with the parameter's *string* value and sets no limit when
    that is empty, which it is for a number (backend/src/v2/driver/driver.go and resolve.go,
    resolvePodSpecInputRuntimeParameter, at 2.15.0): an int here would put the pod on the GPU pool
    without a GPU. `gpus` stays an int for the finetune component's own `num_gpus` input."""
    from collections import namedtuple

    from selfguided.components.steps.finetune import pod_placement

    gpus, selector, tolerated = pod_placement(num_gpus, num_nodes, node_selector, tolerations)
    return namedtuple("Outputs", ["gpus", "gpu_limit", "node_selector", "tolerations"])(
        gpus, str(gpus), selector, tolerated)

