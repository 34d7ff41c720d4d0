"""Generation throughput: batched (length-sorted, left-padded, KV cache) against one prompt at a time.

Both modes run the code the generate step runs (`model/artifact.generate_tokens`), greedy, on a
randomly initialised model with an exact Polyglot-ko config (nothing downloaded) or on `tiny`.
Prompts are random token ids with eval-question lengths (lognormal around 60 tokens). Throughput
counts the new tokens actually produced (a row that meets EOS stops early in both modes).

  python benchmarks/generate_throughput.py                                  # GPU: polyglot-ko 1.3b
  python benchmarks/generate_throughput.py --model 5.8b --batch-size 128
  python benchmarks/generate_throughput.py --model tiny --device cpu        # about a minute on a CPU

Ends with one line: RESULT key=value ...
"""

import argparse
import time

import torch

from selfguided.components.model.artifact import generate_tokens
from selfguided.components.training.base_models import build_tiny, canonical_name, default_attn_implementation, random_init


def synthetic_prompts(count: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = (60 * (torch.randn(count, generator=generator) * 0.5).exp()).clamp(8, 400).long().tolist()
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def timed(model, prompts, device, **kwargs) -> tuple[float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = generate_tokens(model, prompts, progress=False, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, sum(len(o) for o in outputs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--model", default="1.3b" if cuda else "tiny", help="tiny, 1.3b, 3.8b, 5.8b")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--prompts", type=int, default=None, help="default: 128 on GPU, 24 on CPU")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 256 on GPU, 64 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on GPU, 16 on CPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per mode, interleaved; the median is reported (use 3 on a shared machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    prompts_count = args.prompts or (128 if on_gpu else 24)
    max_new_tokens = args.max_new_tokens or (256 if on_gpu else 64)
    batch_size = args.batch_size or (64 if on_gpu else 16)

    attn = default_attn_implementation(device)
    if args.model == "tiny":
        model, tokenizer = build_tiny()
        model = model.to(device)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    else:
        model = random_init(canonical_name(args.model), dtype=torch.bfloat16 if on_gpu else torch.float32,
                            device=device, attn_implementation=attn)
        eos, pad = model.config.eos_token_id, model.config.bos_token_id
    model.eval()
    prompts = synthetic_prompts(prompts_count, model.config.vocab_size, args.seed)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)

    timed(model, prompts[:2], device, batch_size=2, **{**kwargs, "max_new_tokens": 4})  # warm-up
    batched_runs, single_runs = [], []
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits both modes
        batched_runs.append(timed(model, prompts, device, batch_size=batch_size, **kwargs))
        single_runs.append(timed(model, prompts, device, batch_size=1, **kwargs))
    batched_s, batched_tokens = sorted(batched_runs)[len(batched_runs) // 2]
    single_s, single_tokens = sorted(single_runs)[len(single_runs) // 2]

    print(f"model={args.model} device={args.device} attention={attn} prompts={prompts_count} "
          f"max_new_tokens={max_new_tokens} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"gpu={torch.cuda.get_device_name() if on_gpu else 'none'}")
    print(f"{'mode':<22} {'seconds':>8} {'new tokens':>11} {'tokens/s':>10}")
    for mode, seconds, tokens in ((f"batched (batch {batch_size})", batched_s, batched_tokens),
                                  ("one at a time", single_s, single_tokens)):
        print(f"{mode:<22} {seconds:>8.2f} {tokens:>11} {tokens / seconds:>10,.0f}")
    speedup = (batched_tokens / batched_s) / (single_tokens / single_s)
    print(f"batched / one at a time: {speedup:.2f}x tokens/s")
    print(f"RESULT model={args.model} device={args.device} batch_size={batch_size} "
          f"batched_tokens_per_s={batched_tokens / batched_s:.1f} single_tokens_per_s={single_tokens / single_s:.1f} "
          f"speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
