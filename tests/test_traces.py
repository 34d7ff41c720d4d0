"""Judged answers as MLflow traces, and the prompts in MLflow's prompt registry (registry/traces.py,
registry/prompts.py), on a SQLite store."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from mlflow import MlflowClient

from selfguided.components.registry.prompts import prompt_run_tags, prompts_dir, register_prompts
from selfguided.components.registry.traces import JURY_SCORE, judge_entries, log_judged_traces

CRITERIA = ("helpfulness", "relevance", "accuracy", "detail")


def _scores(value: float) -> dict[str, float]:
    return dict.fromkeys(CRITERIA, value)


def _today_row(question_id: str, turn: int, score: float | None, *, judge=("offline-heuristic", "heuristic", "1")):
    """A judgment row of one judge (its identity: model, prompt, prompt version)."""
    model, prompt, version = judge
    return {"question_id": question_id, "turn": turn, "category": "poem", "model": "tiny-sg",
            "judge": {"model": model, "prompt": prompt, "prompt_version": version, "mode": "single"}, "judgment": f"rationale {question_id}/{turn}", "question": f"질문 {question_id}-{turn}",
            "answer": f"답 {question_id}-{turn}", "score": -1 if score is None else score,
            "scores": None if score is None else _scores(score), "answer_chars": 6,
            "error": "timeout" if score is None else None}


def _jury_row(question_id: str, values: dict[str, float | None]):
    judges = [{"judge": {"model": name, "prompt": "judge-single", "prompt_version": "1", "mode": "single"},
               "scores": None if v is None else {**_scores(v), "overall": v}, "rationale": f"{name} says",
               "error": None if v is not None else "HTTP 500", "repeat": 0} for name, v in values.items()]
    answered = [v for v in values.values() if v is not None]
    mean = sum(answered) / len(answered)
    return {"question_id": question_id, "turn": 1, "category": "news", "model": "tiny-sg", "question": "뉴스를 써 줘",
            "answer": "기사", "score": mean, "scores": _scores(mean), "judges": judges,
            "jury": {"size": len(values), "answered": len(answered), "aggregate": "mean"}}


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds); each test gets its own experiment."""
    folder = tmp_path_factory.mktemp("traces")
    return f"sqlite:///{folder / 'mlflow.db'}", folder


@pytest.fixture
def store(database, request):
    uri, folder = database
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = request.node.name[:60]
    return uri, client, client.create_experiment(name, artifact_location=(folder / name).as_uri())


def _by_name(trace, name):
    return [a for a in trace.info.assessments if a.name == name]


def test_judge_entries_read_both_row_shapes():
    today = judge_entries(_today_row("q1", 1, 6.0, judge=("gpt-4o", "judge-single", "1")))
    assert [(e.judge, e.identity.prompt_id, e.scores["overall"], e.rationale) for e in today] == \
        [("gpt-4o", "judge-single-v1", 6.0, "rationale q1/1")]
    failed = judge_entries(_today_row("q1", 1, None))
    assert failed[0].scores is None and failed[0].error == "timeout"
    jury = judge_entries(_jury_row("q2", {"fair": 7.0, "long": None}))
    assert [(e.judge, e.scores and e.scores["overall"], e.error) for e in jury] == \
        [("fair", 7.0, None), ("long", None, "HTTP 500")]
    repeated = judge_entries({**_jury_row("q3", {"a": 5.0}), "judges": [
        {"judge": {"model": "a", "prompt": "p", "prompt_version": "2", "mode": "single"},
         "scores": _scores(5.0), "rationale": "", "error": None, "repeat": 1}]})
    assert (repeated[0].identity.prompt_id, repeated[0].scores["overall"], repeated[0].repeat) == ("p-v2", 5.0, 1)
    with pytest.raises(ValueError, match="a judge identity is an object"):  # one shape of a judge's identity
        judge_entries({**_today_row("q1", 1, 6.0), "judge": ["gpt-4o", "judge-single-v1"]})


