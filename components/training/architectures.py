"""The GPT-NeoX shapes this package trains, as plain data (no torch): the three Polyglot-ko sizes
the paper fine-tunes, the `tiny` test model, the module names LoRA targets, and the short names
users type ("1.3b", "polyglot-ko-5.8b"). The memory plan and the CLI read these without
importing torch; base_models.py builds and loads the models from them.

Polyglot-ko (EleutherAI) is GPT-NeoX: parallel attention + MLP residual, partial rotary embeddings,
untied input/output embeddings, a 30,003-token Korean BPE vocabulary padded to 30,080 rows. The
parameter counts match the model cards (1,331,810,304 / 3,809,974,272 / 5,885,059,072).
"""

from __future__ import annotations

TINY = "tiny"

# The four nn.Linear layers of every GPT-NeoX block; LoRA targets all of them.
GPT_NEOX_LINEAR_MODULES: tuple[str, ...] = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

# Shared by every Polyglot-ko size (the hub config.json files of EleutherAI/polyglot-ko-*).
_POLYGLOT_KO_COMMON = dict(
    vocab_size=30080,  # 30,003 tokenizer entries, embedding rows padded to a multiple of 128
    max_position_embeddings=2048,
    hidden_act="gelu",
    rotary_emb_base=10000,
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=2,
)

# Per size: d_model, layers, heads, d_ff and the fraction of each head that gets rotary
# embeddings (64 dimensions everywhere: 64/128 for 1.3B, 3.8B and 12.8B, 64/256 for 5.8B).
POLYGLOT_KO_CONFIGS: dict[str, dict] = {
    "EleutherAI/polyglot-ko-1.3b": dict(
        _POLYGLOT_KO_COMMON, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=8192, rotary_pct=0.5,
    ),
    "EleutherAI/polyglot-ko-3.8b": dict(
        _POLYGLOT_KO_COMMON, hidden_size=3072, num_hidden_layers=32, num_attention_heads=24,
        intermediate_size=12288, rotary_pct=0.5,
    ),
    "EleutherAI/polyglot-ko-5.8b": dict(
        _POLYGLOT_KO_COMMON, hidden_size=4096, num_hidden_layers=28, num_attention_heads=16,
        intermediate_size=16384, rotary_pct=0.25,
    ),
    # Not one the paper fine-tunes; here for the memory plan of larger runs (docs/training.md). Its
    # shape is its model card's (40 layers, d_model 5120, d_ff 20480, 40 heads of 128, RoPE on 64
    # dimensions); it builds 12,893,603,840 parameters, 0.04% under the card's 12,898,631,680 (the
    # three smaller shapes build exactly their cards' counts, tests/test_base_models.py).
    "EleutherAI/polyglot-ko-12.8b": dict(
        _POLYGLOT_KO_COMMON, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
        intermediate_size=20480, rotary_pct=0.5,
    ),
}

# The tiny model: same architecture family, sized to train in seconds on two CPU cores.
TINY_CONFIG = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=512,
    rotary_pct=0.5,
    max_position_embeddings=2048,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    use_parallel_residual=True,
    tie_word_embeddings=False,
)
TINY_VOCAB_SIZE = 4096  # BPE target; the sample corpus may support fewer merges
TINY_SEED = 0
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def canonical_name(name: str) -> str:
    """Map short spellings ("1.3b", "polyglot-ko-5.8b") to the hub id; other names pass through."""
    key = name.strip()
    for hub_id in POLYGLOT_KO_CONFIGS:
        size = hub_id.rsplit("-", 1)[1]
        if key.lower() in (hub_id.lower(), hub_id.split("/")[1].lower(), size):
            return hub_id
    return key
