"""Generation engines on a trained model directory, and answering questions with them.

One chooser (`pick_backend`) for the eval answers (generate step, reference rows) and
`selfguided serve`. Two engines, same results for greedy decoding:

- transformers (always available): `artifact.generate_texts`, batched with left padding.
- vLLM (used when installed and a GPU is present): vLLM cannot serve LoRA adapters on GPT-NeoX,
  so the adapter is merged into the base first (`export_merged`) and vLLM serves a plain model.

A question with several turns (MT-bench, KoMT-Bench) is answered turn by turn: turn k is asked
with the earlier turns and the model's own earlier answers in the prompt, as FastChat does. All
questions' turn k go through the engine as one batch, then turn k + 1. The prompt follows the
model's manifest (arm and strategy), so a model is asked exactly as it was trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from selfguided.components.model.artifact import (
    ModelManifest,
    converse,
    export_merged,
    generate_texts,
    load_trained,
    read_manifest,
)


class EngineError(RuntimeError):
    """The asked engine cannot run here."""


BACKENDS = ("auto", "transformers", "vllm")


def vllm_available(device: str | None = None) -> bool:
    """vLLM installed and `device` (default: this machine's best) a CUDA GPU."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.device(device).type == "cuda" if device else torch.cuda.is_available()


def pick_backend(backend: str, device: str | None = None) -> str:
    """The one choice of engine. 'auto': vLLM when it is installed and we are on a GPU, else
    transformers; 'vllm' where vLLM cannot run is an error, not a silent fallback."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown generation backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "transformers":
        return backend
    available = vllm_available(device)
    if backend == "vllm" and not available:
        raise EngineError("backend vllm needs vLLM installed and a CUDA GPU (use backend transformers)")
    return "vllm" if available else "transformers"


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


def vllm_command(merged_dir: str | Path, served_model_name: str, *, host: str, port: int,
                 max_new_tokens: int) -> list[str]:
    """vLLM's OpenAI server on a merged export, with its chat template, greedy by default."""
    merged_dir = Path(merged_dir)
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(merged_dir),
               "--served-model-name", served_model_name, "--host", host, "--port", str(port),
               "--override-generation-config", json.dumps({"max_new_tokens": max_new_tokens, "temperature": 0.0})]
    template = merged_dir / "chat_template.jinja"
    if template.is_file():  # also in tokenizer_config.json; explicit, so no default template is ever used
        command += ["--chat-template", str(template)]
    return command
