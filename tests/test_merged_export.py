"""The champion's merged weights, as the register step writes them for serving: bf16, in
safetensors shards of a bounded size (one proxied upload through the MLflow server stages one
shard on its /tmp), loadable by plain transformers."""

from __future__ import annotations

import json

import torch
from registry_fixtures import make_model_dir
from transformers import AutoModelForCausalLM

from selfguided.components.model import artifact


def test_merged_weights_are_bf16_shards_of_bounded_size(tmp_path):
    model_dir = make_model_dir(tmp_path / "m", arm="self_guided")
    limit = 20_000  # bytes: far below the tiny model's size, so it must be split
    out = artifact.export_merged(model_dir, tmp_path / "merged", device="cpu", max_shard_size=limit)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1, [p.name for p in out.iterdir()]
    # A shard may exceed the limit only by one tensor larger than the limit itself (transformers' rule).
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    biggest_tensor = max(p.numel() * p.element_size() for p in loaded.parameters())
    assert all(p.stat().st_size <= max(limit, biggest_tensor) + 64 * 1024 for p in shards)
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()


def test_default_shard_size_keeps_every_upload_small():
    # 2 GB: a 5.8B model in bf16 (about 11.6 GB) goes up as 6 files, each far below the server's 16Gi /tmp.
    assert artifact.MERGED_MAX_SHARD_SIZE == "2GB"
