"""Answers of a model to the eval questions, in FastChat's model_answer shape, every turn.

A question with several turns (MT-bench, KoMT-Bench) is answered turn by turn: turn k is asked
with the earlier turns and the model's own earlier answers in the prompt, as FastChat does. All
questions' turn k go through the engine as one batch, then turn k + 1.

The prompt follows the model's manifest (arm and strategy, see trained_model.py), so a model is
asked exactly as it was trained. Two engines, same results for greedy decoding:

- transformers (always available): trained_model.generate_texts, batched with left padding.
- vLLM (used when installed and a GPU is present): vLLM cannot serve LoRA adapters on GPT-NeoX,
  so the adapter is merged into the base first (`export_merged`) and vLLM serves a plain model.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import hashlib
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from kfp.dsl import Dataset, Input, Model, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.data import load_questions, write_jsonl
from selfguided.components.images import GPU_IMAGE
from selfguided.components.model.artifact import (
    ModelManifest,
    converse,
    export_merged,
    generate_texts,
    load_trained,
    read_manifest,
)

BACKENDS = ("auto", "transformers", "vllm")


def pick_backend(backend: str, device: str) -> str:
    """'auto': vLLM when it is installed and we are on a GPU, else transformers."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "auto":
        vllm_usable = torch.device(device).type == "cuda" and importlib.util.find_spec("vllm") is not None
        return "vllm" if vllm_usable else "transformers"
    return backend


class Engine(Protocol):
    def __call__(self, prompts: list[str]) -> list[str]: ...


def transformers_engine(model, tokenizer, *, max_new_tokens: int, batch_size: int, temperature: float = 0.0) -> Engine:
    def run(prompts: list[str]) -> list[str]:
        return generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              temperature=temperature)
    return run


def vllm_engine(model_dir: str | Path, *, max_new_tokens: int, temperature: float = 0.0) -> Engine:
    import torch
    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory(prefix="merged-") as merged:
        export_merged(model_dir, merged, dtype=torch.bfloat16, device="cuda")
        torch.cuda.empty_cache()
        llm = LLM(model=merged, dtype="bfloat16", seed=0)  # loads the weights now; the folder may go
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens)

    def run(prompts: list[str]) -> list[str]:
        # Same tokenization as training and the transformers path: no special tokens added.
        requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = llm.generate(requests, params)
        return [tokenizer.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip() for o in outputs]
    return run


def open_engine(model_dir: str | Path, *, max_new_tokens: int = 256, batch_size: int | None = None,
                temperature: float = 0.0, device: str | None = None, backend: str = "auto") -> Engine:
    """An engine on a trained model directory. batch_size: 64 on a GPU, 16 on a CPU by default."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if pick_backend(backend, device) == "vllm":
        return vllm_engine(model_dir, max_new_tokens=max_new_tokens, temperature=temperature)
    batch_size = batch_size or (64 if torch.device(device).type == "cuda" else 16)
    model, tokenizer = load_trained(model_dir, device=device)
    return transformers_engine(model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               temperature=temperature)


def answer_id(model_id: str, question_id: Any, answers: list[str]) -> str:
    """Stable id of an answer: the same model, question and texts always give the same id."""
    return hashlib.sha256(json.dumps([model_id, str(question_id), answers]).encode()).hexdigest()[:22]


def answer_conversations(
    questions: list[dict[str, Any]],
    engine: Engine,
    prompt: Callable[[list[str], list[str]], str],
    *,
    model_id: str,
) -> list[dict[str, Any]]:
    """FastChat model_answer rows: every turn of every question answered, in question order.

    `prompt(turns, earlier_answers)` formats the conversation so far; `model_id` is the row's
    readable name (a label, never parsed).
    """
    answers = converse([q["turns"] for q in questions], engine, prompt)
    return [
        {
            "question_id": q["question_id"],
            "answer_id": answer_id(model_id, q["question_id"], texts),
            "model_id": model_id,
            "choices": [{"index": 0, "turns": texts}],
            "tstamp": time.time(),
            "category": q["category"],
        }
        for q, texts in zip(questions, answers)
    ]


def answer_with_trained_model(model_dir: str | Path, questions: list[dict[str, Any]], *, engine: Engine | None = None,
                              **engine_options: Any) -> tuple[ModelManifest, list[dict[str, Any]]]:
    """The manifest and the answers of a trained model directory, prompted as it was trained."""
    manifest = read_manifest(model_dir)
    engine = engine or open_engine(model_dir, **engine_options)
    return manifest, answer_conversations(questions, engine, manifest.prompt, model_id=manifest.display_name)


def generate_step(model_dir: str | Path, questions_file: str | Path, max_new_tokens: int,
                  answers_file: str | Path) -> dict[str, Any]:
    """What the KFP component does; returns the row's facts (identity, answers, seconds)."""
    questions = load_questions(questions_file)
    started = time.monotonic()
    manifest, rows = answer_with_trained_model(model_dir, questions, max_new_tokens=max_new_tokens)
    seconds = time.monotonic() - started
    write_jsonl(answers_file, rows)
    turns = sum(len(r["choices"][0]["turns"]) for r in rows)
    print(f"[selfguided] generate: {manifest.display_name} answered {turns} turns of {len(rows)} questions "
          f"in {seconds:.0f} s", flush=True)
    return {"base_model": manifest.base_model, "arm": manifest.arm, "strategy": manifest.strategy,
            "answers": turns, "generate_seconds": round(seconds, 3)}


@component(base_image=GPU_IMAGE, install_kfp_package=False)  # the image has kfp
def generate(
    model: Input[Model],
    questions: Input[Dataset],
    max_new_tokens: int,
    answers: Output[Dataset],
) -> float:
    """Answer every turn of the eval questions with a fine-tuned model (greedy decoding).

    Args:
        model: a finetune output; its manifest names base model, arm and prompt strategy.
        questions: FastChat question.jsonl file (question_id, category, turns).
        max_new_tokens: longest answer per turn, in tokens.
        answers: FastChat model_answer JSONL file, one row per question (all its turns), in
            question order.

    Returns:
        The measured generation time in seconds (the compare step prices answers with it).
    """
    from selfguided.components.steps.generate import generate_step

    facts = generate_step(model.path, questions.path, max_new_tokens, answers.path)
    answers.metadata.update(facts)
    return facts["generate_seconds"]