def test_every_judged_answer_is_a_trace_linked_to_its_run(store):
    uri, client, experiment_id = store
    rows = [_today_row("q1", 1, 6.0), _today_row("q1", 2, 4.0), _today_row("q2", 1, None)]
    with mlflow.start_run(experiment_id=experiment_id) as run:
        ids = log_judged_traces(rows, run_id=run.info.run_id,
                                tags={"row": "tiny/self_guided", "row_kind": "trained", "pipeline_run": "p1"})
    mlflow.flush_trace_async_logging()
    traces = {t.info.trace_id: t for t in mlflow.search_traces(locations=[experiment_id], run_id=run.info.run_id,
                                                               return_type="list")}
    assert set(traces) == set(ids) and len(ids) == 3
    second = traces[ids[1]]
    assert {k: second.info.tags[k] for k in ("row", "row_kind", "pipeline_run", "category", "question_id", "turn")} == \
        {"row": "tiny/self_guided", "row_kind": "trained", "pipeline_run": "p1", "category": "poem",
         "question_id": "q1", "turn": "2"}
    # The request is the conversation so far: turn 1, the row's own answer to it, then turn 2.
    assert second.data.spans[0].inputs == {"messages": [
        {"role": "user", "content": "질문 q1-1"}, {"role": "assistant", "content": "답 q1-1"},
        {"role": "user", "content": "질문 q1-2"}]}
    assert second.data.spans[0].outputs == "답 q1-2"
    overall = _by_name(second, "overall")
    assert [(a.source.source_type, a.source.source_id, a.feedback.value) for a in overall] == \
        [("CODE", "offline-heuristic", 4.0)]  # the offline stand-in is code, not an LLM judge
    assert overall[0].rationale == "helpfulness 4, relevance 4, accuracy 4, detail 4. rationale q1/2"
    assert overall[0].metadata["prompt_id"] == "heuristic-v1" and overall[0].metadata["accuracy"] == "4"
    assert {a.name for a in second.info.assessments} == {"overall"}
    failed = traces[ids[2]]
    assert [(a.name, a.feedback.value, a.feedback.error.error_message) for a in failed.info.assessments] == \
        [("overall", None, "timeout")]


def test_a_jury_logs_each_judge_as_llm_judge_feedback_and_the_jury_score(store):
    uri, client, experiment_id = store
    with mlflow.start_run(experiment_id=experiment_id) as run:
        [trace_id] = log_judged_traces([_jury_row("q9", {"fair": 7.0, "long": 9.0, "noisy": None})],
                                       run_id=run.info.run_id, prompt_versions={"judge-single-v1": ("selfguided-judge-single", 3)})
    trace = mlflow.get_trace(trace_id, flush=True)
    overall = sorted((a.source.source_type, a.source.source_id, a.feedback.value, a.metadata.get("prompt_uri"))
                     for a in _by_name(trace, "overall"))
    assert overall == [("LLM_JUDGE", "fair", 7.0, "prompts:/selfguided-judge-single/3"),
                       ("LLM_JUDGE", "long", 9.0, "prompts:/selfguided-judge-single/3"),
                       ("LLM_JUDGE", "noisy", None, "prompts:/selfguided-judge-single/3")]
    [jury] = _by_name(trace, JURY_SCORE)
    assert (jury.source.source_type, jury.feedback.value, jury.metadata["answered"]) == ("CODE", 8.0, "2")
    assert json.loads(trace.info.tags["mlflow.linkedPrompts"]) == [{"name": "selfguided-judge-single", "version": "3"}]


