"""Generation: batched == one at a time, order restored, EOS, FastChat shape, merged export."""

import json
import os
import subprocess
import sys

import pytest
import torch
from kfp.dsl import Dataset, Model
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.job import train
from selfguided.components.model import engines
from selfguided.components.steps import generate as gen
from selfguided.components.model import artifact as tm
from selfguided.components.data.inputs import sample_path
from selfguided.components.data.jsonl import read_jsonl, write_jsonl
from selfguided.components.data.questions import load_questions
from selfguided.components.model.prompting import inference_prompt


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny LoRA model after one step: the adapter is non-zero (merging matters), and the model is
    still close to its random init, so greedy answers differ from prompt to prompt (a model trained
    longer on 40 records collapses to repeating one token, which would make these tests blind)."""
    from selfguided.components.data.seed import load_seed
    from selfguided.components.model.prompting import format_prompt

    root = tmp_path_factory.mktemp("model")
    rows = [
        {"id": r["id"], "category": r["category"], "prompt": format_prompt(r["instruction"], r["input"]),
         "response": r["output"]}
        for r in load_seed(sample_path("seed.jsonl")).records[:40]
    ]
    write_jsonl(root / "self_guided.jsonl", rows)
    train(root / "self_guided.jsonl", "tiny", root / "out", FinetuneConfig.for_model("tiny", max_steps=1))
    return root / "out"


@pytest.fixture(scope="module")
def questions():
    return load_questions(sample_path("questions.jsonl"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    return tm.load_trained(model_dir)


def encode(tokenizer, prompts):
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


def test_batched_generation_equals_one_at_a_time_in_the_original_order(loaded, questions):
    model, tokenizer = loaded
    prompts = [inference_prompt(q["turns"][0], "self_guided", "condition") for q in questions[:10]]
    prompt_ids = encode(tokenizer, prompts)
    lengths = [len(p) for p in prompt_ids]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)  # order must be restored
    kwargs = dict(max_new_tokens=24, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  progress=False)
    batched = tm.generate_tokens(model, prompt_ids, batch_size=4, **kwargs)
    alone = [tm.generate_tokens(model, [p], batch_size=1, **kwargs)[0] for p in prompt_ids]
    assert batched == alone
    assert all(0 < len(tokens) <= 24 for tokens in batched)
    assert len({tuple(tokens) for tokens in batched}) > 5  # answers really differ per prompt


def test_generation_stops_at_eos_and_drops_it(loaded, questions):
    model, tokenizer = loaded
    prompt_ids = encode(tokenizer, [inference_prompt(q["turns"][0], "unscored", "filter") for q in questions[:6]])
    kwargs = dict(max_new_tokens=16, batch_size=6, pad_token_id=tokenizer.pad_token_id, progress=False)
    free = tm.generate_tokens(model, prompt_ids, eos_token_id=tokenizer.eos_token_id, **kwargs)
    # Declare a token that some answer produces (not first) to be EOS: that answer must stop right
    # before it, and every other answer before its own first occurrence of that token.
    row, k = next((i, k) for i, tokens in enumerate(free) for k in range(2, len(tokens)) if tokens[k] not in tokens[:k])
    stop = free[row][k]
    stopped = tm.generate_tokens(model, prompt_ids, eos_token_id=stop, **kwargs)
    assert stopped[row] == free[row][:k]
    for tokens, unconstrained in zip(stopped, free):
        expected = unconstrained[: unconstrained.index(stop)] if stop in unconstrained else unconstrained
        assert tokens == expected and stop not in tokens


def test_answers_are_fastchat_model_answer_rows_in_question_order(model_dir, questions):
    manifest, rows = engines.answer_with_trained_model(model_dir, questions[:8], max_new_tokens=12)
    _, again = engines.answer_with_trained_model(model_dir, questions[:8], max_new_tokens=12)
    assert (manifest.arm, manifest.strategy) == ("self_guided", "condition")
    assert [r["question_id"] for r in rows] == [q["question_id"] for q in questions[:8]]
    for row, question, same in zip(rows, questions, again):
        assert set(row) == {"question_id", "answer_id", "model_id", "choices", "tstamp", "category"}
        assert row["model_id"] == "tiny/self_guided" and row["category"] == question["category"]
        assert len(row["choices"]) == 1 and row["choices"][0]["index"] == 0
        (answer,) = row["choices"][0]["turns"]
        assert isinstance(answer, str) and "<|endoftext|>" not in answer and "<|pad|>" not in answer
        assert row["answer_id"] == same["answer_id"] and len(row["answer_id"]) == 22  # stable
        assert isinstance(row["tstamp"], float)
    assert len({r["answer_id"] for r in rows}) == len(rows)


def test_every_turn_is_answered_with_the_conversation_so_far(model_dir):
    """Turn 2 is asked with turn 1 and the model's own first answer in the prompt."""
    questions = [{"question_id": "a", "category": "poem", "turns": ["봄에 대한 시를 써 주세요.", "ㄱ으로 시작하게 고쳐 주세요."]},
                 {"question_id": "b", "category": "news", "turns": ["축제 기사를 써 주세요."]}]
    asked: list[list[str]] = []

    def engine(prompts):
        asked.append(prompts)
        return [f"답{len(asked)}-{i}" for i in range(len(prompts))]

    manifest = tm.read_manifest(model_dir)
    _, rows = engines.answer_with_trained_model(model_dir, questions, engine=engine)
    assert [len(p) for p in asked] == [2, 1]  # all first turns in one batch, then the second turns
    assert asked[1][0] == manifest.prompt(questions[0]["turns"], ["답1-0"])
    assert asked[1][0].startswith(asked[0][0] + "답1-0")
    assert [r["choices"][0]["turns"] for r in rows] == [["답1-0", "답2-0"], ["답1-1"]]


