"""Fine-tuning throughput: padding-free packing against padded batches, per Polyglot-ko size.

Randomly initialised models with the exact Polyglot-ko configs (nothing is downloaded) are trained
by the real loop (`training.loop.train_loop`, same attention backends, LoRA targets, precision) on a
synthetic mix of Korean writing-sample lengths. Each (model, layout) runs in a fresh process, so
its peak memory is its own. Reported per row: real (non-pad) tokens/s, MFU, peak memory, and the
share of the batch tensors that was padding. Layouts: `padded` (rows padded to the longest, the
usual baseline), `packed` (padding-free, varlen attention), and optionally `packed-dense` (packed,
but attention through SDPA's block-diagonal mask, transformers' stock path for packed rows, which
computes the full row x row score matrix).

MFU = tokens/s x FLOPs per token / peak FLOP/s, with FLOPs per token = 6N for full fine-tuning
(forward 2N, backward 4N) and 4N for LoRA (frozen weights get no weight gradient), N = the weights
the forward pass multiplies (every parameter except the input embedding), peak = 989 TFLOP/s
(H100 / H200 dense bf16). Attention score FLOPs are not counted, so MFU is slightly understated.

  python benchmarks/finetune_throughput.py                               # GPU: 1.3b 3.8b 5.8b, LoRA
  python benchmarks/finetune_throughput.py --models 1.3b --method full
  python benchmarks/finetune_throughput.py --models tiny --device cpu    # a few minutes on a CPU
  python benchmarks/finetune_throughput.py --models tiny --device cpu --layouts padded packed packed-dense

Ends with one line: RESULT key=value ...
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace

import torch

from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.data import Sample, plan_run
from selfguided.components.training.loop import prepare_model, train_loop, weights_dtype
from selfguided.components.training.base_models import build_tiny, canonical_name, random_init, training_attn_implementation

PEAK_FLOPS = {"cuda": 989e12}  # H100 SXM / H200, dense bf16
SIZES = ("1.3b", "3.8b", "5.8b")
LAYOUTS = ("padded", "packed", "packed-dense")

# Writing samples in Polyglot-ko tokens: (category, share, prompt median, response median). Lengths
# are lognormal around the medians (sigma 0.6), so every category has short and long samples.
LENGTH_MIX = (
    ("poem", 0.15, 40, 160),
    ("cover_letter", 0.15, 60, 550),
    ("blog", 0.20, 45, 650),
    ("novel", 0.20, 55, 900),
    ("scenario", 0.15, 55, 800),
    ("news", 0.15, 50, 500),
)


def synthetic_samples(count: int, vocab_size: int, max_seq_len: int, seed: int = 0) -> list[Sample]:
    """Token-id samples with the LENGTH_MIX lengths (cut at max_seq_len), loss on the response."""
    generator = torch.Generator().manual_seed(seed)
    shares = torch.tensor([share for _, share, _, _ in LENGTH_MIX])
    categories = torch.multinomial(shares, count, replacement=True, generator=generator).tolist()
    samples = []
    for category in categories:
        _, _, prompt_median, response_median = LENGTH_MIX[category]
        spread = torch.randn(2, generator=generator) * 0.6
        prompt = max(8, int(prompt_median * spread[0].exp()))
        response = max(8, int(response_median * spread[1].exp()))
        prompt, response = min(prompt, max_seq_len // 2), min(response, max_seq_len - min(prompt, max_seq_len // 2))
        ids = torch.randint(3, vocab_size, (prompt + response,), generator=generator).tolist()
        samples.append(Sample(ids, [-100] * prompt + ids[prompt:]))
    return samples


def measure(args) -> dict:
    """One (model, layout) run in this process: warm up, then time `args.steps` optimizer steps."""
    device = torch.device(args.device)
    packing = args.layout.startswith("packed")
    overrides = dict(method=args.method, packing=packing, save_every_steps=0,
                     gradient_checkpointing=args.gradient_checkpointing)
    if args.micro_batch_tokens:
        overrides["micro_batch_tokens"] = args.micro_batch_tokens
    config = FinetuneConfig.for_model(args.model, **overrides)
    attn = "sdpa" if args.layout == "packed-dense" else training_attn_implementation(device, packing)
    dtype = weights_dtype(config, device)
    if args.model == "tiny":
        model, _ = build_tiny()
        model = model.to(device=device, dtype=dtype)
        model.set_attn_implementation(attn)
    else:
        model = random_init(canonical_name(args.model), dtype=dtype, device=device, attn_implementation=attn)
    matmul_params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    samples = synthetic_samples(args.samples, model.config.vocab_size, config.max_seq_len, seed=args.seed)
    model = prepare_model(model, config)

    if args.warmup_steps:  # max_steps=0 would mean every epoch, not none
        train_loop(model, samples, replace(config, max_steps=args.warmup_steps), device=device, pad_token_id=0,
                   progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    measured = replace(config, max_steps=args.steps)
    _, state = train_loop(model, samples, measured, device=device, pad_token_id=0, progress=False)

    lengths = [len(s.input_ids) for s in samples]
    batch_tokens = 0  # tokens in the tensors the model ran on, padding included
    for step in plan_run(samples, measured, world_size=1):
        for mb in step.micro_batches:
            batch_tokens += sum(lengths[i] for i in mb) if packing else len(mb) * max(lengths[i] for i in mb)
    tokens_per_s = state.tokens / state.seconds
    flops_per_token = (6 if args.method == "full" else 4) * matmul_params
    peak = PEAK_FLOPS.get(device.type)
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        import resource

        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "model": args.model, "layout": args.layout, "method": args.method, "attn": attn,
        "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops_per_token / peak if peak else None,
        "peak_memory_gb": memory, "padding_share": 1 - state.tokens / batch_tokens,
        "micro_batch_tokens": config.micro_batch_tokens, "steps": state.step, "tokens": state.tokens,
        "threads": torch.get_num_threads(),
    }


def run_child(args, model: str, layout: str) -> dict:
    command = [sys.executable, __file__, "--child", "--models", model, "--layout", layout,
               "--device", args.device, "--method", args.method, "--steps", str(args.steps),
               "--warmup-steps", str(args.warmup_steps), "--samples", str(args.samples), "--seed", str(args.seed)]
    if args.micro_batch_tokens:
        command += ["--micro-batch-tokens", str(args.micro_batch_tokens)]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        reason = "OOM" if "OutOfMemoryError" in result.stderr else f"failed ({result.stderr.strip().splitlines()[-1]})"
        return {"model": model, "layout": layout, "method": args.method, "error": reason}
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (an error if any run failed)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SIZES), help="tiny, 1.3b, 3.8b, 5.8b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--samples", type=int, default=512, help="synthetic samples to draw batches from")
    parser.add_argument("--micro-batch-tokens", type=int, default=0, help="0: the model's default")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per layout, interleaved; the median is reported (use 3 on a shared machine)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=["padded", "packed"])
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.model = args.models[0]
        print(json.dumps(measure(args)))
        return

    print(f"device={args.device} method={args.method} steps={args.steps} (+{args.warmup_steps} warm-up) "
          f"repeats={args.repeats} "
          f"gpu={torch.cuda.get_device_name() if args.device == 'cuda' else 'none'}")
    header = f"{'model':<6} {'layout':<12} {'attention':<18} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'padding':>8}"
    print(header)
    print("-" * len(header))
    result = {"device": args.device, "method": args.method}
    for model in args.models:
        runs = {layout: [] for layout in args.layouts}
        for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits every layout
            for layout in args.layouts:
                runs[layout].append(run_child(args, model, layout))
        rows = {layout: median_run(found) for layout, found in runs.items()}
        for layout, row in rows.items():
            if "error" in row:
                print(f"{model:<6} {layout:<12} {row['error']}")
                continue
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
            print(f"{model:<6} {layout:<12} {row['attn']:<18} {row['tokens_per_s']:>10,.0f} {mfu:>7} "
                  f"{row['peak_memory_gb']:>9.2f} {row['padding_share']:>8.0%}")
            key = f"{model}_{layout.replace('-', '_')}"
            result[f"{key}_tokens_per_s"] = round(row["tokens_per_s"], 1)
            result[f"{key}_peak_gb"] = round(row["peak_memory_gb"], 2)
            if row["mfu"] is not None:
                result[f"{key}_mfu"] = round(row["mfu"], 4)
        if all(layout in rows and "error" not in rows[layout] for layout in ("padded", "packed")):
            speedup = rows["packed"]["tokens_per_s"] / rows["padded"]["tokens_per_s"]
            print(f"{model:<6} packed / padded: {speedup:.2f}x tokens/s")
            result[f"{model}_speedup"] = round(speedup, 2)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
