"""Harvest's test-set guard reads the test sets of the store it is given, whatever MLflow's global
tracking URI is.

MLflow 3.17's `EvaluationDataset.records` loads lazily from the *global* tracking store
(mlflow/entities/evaluation_dataset.py, the `records` property: `_get_store()` with no URI). Read
through `MlflowClient(uri).get_dataset(id).records`, a store other than the global one gave no
records and no error: `selfguided harvest --tracking-uri sqlite:///...` printed "checked against 0
test-set questions (1 test set(s) on record)" and would have let the gate's questions into training.
The harvest test itself did not see it: publishing the test set sets the global URI to the same store.
"""

from __future__ import annotations

import json

import mlflow
from mlflow import MlflowClient

from selfguided.components.data.harvest import question_hash
from selfguided.components.registry.genai_pages import dataset_records, ensure_questions_dataset
from selfguided.components.registry.harvest_read import test_set_hashes as published_question_hashes


def test_test_set_questions_are_read_from_the_given_store_not_the_global_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'published.db'}"
    questions = tmp_path / "questions.jsonl"
    rows = [{"question_id": i, "category": "poem", "turns": [f"가을 바다에 대한 시를 써 주세요 {i}"]} for i in range(3)]
    questions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    experiment_id = MlflowClient(uri).create_experiment("selfguided")
    dataset = ensure_questions_dataset(uri, experiment_id, questions)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # e.g. the environment's MLFLOW_TRACKING_URI
    try:
        assert len(dataset_records(uri, dataset.dataset_id)) == 3
        hashes, test_sets = published_question_hashes(uri, ["selfguided"])
    finally:
        mlflow.set_tracking_uri(None)
    assert test_sets == 1
    assert hashes == {question_hash(r["turns"][0]) for r in rows}
