"""Answers of a fine-tuned model to the eval questions, in FastChat's model_answer shape.

Two engines, same results for greedy decoding:

- transformers (always available): prompts sorted by length, batched with left padding (so every
  row's next token sits in the last column), KV cache on, each row stopped at its own EOS. Only
  the new tokens are decoded, and answers go back in the questions' order.
- vLLM (used when installed and a GPU is present): vLLM cannot serve LoRA adapters on GPT-NeoX,
  so the adapter is merged into the base first (`export_merged`) and vLLM serves a plain model.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import hashlib
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from kfp.dsl import Dataset, Input, Model, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from tqdm.auto import tqdm
from transformers import GenerationConfig

from selfguided.components.data import load_questions, write_jsonl
from selfguided.components.finetune import export_merged, load_trained, read_meta
from selfguided.components.prompting import inference_prompt
from selfguided.components.images import GPU_IMAGE

BACKENDS = ("auto", "transformers", "vllm")


def pick_backend(backend: str, device: str) -> str:
    """'auto': vLLM when it is installed and we are on a GPU, else transformers."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "auto":
        vllm_usable = torch.device(device).type == "cuda" and importlib.util.find_spec("vllm") is not None
        return "vllm" if vllm_usable else "transformers"
    return backend


@torch.inference_mode()
def generate_tokens(
    model,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 0.0,
    progress: bool = True,
) -> list[list[int]]:
    """New token ids for each prompt (EOS and what follows removed), in the prompts' order.

    Longest prompts go first, so every batch holds prompts of similar length (little padding) and
    an out-of-memory error shows up in the first batch rather than the last.
    """
    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    for start in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        width = max(len(prompt_ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):  # left padding
            n = len(prompt_ids[i])
            input_ids[row, width - n :] = torch.tensor(prompt_ids[i])
            attention_mask[row, width - n :] = 1
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
        for row, i in enumerate(rows):
            new = output[row, width:].tolist()
            results[i] = new[: new.index(eos_token_id)] if eos_token_id in new else new
    return results


def _generate_transformers(model_dir, prompts, max_new_tokens, batch_size, temperature, device) -> list[str]:
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model, tokenizer = load_trained(model_dir, device=device, dtype=dtype, merge=True)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    new_ids = generate_tokens(
        model, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]


def _generate_vllm(model_dir, prompts, max_new_tokens, temperature) -> list[str]:
    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory(prefix="merged-") as merged:
        export_merged(model_dir, merged, dtype=torch.bfloat16, device="cuda")
        torch.cuda.empty_cache()
        llm = LLM(model=merged, dtype="bfloat16", seed=0)  # loads the weights now; the folder may go
        tokenizer = llm.get_tokenizer()
        # Same tokenization as training and the transformers path: no special tokens added.
        requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens)
        outputs = llm.generate(requests, params)
    return [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip() for o in outputs]


def generate_answers(
    model_dir: str | Path,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int | None = None,
    temperature: float = 0.0,
    device: str | None = None,
    backend: str = "auto",
) -> list[str]:
    """Answers of the fine-tuned model in `model_dir` to `prompts`, in order.

    temperature 0 is greedy decoding. batch_size defaults to 64 on a GPU and 16 on a CPU.
    backend: 'auto' (vLLM when installed on a GPU), 'transformers' or 'vllm'.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = batch_size or (64 if torch.device(device).type == "cuda" else 16)
    if not prompts:
        return []
    if pick_backend(backend, device) == "vllm":
        return _generate_vllm(model_dir, prompts, max_new_tokens, temperature)
    return _generate_transformers(model_dir, prompts, max_new_tokens, batch_size, temperature, device)


def answer_id(model_id: str, question_id: Any, answer: str) -> str:
    """Stable id of an answer: the same model, question and text always give the same id."""
    return hashlib.sha256(f"{model_id}\n{question_id}\n{answer}".encode()).hexdigest()[:22]


def answer_questions(
    model_dir: str | Path,
    questions: list[dict[str, Any]],
    arm: str | None = None,
    strategy: str = "condition",
    max_new_tokens: int = 256,
    batch_size: int | None = None,
    temperature: float = 0.0,
    device: str | None = None,
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """FastChat model_answer rows for FastChat questions (the first turn is answered).

    arm picks the prompt format (default: the arm the model was trained on, from selfguided.json);
    model_id is "<base_model>:<trained arm>".
    """
    meta = read_meta(model_dir)
    arm = arm or meta["arm"]
    model_id = f"{meta['base_model']}:{meta['arm']}"
    prompts = [inference_prompt(q["turns"][0], arm, strategy) for q in questions]
    answers = generate_answers(model_dir, prompts, max_new_tokens, batch_size, temperature, device, backend)
    return [
        {
            "question_id": q["question_id"],
            "answer_id": answer_id(model_id, q["question_id"], answer),
            "model_id": model_id,
            "choices": [{"index": 0, "turns": [answer]}],
            "tstamp": time.time(),
            "category": q["category"],
        }
        for q, answer in zip(questions, answers)
    ]


def generate_step(model_dir: str | Path, questions_file: str | Path, strategy: str, max_new_tokens: int,
                  answers_file: str | Path) -> dict[str, Any]:
    """What the KFP component does; returns the model's selfguided.json."""
    meta = read_meta(model_dir)
    rows = answer_questions(model_dir, load_questions(questions_file), meta["arm"], strategy, max_new_tokens)
    write_jsonl(answers_file, rows)
    return meta


@component(base_image=GPU_IMAGE, install_kfp_package=False)  # the image has kfp
def generate(
    model: Input[Model],
    questions: Input[Dataset],
    strategy: str,
    max_new_tokens: int,
    answers: Output[Dataset],
):
    """Answer the eval questions with a fine-tuned model (greedy decoding).

    Args:
        model: a finetune output (selfguided.json names base model and arm).
        questions: FastChat question.jsonl file (question_id, category, turns).
        strategy: 'condition' (self_guided prompts ask for top scores) or 'filter' (plain prompts).
        max_new_tokens: longest answer in tokens.
        answers: FastChat model_answer JSONL file, one row per question, in question order.
    """
    from selfguided.components.generate import generate_step

    meta = generate_step(model.path, questions.path, strategy, max_new_tokens, answers.path)
    answers.metadata["base_model"] = meta["base_model"]
    answers.metadata["arm"] = meta["arm"]
