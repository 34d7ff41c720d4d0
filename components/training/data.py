"""Training data: JSONL rows -> token ids with response-only labels -> a deterministic plan of
optimizer steps -> packed (or padded) micro-batches.

- `tokenize_records`: prompt and response tokenized apart, EOS appended, loss on the response only.
- `plan_epoch` / `plan_run`: samples packed without padding into micro-batches of at most
  `micro_batch_tokens` tokens, in a seeded order per epoch, so every rank and every rerun sees the
  same plan (what makes resuming exact without storing a data loader).
- `collate_packed`: one row per micro-batch, position_ids restarting at every sample, so a varlen
  attention backend (FlashAttention-2 on a GPU, `sdpa_varlen` elsewhere, see base_models.py)
  keeps samples apart. `collate_padded` is the benchmark baseline (`packing=False`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfguided.components.data.jsonl import DataError, iter_jsonl
from selfguided.components.training.config import FinetuneConfig

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt tokens, sample boundaries)


@dataclass
class Sample:
    """One tokenized record: `labels` is -100 on prompt tokens, the token id on response tokens."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_targets(self) -> int:
        """Tokens that carry loss: each response token is predicted from the token before it."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def read_train_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows `{"id", "category", "prompt", "response"}`; errors name the file, line and field."""
    rows = []
    for number, _, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object with prompt and response")
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f"{path}:{number}: field {key!r} must be a non-empty string")
        rows.append(obj)
    return rows


def tokenize_records(records: list[dict[str, Any]], tokenizer, max_seq_len: int) -> tuple[list[Sample], dict[str, int]]:
    """Tokenize prompt and response separately (as at inference, where the model continues the
    prompt), append EOS to the response, and mask the prompt out of the loss.

    A sample longer than max_seq_len keeps its prompt and loses the end of its response; a prompt
    that leaves fewer than 16 response tokens is skipped. Both are counted, never silent.
    """
    samples, counts = [], {"truncated_samples": 0, "skipped_samples": 0}
    prompts = tokenizer([r["prompt"] for r in records], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r["response"] for r in records], add_special_tokens=False)["input_ids"]
    for prompt, response in zip(prompts, responses):
        response = response + [tokenizer.eos_token_id]
        if len(prompt) + 16 > max_seq_len:
            counts["skipped_samples"] += 1
            continue
        if len(prompt) + len(response) > max_seq_len:
            response = response[: max_seq_len - len(prompt)]
            counts["truncated_samples"] += 1
        samples.append(Sample(prompt + response, [IGNORE_INDEX] * len(prompt) + response))
    if not samples:
        raise DataError(f"no trainable samples: all {len(records)} prompts are longer than max_seq_len={max_seq_len}")
    return samples, counts


# ----------------------------------------------------------------------------------------------
# 3. Batching: a deterministic plan of optimizer steps, packed or padded micro-batches
# ----------------------------------------------------------------------------------------------


def plan_epoch(lengths: list[int], config: FinetuneConfig, epoch: int, world_size: int) -> list[list[list[int]]]:
    """The optimizer steps of one epoch: each step is a list of micro-batches (lists of sample
    indices), `grad_accum_steps * world_size` of them (the last step may have fewer). Rank r
    trains micro-batches r, r + world_size, ... of every step.

    The order is a seeded permutation per epoch, so the plan is the same in every process and in
    every rerun: this is what makes resuming exact without storing a data loader.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    micro_batches: list[list[int]] = []
    if config.packing:
        current, used = [], 0
        for index in order:  # greedy, in random order: a micro-batch ends when the next sample does not fit
            if current and used + lengths[index] > config.micro_batch_tokens:
                micro_batches.append(current)
                current, used = [], 0
            current.append(index)
            used += lengths[index]
        micro_batches.append(current)
    else:
        rows = max(1, config.micro_batch_tokens // config.max_seq_len)
        micro_batches = [order[i : i + rows] for i in range(0, len(order), rows)]
    per_step = config.grad_accum_steps * world_size
    return [micro_batches[i : i + per_step] for i in range(0, len(micro_batches), per_step)]


@dataclass
class Step:
    """One optimizer step of the plan."""

    epoch: int
    micro_batches: list[list[int]]
    num_targets: int  # loss-carrying tokens over all micro-batches and ranks: the loss denominator
    num_tokens: int  # real (non-pad) tokens over all micro-batches and ranks
    epoch_fraction: float  # 1 / (steps in this epoch), to report fractional epochs


def plan_run(samples: list[Sample], config: FinetuneConfig, world_size: int) -> list[Step]:
    """All optimizer steps of the run: num_epochs epochs, or exactly max_steps steps when set."""
    lengths = [len(s.input_ids) for s in samples]
    steps: list[Step] = []
    epoch = 0
    while (config.max_steps and len(steps) < config.max_steps) or (not config.max_steps and epoch < config.num_epochs):
        epoch_steps = plan_epoch(lengths, config, epoch, world_size)
        for micro_batches in epoch_steps:
            members = [i for mb in micro_batches for i in mb]
            steps.append(Step(
                epoch=epoch,
                micro_batches=micro_batches,
                num_targets=sum(samples[i].num_targets for i in members),
                num_tokens=sum(lengths[i] for i in members),
                epoch_fraction=1.0 / len(epoch_steps),
            ))
        epoch += 1
    return steps[: config.max_steps] if config.max_steps else steps


def shift_targets(labels: torch.Tensor) -> torch.Tensor:
    """Next-token targets: position t is trained to predict labels[t + 1]."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


def collate_packed(samples: list[Sample], varlen_kwargs: bool = False) -> dict[str, Any]:
    """One row [1, total_tokens] with position_ids restarting at 0 for every sample.

    DataCollatorWithFlattening puts -100 on the first label of every sample, so after the shift
    the last token of a sample is never trained to predict the first token of the next one. With
    `varlen_kwargs` it also returns the sample boundaries (cu_seq_lens) for varlen attention.
    """
    from transformers import DataCollatorWithFlattening

    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=varlen_kwargs)
    batch = collator([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    batch["targets"] = shift_targets(batch.pop("labels"))
    return batch


def collate_padded(samples: list[Sample], pad_token_id: int) -> dict[str, Any]:
    """The baseline layout: rows right-padded to the longest, with an attention mask."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": shift_targets(labels)}

