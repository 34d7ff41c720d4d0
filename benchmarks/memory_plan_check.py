"""How close is the memory plan to what training really allocates? Measured on the CPU.

Trains a randomly initialised model with the real loop (`training.loop.train_loop`, fp32, packed
micro-batches of exactly `--tokens` tokens, every token a target): one warm-up step (which also
creates the AdamW state), then `--steps` measured steps. Compared: what the measured steps add on
top of the loaded model and its optimizer state, against the plan's gradients + activations +
logits (weights and optimizer state are resident before, and a CPU has no CUDA reserve).
Measured: the process's peak resident set (VmHWM, reset through /proc/self/clear_refs after the
warm-up) minus its resident set then (VmRSS). The script re-runs itself with glibc's mmap threshold
fixed at 64 KiB, so every tensor buffer is mapped on allocation and unmapped on free: the resident
set then follows the live tensors instead of the allocator's cache.

  python benchmarks/memory_plan_check.py --model tiny --method full --tokens 2048
  python benchmarks/memory_plan_check.py --model mid --method full --tokens 1024   # ~56M parameters

Ends with one line: RESULT model=... measured_mb=... planned_mb=... ratio=...
"""

import os
import sys

MMAP_THRESHOLD = 65536
if __name__ == "__main__" and os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):
    # Before torch loads: glibc reads these at start-up (see the module docstring).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": "0"}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import argparse
import gc
from pathlib import Path

import torch

from selfguided.components.training.base_models import random_init
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.data import Sample
from selfguided.components.training.loop import prepare_model, train_loop
from selfguided.components.training.memory_plan import GB, Setup, Shape, estimate, model_shape

# A mid-size GPT-NeoX between `tiny` and Polyglot-ko 1.3B: the Polyglot vocabulary, 8 blocks of 512.
MID = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048, vocab_size=30080)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build(name: str):
    if name == "tiny":
        model = random_init("tiny", vocab_size=4096, attn_implementation="sdpa_varlen")
        return model, model_shape("tiny", vocab_size=4096)
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**MID, rotary_pct=0.5, tie_word_embeddings=False))
    model.set_attn_implementation("sdpa_varlen")
    return model, Shape("mid", MID["hidden_size"], MID["num_hidden_layers"], MID["intermediate_size"], MID["vocab_size"])


def measure(name: str, method: str, tokens: int, steps: int, sample_len: int = 256) -> dict:
    model, shape = build(name)
    config = FinetuneConfig(method=method, max_seq_len=sample_len, micro_batch_tokens=tokens, grad_accum_steps=1,
                            max_steps=steps + 1, save_every_steps=0, learning_rate=1e-4, lora_r=8, lora_alpha=16,
                            lora_dropout=0.0, warmup_ratio=0.0, precision="fp32")
    model = prepare_model(model, config)
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range((steps + 1) * tokens // sample_len):  # every micro-batch exactly `tokens` tokens, all targets
        ids = torch.randint(3, shape.vocab, (sample_len,), generator=generator).tolist()
        samples.append(Sample(ids, ids))
    baseline = {}
    real_step = torch.optim.AdamW.step

    def step_then_reset(optimizer, *args, **kwargs):  # after the warm-up step: the baseline and a fresh peak
        result = real_step(optimizer, *args, **kwargs)
        if not baseline:
            optimizer.zero_grad(set_to_none=True)  # the loop does this next; the baseline holds no gradients
            gc.collect()
            baseline["rss"] = rss_kib("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        return result

    torch.optim.AdamW.step = step_then_reset
    try:
        train_loop(model, samples, config, device=torch.device("cpu"), pad_token_id=1, progress=False)
    finally:
        torch.optim.AdamW.step = real_step
    measured = (rss_kib("VmHWM") - baseline["rss"]) * 1024
    plan = estimate(shape, Setup(method=method, micro_batch_tokens=tokens, compute_bytes=4, lora_r=8))
    planned = plan.gradients + plan.activations + plan.logits
    return {"model": name, "method": method, "tokens": tokens, "measured_mb": round(measured / 1e6, 1),
            "planned_mb": round(planned / 1e6, 1), "ratio": round(planned / measured, 3),
            "planned_total_gb": round(plan.total / GB, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "mid"), default="tiny")
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = measure(args.model, args.method, args.tokens, args.steps)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