def test_prompts_are_registered_once_and_a_changed_file_is_a_new_version(store, tmp_path):
    uri, client, experiment_id = store
    first = register_prompts(uri, experiment_id=experiment_id)
    assert first["judge-single-v1"] == ("selfguided-judge-single", 1) and first["score-v1"] == ("selfguided-score", 1)
    assert register_prompts(uri, experiment_id=experiment_id) == first  # unchanged files: no new version
    edited = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), edited)
    path = edited / "judge-single-v1.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["system"] += " Be strict."  # edited in place, without a new file version
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    second = register_prompts(uri, experiment_id=experiment_id, files=sorted(edited.glob("*.json")))
    assert second["judge-single-v1"] == ("selfguided-judge-single", 2)
    assert {k: v for k, v in second.items() if k != "judge-single-v1"} == \
        {k: v for k, v in first.items() if k != "judge-single-v1"}
    version = client.get_prompt_version("selfguided-judge-single", 2)
    assert version.template[0]["content"].endswith("Be strict.") and "{{answer}}" in version.template[1]["content"]
    assert "changed" in version.commit_message and version.tags["file"] == "judge-single-v1.json"
    assert experiment_id in client.get_prompt("selfguided-judge-single").tags["_mlflow_experiment_ids"].split(",")
    assert prompt_run_tags(second, ["judge-single-v1", "heuristic-v1"]) == \
        {"prompt/judge-single-v1": "prompts:/selfguided-judge-single/2"}


def test_the_register_hook_logs_the_rows_judgments_as_traces_of_its_run(store, tmp_path):
    """log_row_traces, as register calls it inside a row's run, on judgments from the real jury code
    (the offline stand-in as a jury of one), a two-turn question included."""
    from selfguided.components.evaluation.rows import RowJudgments
    from selfguided.components.judging.jury import JuryConfig, judge_with_jury, parse_judges
    from selfguided.components.registry.traces import log_row_traces

    uri, client, experiment_id = store
    questions = [{"question_id": 1, "category": "poem", "turns": ["가을 시를 써 주세요.", "더 짧게 고쳐 주세요."]},
                 {"question_id": 2, "category": "news", "turns": ["지역 축제 기사를 써 주세요."]}]
    answers = [{"question_id": 1, "model_id": "tiny-sg", "choices": [{"index": 0, "turns": [
                    "가을 바람이 분다\n낙엽이 진다\n우리는 걷는다", "가을 바람\n낙엽"]}]},
               {"question_id": 2, "model_id": "tiny-sg", "choices": [{"index": 0, "turns": [
                    "지난 주말 시청 앞에서 축제가 열렸다. 시민 3천 명이 참석했다고 시는 밝혔다."]}]}]
    judgments, _ = judge_with_jury(questions, answers, JuryConfig(judges=parse_judges("offline-heuristic")))
    with mlflow.start_run(experiment_id=experiment_id,
                          tags={"row": "tiny/self_guided", "row_kind": "trained", "pipeline_run": "p7"}) as run:
        assert log_row_traces(RowJudgments("tiny/self_guided", "trained", judgments)) == 3
    traces = mlflow.search_traces(locations=[experiment_id], run_id=run.info.run_id, return_type="list", flush=True)
    by_turn = {(t.info.tags["question_id"], t.info.tags["turn"]): t for t in traces}
    assert set(by_turn) == {("1", "1"), ("1", "2"), ("2", "1")}
    second = by_turn[("1", "2")]
    assert second.info.tags["pipeline_run"] == "p7" and second.info.tags["row"] == "tiny/self_guided"
    assert [m["content"] for m in second.data.spans[0].inputs["messages"]] == \
        ["가을 시를 써 주세요.", "가을 바람이 분다\n낙엽이 진다\n우리는 걷는다", "더 짧게 고쳐 주세요."]
    assert second.data.spans[0].outputs == "가을 바람\n낙엽"
    [overall] = second.info.assessments
    assert (overall.source.source_type, overall.source.source_id) == ("CODE", "offline-heuristic")
    assert overall.feedback.value == next(j["score"] for j in judgments if (j["question_id"], j["turn"]) == (1, 2))
    # The offline stand-in uses no registered prompt, but the prompts are in the registry for the LLM judges.
    assert client.get_prompt("selfguided-judge-single") is not None
    assert not any(k.startswith("prompt/") for k in client.get_run(run.info.run_id).data.tags)
