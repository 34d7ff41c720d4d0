"""The experiment's GenAI pages, Datasets and Judges (registry/genai_pages.py), on real MLflow stores:
a SQLite store and a real `mlflow server`. The judges' summaries come from the judge step's own code,
graded by local stand-in LLM judges (tests/llm_server.py) and the offline stand-in."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import mlflow
import pytest
from llm_server import FakeOpenAI
from mlflow import MlflowClient
from mlflow.genai.scorers import get_scorer, list_scorers
from mlflow.genai.scorers.registry import list_scorer_versions
from registry_fixtures import empty_store  # noqa: F401  (fixture)
from servers import mlflow_server, s3_server  # noqa: F401  (fixtures)

from selfguided.components.judging.offline import judge_offline
from selfguided.components.registry.genai_pages import (
    dataset_name,
    publish_genai_pages,
    question_records,
    records_digest,
)
from selfguided.components.evaluation.judge_summary import JudgeSummary
from selfguided.components.judging.jury import JudgeUsage
from selfguided.components.judging.rules import JudgeIdentity
from selfguided.components.steps.judge import judge_answers

pytestmark = pytest.mark.timeout(120)

QUESTIONS = [
    {"question_id": "poem-1", "category": "poem", "turns": ["가을에 대한 짧은 시를 써 주세요."], "seen": True},
    {"question_id": "math-1", "category": "math", "turns": ["1 더하기 1은?", "그럼 2 더하기 2는?"],
     "reference": ["2입니다.", "4입니다."], "seen": False},
    {"question_id": "news-1", "category": "news", "turns": ["오늘 서울 날씨 기사를 써 주세요."], "seen": True},
]
ANSWERS = [{"question_id": q["question_id"], "model_id": "tiny-sg",
            "choices": [{"index": 0, "turns": [f"답변입니다 (품질 7). {t}에 대한 답을 한국어로 씁니다." for t in q["turns"]]}]}
           for q in QUESTIONS]
OWN_ENDPOINT = JudgeUsage(JudgeIdentity("korean-judge", "judge-single", "1"),
                          endpoint="http://editor:secret@judge-host:8000/v1?key=x")
"""A juror on its own endpoint whose model name no provider knows (`korean-judge@http://...`)."""


@pytest.fixture
def store(tmp_path, empty_store, monkeypatch):
    """A fresh SQLite store with one experiment and two row runs; custom code scorers off, as by default."""
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", raising=False)
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("selfguided", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = [client.create_run(experiment_id, run_name=name).info.run_id for name in ("tiny/self_guided", "base/tiny")]
    return uri, client, experiment_id, runs


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    """Two rows' judge summaries as the judge step writes them: a jury of two stand-in LLM judges on
    their own endpoints and the offline stand-in (plus, for one row, a juror on an endpoint no
    provider knows)."""
    cache = tmp_path_factory.mktemp("llm-cache")
    with FakeOpenAI(judge="fair") as fair, FakeOpenAI(judge="length") as long:
        judgments, usage, jury = judge_answers(
            QUESTIONS, ANSWERS, "offline-heuristic", cache=str(cache),
            judges=f"fair@{fair.base_url},long@{long.base_url},offline-heuristic")
    summary = JudgeSummary.of_judgments(judgments, jury, row_kind="trained", base_model="tiny", arm="self_guided",
                                        usage=usage)
    other = copy.deepcopy(summary)
    other.jury.judges.append(copy.deepcopy(OWN_ENDPOINT))
    return [summary, other]


def _questions_file(folder: Path, questions=QUESTIONS) -> Path:
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    return path


def _experiment_datasets(client: MlflowClient, experiment_id: str):
    return list(client.search_datasets(experiment_ids=[experiment_id]))


def _check_dataset(client: MlflowClient, experiment_id: str, run_ids: list[str]) -> None:
    (dataset,) = _experiment_datasets(client, experiment_id)
    assert dataset.name == dataset_name(records_digest(question_records(QUESTIONS)))
    records = {r.tags["question_id"]: r for r in client.get_dataset(dataset.dataset_id).records}
    assert sorted(records) == sorted(q["question_id"] for q in QUESTIONS)
    for question in QUESTIONS:
        record = records[question["question_id"]]
        assert record.inputs == {"turns": question["turns"], "category": question["category"]}
        assert record.expectations == ({"reference": question["reference"]} if "reference" in question else None)
    for run_id in run_ids:  # every row run names what it was evaluated on
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert [(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in inputs] == \
            [(dataset.name, "evaluation")]


def _check_judges(experiment_id: str, names: set[str]) -> None:
    judges = {j.name: j for j in list_scorers(experiment_id=experiment_id)}
    assert set(judges) == names
    for name, judge in judges.items():
        assert judge.model == f"openai:/{name}"
        assert "helpfulness, relevance, accuracy" in judge.instructions and "Korean" in judge.instructions
        assert "{{ inputs }}" in judge.instructions and "{{ outputs }}" in judge.instructions
        assert "Overall: [[6]]" in judge.instructions  # our output format, as the judge step asks it
        assert "feedback `overall`" in judge.description and f"id {name})" in judge.description
        assert "judge-single-v1 (prompts:/selfguided-judge-single/1)" in judge.description
        assert "judge-single-multi-ref-v1" in judge.description
        assert [version for _, version in list_scorer_versions(name=name, experiment_id=experiment_id)] == [1]


def test_the_questions_and_the_judges_are_on_the_pages_once_however_often_registered(store, summaries, tmp_path,
                                                                                     capsys):
    uri, client, experiment_id, runs = store
    questions = _questions_file(tmp_path)
    first = publish_genai_pages(uri, experiment_id, summaries=summaries, run_ids=runs[:1], questions_file=questions)
    assert first["judges"] == {"fair": "registered", "long": "registered", "korean-judge": "registered",
                               "offline-heuristic": "refused: MlflowException"}
    second = publish_genai_pages(uri, experiment_id, summaries=summaries, run_ids=runs[1:], questions_file=questions)
    assert second["judges"] == {**dict.fromkeys(("fair", "long", "korean-judge"), "unchanged"),
                                "offline-heuristic": "refused: MlflowException"}
    assert first["dataset"] == second["dataset"]
    _check_dataset(client, experiment_id, runs)
    _check_judges(experiment_id, {"fair", "long", "korean-judge"})
    own = get_scorer(name="korean-judge", experiment_id=experiment_id).description
    assert "its own endpoint http://judge-host:8000/v1 " in own and "secret" not in own and "key=x" not in own
    assert "on the run's LLM endpoint" not in own
    said = capsys.readouterr().out
    assert "offline-heuristic is no LLM, so it goes on the Judges page only as a code scorer" in said
    assert "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS=true" in said and "Custom scorer registration" in said


def test_the_same_questions_are_one_dataset_in_every_experiment_and_other_questions_another(store, summaries,
                                                                                          tmp_path):
    uri, client, experiment_id, runs = store
    publish_genai_pages(uri, experiment_id, summaries=[], run_ids=runs, questions_file=_questions_file(tmp_path))
    other = client.create_experiment("selfguided-other")
    publish_genai_pages(uri, other, summaries=[], questions_file=_questions_file(tmp_path))
    (here,), (there,) = _experiment_datasets(client, experiment_id), _experiment_datasets(client, other)
    assert here.dataset_id == there.dataset_id and set(client.get_dataset(here.dataset_id).experiment_ids) == \
        {experiment_id, other}
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    publish_genai_pages(uri, other, summaries=[], questions_file=_questions_file(fewer, QUESTIONS[:2]))
    assert len(_experiment_datasets(client, other)) == 2 and len(_experiment_datasets(client, experiment_id)) == 1
    assert len(list(client.search_datasets(filter_string="name LIKE 'selfguided-questions-%'"))) == 2


def test_a_juror_that_changed_is_a_new_version_of_its_judge_not_a_second_judge(store, summaries):
    uri, client, experiment_id, _ = store
    publish_genai_pages(uri, experiment_id, summaries=summaries)
    moved = copy.deepcopy(summaries[1])
    moved.jury.judges[-1].endpoint = "http://other-host/v1"
    assert publish_genai_pages(uri, experiment_id, summaries=[moved])["judges"]["korean-judge"] == "registered"
    assert {j.name for j in list_scorers(experiment_id=experiment_id)} == {"fair", "long", "korean-judge"}
    versions = list_scorer_versions(name="korean-judge", experiment_id=experiment_id)
    assert [v for _, v in versions] == [1, 2] and "other-host" in get_scorer(name="korean-judge",
                                                                            experiment_id=experiment_id).description


def test_the_offline_stand_in_is_a_code_scorer_where_mlflow_takes_one_never_an_llm(store, summaries, monkeypatch):
    uri, client, experiment_id, _ = store
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", "true")  # the store's owner has opted in
    for expected in ("registered", "unchanged"):
        assert publish_genai_pages(uri, experiment_id, summaries=summaries[:1])["judges"]["offline-heuristic"] == expected
    offline = get_scorer(name="offline-heuristic", experiment_id=experiment_id)
    assert not hasattr(offline, "model") and offline.kind.value == "decorator"
    assert offline.description.startswith("NOT an LLM: offline-heuristic")
    assert [v for _, v in list_scorer_versions(name="offline-heuristic", experiment_id=experiment_id)] == [1]
    # What it computes is what the judge step's stand-in gave the same answer (the Korean rule included).
    for question, answer in zip(QUESTIONS, ANSWERS):
        rows = judge_offline([question], [answer])
        turns, text = question["turns"], answer["choices"][0]["turns"][-1]
        feedback = offline(inputs={"turns": turns, "category": question["category"]}, outputs=text,
                           expectations={"reference": question["reference"]} if "reference" in question else None)
        assert feedback.value == pytest.approx(rows[-1]["score"]) and feedback.rationale == rows[-1]["judgment"]


def test_nothing_mlflow_refuses_fails_the_register_step(store, summaries, tmp_path, capsys):
    uri, client, experiment_id, runs = store
    bad = tmp_path / "questions.jsonl"
    bad.write_text('{"question_id": "q", "category": "poem"}\n', encoding="utf-8")  # no turns
    unknown_prompt = copy.deepcopy(summaries[0])
    unknown_prompt.jury.judges = [JudgeUsage(JudgeIdentity("gpt-4o", "judge-single", "9"))]
    done = publish_genai_pages(uri, experiment_id, summaries=[unknown_prompt], run_ids=runs, questions_file=bad)
    assert done == {"dataset": "", "judges": {"gpt-4o": "refused: DataError"}}
    said = capsys.readouterr().out
    assert "the test questions are not on the experiment's Datasets page" in said
    assert "judge gpt-4o is not on the experiment's Judges page (DataError" in said
    assert list_scorers(experiment_id=experiment_id) == [] and _experiment_datasets(client, experiment_id) == []


def test_on_a_real_mlflow_server(mlflow_server, summaries, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", raising=False)
    uri = mlflow_server.tracking_uri
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("selfguided-genai-pages")
    runs = [client.create_run(experiment_id).info.run_id for _ in range(2)]
    questions = _questions_file(tmp_path)
    for run_id in runs:  # two pipeline runs
        done = publish_genai_pages(uri, experiment_id, summaries=summaries, run_ids=[run_id], questions_file=questions)
        assert done["judges"]["offline-heuristic"].startswith("refused")  # the server has custom scorers off
    mlflow.set_tracking_uri(uri)
    _check_dataset(client, experiment_id, runs)
    _check_judges(experiment_id, {"fair", "long", "korean-judge"})
    assert "offline-heuristic is no LLM" in capsys.readouterr().out


def test_the_register_step_puts_its_questions_and_judges_on_the_pages(store, summaries, tmp_path):
    """Through register_candidates, as the register step calls it: the row run's input is the dataset."""
    from registry_fixtures import decided, make_model_dir

    from selfguided.components.registry.promotion import register_candidates
    from selfguided.components.registry.runs import Candidate

    uri, client, _, _ = store
    candidate = Candidate(make_model_dir(tmp_path / "model", base_model="tiny", arm="self_guided"), summaries[0])
    evaluation = decided(False, ("the compare step said so",))
    report = register_candidates([candidate], evaluation=evaluation, tracking_uri=uri, pipeline_run="run-1",
                                 scored_data_sha256="0" * 64, questions=_questions_file(tmp_path))
    experiment_id = client.get_experiment_by_name("selfguided").experiment_id
    _check_dataset(client, experiment_id, [report.challenger.run_id])
    _check_judges(experiment_id, {"fair", "long"})
