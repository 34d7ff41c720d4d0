"""Answers of a model to the eval questions, in FastChat's model_answer shape, every turn.

A question with several turns (MT-bench, KoMT-Bench) is answered turn by turn: turn k is asked
with the earlier turns and the model's own earlier answers in the prompt, as FastChat does. All
questions' turn k go through the engine as one batch, then turn k + 1.

The prompt follows the model's manifest (arm and strategy), so a model is asked exactly as it
was trained. The engine (transformers, or vLLM on a GPU where installed) is chosen and run by
`model/engines.py`, which the reference rows and `selfguided serve` use too.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import time
from pathlib import Path
from typing import Any

from kfp.dsl import Dataset, Input, Model, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.data.questions import load_questions
from selfguided.components.images import GPU_IMAGE
from selfguided.components.model.engines import answer_with_trained_model


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
