"""Base models: Polyglot-ko from the Hugging Face hub (or a local copy), and `tiny` for laptops and CI.

The shapes of the three Polyglot-ko sizes are data in architectures.py (`POLYGLOT_KO_CONFIGS`), so
benchmarks build randomly initialised models of the exact shapes without downloading anything.

`tiny` is a 4-layer GPT-NeoX with a byte-level BPE tokenizer trained (deterministically) on the
bundled sample data. It downloads nothing, trains in seconds on a CPU and goes through exactly the
same code paths as Polyglot-ko: LoRA on the same module names, packing, checkpoints, generation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
)

from selfguided.components.data.inputs import sample_path
from selfguided.components.data.jsonl import DataError
from selfguided.components.data.questions import load_questions
from selfguided.components.data.seed import load_seed
from selfguided.components.training.architectures import (  # noqa: F401  (re-exported: the names users know)
    EOS_TOKEN,
    GPT_NEOX_LINEAR_MODULES,
    PAD_TOKEN,
    POLYGLOT_KO_CONFIGS,
    TINY,
    TINY_CONFIG,
    TINY_SEED,
    TINY_VOCAB_SIZE,
    canonical_name,
)
from selfguided.components.model.prompting import format_prompt
from selfguided.components.model.artifact import generation_attn_implementation


def model_config(name: str, vocab_size: int | None = None) -> GPTNeoXConfig:
    """The GPTNeoXConfig of a Polyglot-ko size (hub id or short name) or of `tiny`."""
    name = canonical_name(name)
    if name == TINY:
        if vocab_size is None:
            raise ValueError("the tiny config needs the vocab size of its tokenizer")
        return GPTNeoXConfig(**TINY_CONFIG, vocab_size=vocab_size)
    if name not in POLYGLOT_KO_CONFIGS:
        raise ValueError(f"no built-in config for {name!r} (known: {TINY}, {', '.join(POLYGLOT_KO_CONFIGS)})")
    config = GPTNeoXConfig(**POLYGLOT_KO_CONFIGS[name])
    if vocab_size is not None:
        config.vocab_size = vocab_size
    return config


def random_init(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                vocab_size: int | None = None, seed: int = TINY_SEED,
                attn_implementation: str = "sdpa") -> GPTNeoXForCausalLM:
    """A randomly initialised model of a built-in config, created directly on `device` (benchmarks)."""
    config = model_config(name, vocab_size)
    device = torch.device(device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        with device:
            model = GPTNeoXForCausalLM(config)
    model = model.to(dtype)
    model.set_attn_implementation(attn_implementation)
    return model


def tiny_corpus() -> list[str]:
    """Texts the tiny tokenizer is trained on: the bundled seed data in training format, plus the
    bundled eval questions in inference format, so template and answers tokenize compactly."""
    seed_file, questions_file = sample_path("seed.jsonl"), sample_path("questions.jsonl")
    missing = [str(p) for p in (seed_file, questions_file) if not p.exists()]
    if missing:
        raise DataError(f"the tiny model is trained on the bundled sample data, missing: {', '.join(missing)}")
    texts = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in load_seed(seed_file).records]
    texts += [format_prompt(q["turns"][0]) for q in load_questions(questions_file)]
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-NeoX style: no unknown tokens) trained on `texts`.

    Deterministic for the same texts in the same order. `<|endoftext|>` is BOS and EOS (id 0),
    `<|pad|>` is padding (id 1); no token is added automatically, like Polyglot-ko's tokenizer.
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def build_tiny(texts: Iterable[str] | None = None) -> tuple[GPTNeoXForCausalLM, PreTrainedTokenizerFast]:
    """The tiny model and its tokenizer, trained on `texts` (default: the bundled sample data).

    The embedding matrix is rounded up to a multiple of 64 rows, as Polyglot-ko pads its vocab.
    """
    tokenizer = train_tokenizer(tiny_corpus() if texts is None else texts)
    vocab_size = -(-len(tokenizer) // 64) * 64
    model = random_init(TINY, vocab_size=vocab_size)
    model.config.bos_token_id = model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().is_dir()


# -- attention backends -------------------------------------------------------------------------
#
# A packed row holds several samples; position_ids restart at 0 at each one. transformers 5 offers
# GPT-NeoX these backends: flash_attention_2/3 (GPU, flash-attn installed) run the varlen kernel
# on the samples' boundaries, no work across samples; sdpa and eager get a block-diagonal causal
# mask built from the position_ids (only when no KV cache is passed), correct but dense: the full
# L x L score matrix of the row is computed and mostly thrown away; flex_attention gets a
# block-sparse mask but has no backward pass on CPU (torch 2.13). `sdpa_varlen` (registered
# below) is the varlen idea without FlashAttention: causal SDPA on each sample's slice of the row,
# so the cost is sum(len_i^2) instead of (sum len_i)^2. It is the training backend on CPUs and on
# GPUs without flash-attn.

SDPA_VARLEN = "sdpa_varlen"


def sdpa_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                          position_ids=None, cu_seq_lens_q=None, **kwargs):
    """Causal attention inside each packed sample of a [1, heads, L, head_dim] row.

    Sample boundaries come from `cu_seq_lens_q` (DataCollatorWithFlattening) or from the
    position_ids resets. Only for training on packed rows: no padding mask, no KV cache.
    """
    if attention_mask is not None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        raise ValueError(f"{SDPA_VARLEN} serves packed rows only (batch 1, no padding mask, no cache); "
                         "use sdpa for padded batches and generation")
    if cu_seq_lens_q is not None:
        bounds = cu_seq_lens_q.tolist()
    else:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist()
        bounds = starts + [query.shape[2]]
    outputs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True,
                                       scale=scaling, dropout_p=dropout if module.training else 0.0)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)


def default_attn_implementation(device: str | torch.device) -> str:
    """Attention for generation and padded batches (model/artifact.py owns the rule)."""
    return generation_attn_implementation(device)


def training_attn_implementation(device: str | torch.device, packing: bool) -> str:
    """Attention for training: FlashAttention-2 varlen on a GPU when installed; otherwise
    sdpa_varlen for packed rows and plain SDPA for the padded baseline."""
    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return SDPA_VARLEN if packing else "sdpa"


def load_base(name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              attn_implementation: str | None = None):
    """Load a base model and its tokenizer: `tiny`, a hub id (EleutherAI/polyglot-ko-1.3b, ...) or a
    local directory written by save_pretrained. Returns (model, tokenizer) with a pad token set.

    Hub ids are fetched through the Hugging Face cache (HF_HOME / HF_ENDPOINT apply); point HF_HOME
    at a volume on a cluster so retries and the generate step do not download again.
    """
    attn_implementation = attn_implementation or default_attn_implementation(device)
    if name_or_path == TINY:
        model, tokenizer = build_tiny()
        model.set_attn_implementation(attn_implementation)
    else:
        name = name_or_path if is_local(name_or_path) else canonical_name(name_or_path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation)
        except OSError as exc:
            raise OSError(
                f"cannot load base model {name_or_path!r}: not a local directory with config.json, and the "
                f"hub did not serve it ({exc}). Use `tiny`, a hub id such as EleutherAI/polyglot-ko-1.3b, "
                "or a path written by save_pretrained."
            ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device=device, dtype=dtype), tokenizer
