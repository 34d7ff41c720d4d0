"""A registered model version as an MLflow pyfunc model: questions (or conversations) in, answers out.

Loading and generation are the trained-model artifact's (`model/artifact.py`); this class only
adapts them to MLflow's PythonModel interface. The version ships this module, `artifact.py`
and `prompting.py` as code, and is built at load time by `pyfunc_code.py` (models from code;
see registry/logged_model.log_trained_model), so it loads with
`mlflow.pyfunc.load_model` where selfguided is not installed: only torch, transformers, peft and
mlflow are needed.

Input: one string column, each cell a question (one turn) or a JSON list of turns, where the
earlier answers are the model's own and are generated too. Output: the answer to the last turn.
predict params: `max_new_tokens` (default 256), `batch_size` (8), `temperature` (0: greedy).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pandas as pd

MODEL_DIR_ARTIFACT = "model_dir"


def _turns(cell: Any) -> list[str]:
    if isinstance(cell, list):
        return [str(t) for t in cell]
    text = str(cell)
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return [text]
        if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
            return value
    return [text]


class KoreanWritingModel(mlflow.pyfunc.PythonModel):
    """A trained model directory behind mlflow.pyfunc; prompts as the model was trained."""

    def load_context(self, context) -> None:
        import torch

        from selfguided.components.model.artifact import load_trained, read_manifest

        model_dir = context.artifacts[MODEL_DIR_ARTIFACT]
        self.manifest = read_manifest(model_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.tokenizer = load_trained(model_dir, device=device)

    # The signature is given explicitly at logging (register.MODEL_SIGNATURE): pyfunc hands over a
    # DataFrame of one string column, which is what the hint says (MLflow infers nothing from it).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from selfguided.components.model.artifact import converse, generate_texts

        params = params or {}
        column = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input  # a frame or a list
        conversations = [_turns(cell) for cell in column]

        def engine(prompts: list[str]) -> list[str]:
            return generate_texts(self.model, self.tokenizer, prompts,
                                  max_new_tokens=int(params.get("max_new_tokens", 256)),
                                  batch_size=int(params.get("batch_size", 8)),
                                  temperature=float(params.get("temperature", 0.0)), progress=False)

        return [answers[-1] for answers in converse(conversations, engine, self.manifest.prompt)]
