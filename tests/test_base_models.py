"""Base models: the Polyglot-ko configs as data, the `tiny` model, and the varlen SDPA backend."""

import pytest
import torch

from selfguided.components.training import base_models as modeling
from selfguided.components.data.jsonl import DataError


@pytest.mark.parametrize(
    "name, parameters",
    [  # n_parameters from the EleutherAI model cards
        ("EleutherAI/polyglot-ko-1.3b", 1_331_810_304),
        ("EleutherAI/polyglot-ko-3.8b", 3_809_974_272),
        ("EleutherAI/polyglot-ko-5.8b", 5_885_059_072),
    ],
)
def test_polyglot_configs_have_the_model_card_parameter_counts(name, parameters):
    model = modeling.random_init(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == parameters
    config = model.config
    assert config.vocab_size == 30080 and config.max_position_embeddings == 2048
    assert config.use_parallel_residual and not config.tie_word_embeddings
    head_dim = config.hidden_size // config.num_attention_heads
    assert head_dim * config.rope_parameters["partial_rotary_factor"] == 64  # RoPE on 64 dims of every head


def test_short_names_map_to_hub_ids():
    assert modeling.canonical_name("1.3b") == "EleutherAI/polyglot-ko-1.3b"
    assert modeling.canonical_name("polyglot-ko-5.8b") == "EleutherAI/polyglot-ko-5.8b"
    assert modeling.canonical_name("someone/other-model") == "someone/other-model"
    with pytest.raises(ValueError, match="no built-in config"):
        modeling.model_config("someone/other-model")


@pytest.fixture(scope="module")
def tiny():
    return modeling.build_tiny()


def test_tiny_is_deterministic(tiny):
    model, tokenizer = tiny
    model2, tokenizer2 = modeling.build_tiny()
    assert tokenizer.get_vocab() == tokenizer2.get_vocab()
    for (name, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), name


def test_tiny_tokenizer_round_trips_korean_and_has_special_tokens(tiny):
    model, tokenizer = tiny
    text = "### 지시:\n봄날의 공원에 대한 블로그 글을 써 주세요.\n\n### 응답:\n햇살이 따뜻했다. 😀"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: nothing is unknown, not even emoji
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tokenizer)
    # trained on the sample data: the prompt template is a handful of tokens, not bytes
    assert len(tokenizer("### 응답:\n", add_special_tokens=False)["input_ids"]) <= 4


def test_tiny_needs_the_bundled_sample_data(monkeypatch, tmp_path):
    monkeypatch.setattr(modeling, "sample_path", lambda name: tmp_path / name)
    with pytest.raises(DataError, match="seed.jsonl"):
        modeling.tiny_corpus()


def test_load_base_tiny_honours_dtype_device_and_attention():
    model, tokenizer = modeling.load_base("tiny", dtype=torch.bfloat16, device="cpu", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert tokenizer.pad_token is not None


def test_sdpa_varlen_keeps_packed_samples_apart(tiny):
    model, _ = tiny
    torch.manual_seed(0)
    lengths = [5, 17, 9, 30]
    samples = [torch.randint(2, model.config.vocab_size, (n,)) for n in lengths]
    packed = torch.cat(samples)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        alone = [model(s[None]).logits[0] for s in samples]
        model.set_attn_implementation(modeling.SDPA_VARLEN)
        together = model(packed, position_ids=position_ids, use_cache=False).logits[0]
        model.set_attn_implementation("sdpa")
    for a, b in zip(alone, torch.split(together, lengths)):
        assert torch.allclose(a, b, atol=1e-5)


def test_sdpa_varlen_refuses_padded_batches(tiny):
    model, _ = tiny
    model.set_attn_implementation(modeling.SDPA_VARLEN)
    try:
        with pytest.raises(ValueError, match="packed rows only"), torch.no_grad():
            model(torch.ones((2, 4), dtype=torch.long), use_cache=False)
    finally:
        model.set_attn_implementation("sdpa")


def test_attention_choice_on_cpu():
    assert modeling.default_attn_implementation("cpu") == "sdpa"
    assert modeling.training_attn_implementation("cpu", packing=True) == modeling.SDPA_VARLEN
    assert modeling.training_attn_implementation("cpu", packing=False) == "sdpa"