def test_merged_export_loads_with_plain_transformers_and_matches_the_adapter(tmp_path, model_dir):
    out = tm.export_merged(model_dir, tmp_path / "merged", dtype=torch.float32, device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    unmerged, _ = tm.load_trained(model_dir, merge=False)
    base = AutoModelForCausalLM.from_pretrained(model_dir / "base")
    ids = torch.tensor([tokenizer("### 지시:\n시를 써 주세요\n\n### 응답:\n", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected, got, untrained = unmerged(ids).logits, merged(ids).logits, base(ids).logits
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, untrained, atol=1e-5)  # the adapter really is in the weights


def test_kfp_component_writes_answers_and_metadata(tmp_path, model_dir):
    questions_file = tmp_path / "questions.jsonl"
    write_jsonl(questions_file, read_jsonl(sample_path("questions.jsonl"))[:5])
    answers = Dataset(name="answers", uri=str(tmp_path / "answers.jsonl"), metadata={})
    seconds = gen.generate.python_func(
        model=Model(name="model", uri=str(model_dir), metadata={}),
        questions=Dataset(name="questions", uri=str(questions_file), metadata={}),
        max_new_tokens=8, answers=answers,
    )
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4, 5]
    assert {k: answers.metadata[k] for k in ("base_model", "arm", "strategy", "answers")} == \
        {"base_model": "tiny", "arm": "self_guided", "strategy": "condition", "answers": 5}
    assert seconds == answers.metadata["generate_seconds"] > 0


def test_backend_choice():
    assert engines.pick_backend("auto", "cpu") == "transformers"
    with pytest.raises(engines.EngineError, match="unknown generation backend 'tgi'"):
        engines.pick_backend("tgi", "cpu")
    with pytest.raises(engines.EngineError, match="needs vLLM installed and a CUDA GPU"):
        engines.pick_backend("vllm", "cpu")
    assert tm.generate_texts(None, None, []) == []


def test_module_imports_inside_a_kfp_step():
    """A running step has _KFP_RUNTIME=true, where kfp.dsl leaves out `dsl.component`."""
    env = {**os.environ, "_KFP_RUNTIME": "true"}
    result = subprocess.run([sys.executable, "-c", "import selfguided.components.steps.generate"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
