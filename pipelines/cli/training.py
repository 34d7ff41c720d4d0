"""`selfguided plan-training`: the memory plan of a fine-tuning setup, before any GPU starts.

Torch-free (components/training/memory_plan.py is arithmetic on the model's shape), so it answers
in a moment on a laptop.
"""

from __future__ import annotations

import argparse

from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.memory_plan import Setup, model_shape, plan_report
from selfguided.pipelines.options import UsageError


def cmd_plan_training(args: argparse.Namespace) -> int:
    for option, value in (("--gpus", args.gpus), ("--nodes", args.nodes), ("--gpu-memory", args.gpu_memory)):
        if not value > 0:
            raise UsageError(f"{option} {value:g}: give a number above 0")
    try:
        shape = model_shape(args.base)
    except ValueError as exc:
        raise UsageError(f"--base: {exc}") from None
    config = FinetuneConfig.for_model(args.base, method=args.method)
    setup = Setup(
        method=args.method, gpus_per_node=args.gpus, nodes=args.nodes, gpu_memory_gb=args.gpu_memory,
        micro_batch_tokens=args.micro_batch_tokens or config.micro_batch_tokens,
        gradient_checkpointing=config.gradient_checkpointing, lora_r=config.lora_r,
        lora_targets=tuple(config.lora_target_modules),
    )
    print(plan_report(shape, setup))
    return 0


def add_plan_training_parser(sub) -> None:
    plan = sub.add_parser(
        "plan-training", help="per-GPU memory of a fine-tuning setup under DDP and FSDP, and the smallest that fits",
        description="Estimate per-GPU memory (weights, gradients, AdamW state, activations, logits) of fine-tuning "
                    "a base model on the given GPUs, under DDP and FSDP, with and without activation "
                    "checkpointing, and print the smallest setup that fits. The finetune step runs the same "
                    "plan before loading the model and refuses a setup that cannot fit.")
    plan.add_argument("--base", required=True, help="tiny, or a Polyglot-ko size: 1.3b, polyglot-ko-5.8b, "
                                                    "EleutherAI/polyglot-ko-12.8b, ...")
    plan.add_argument("--method", choices=("lora", "full"), default="lora", help="(default: %(default)s)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs per node (default: %(default)s)")
    plan.add_argument("--nodes", type=int, default=1, help="nodes (default: %(default)s)")
    plan.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (default: %(default)s)")
    plan.add_argument("--micro-batch-tokens", type=int, default=0,
                      help="tokens per micro-batch (default: FinetuneConfig.for_model's for the base)")
    plan.set_defaults(func=cmd_plan_training)
