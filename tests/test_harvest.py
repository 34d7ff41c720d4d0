"""Harvest: production traffic (traces written in the production contract's shape) becomes a new
seed version; no test-set question gets in, duplicates and near-duplicates stay out, personal data
is replaced, hard prompts are kept apart, only new records reach the teacher and the scorer, and
MLflow records the lineage."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest
from llm_server import FakeOpenAI
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource
from kfp_api_stub import API, KfpApiStub
from registry_fixtures import empty_store  # noqa: F401  (fixture)
from servers import S3_CREDENTIALS, s3_server, serving  # noqa: F401  (fixture)

from selfguided.components.data.harvest import Prompt, held_out, holdout_questions, question_hash, select_prompts
from selfguided.components.data.questions import FRESH_SLICES, load_questions
from selfguided.components.data.seed_versions import SeedStore
from selfguided.components.registry import production as contract
from selfguided.components.registry.seed_lineage import seed_lineage
from selfguided.pipelines.cli.main import main

TEST_QUESTION = "우리 동네 도서관 개관 소식을 알리는 뉴스 기사를 써 주세요."


def test_selection_reasons_in_order():
    prompts = [Prompt("t1", "blog", "회사 소개 블로그 글을 써 주세요. 우리 회사는 친환경 포장재를 만듭니다."),
               Prompt("t2", "blog", "회사 소개 블로그 글을 써 주세요. 우리 회사는 친환경 포장재를 만들어요."),  # near
               Prompt("t3", "news", "  " + TEST_QUESTION.upper() + "  "),                                # test set
               Prompt("t4", "poem", "봄에 대한 시를 써 주세요", score=3.0),                                # hard
               Prompt("t5", "poem", "봄에 대한   시를 써 주세요"),                                          # duplicate
               Prompt("t6", "poem", "가을 밤하늘을 노래하는 시를 지어 주세요"),                            # in the seed
               Prompt("t7", "blog", "   ")]
    selection = select_prompts(prompts, test_hashes={question_hash(TEST_QUESTION)},
                               seed_questions=["가을 밤하늘을 노래하는 시를 지어 주세요"], hard_below=5)
    assert [p.trace_id for p in selection.kept] == ["t1"] and [p.trace_id for p in selection.hard] == ["t4"]
    assert selection.dropped == {"near-duplicate": 1, "test-set question": 1, "duplicate": 1,
                                 "already in the seed": 1, "empty": 1}


def test_the_held_out_side_is_the_prompts_hash_and_the_slice_file_has_as_many_seen():
    prompts = [Prompt(f"t{i}", "blog", f"블로그 글 {i}번을 써 주세요") for i in range(400)]
    unseen = [p for p in prompts if held_out(p.text, 0.1)]
    assert 20 <= len(unseen) <= 60  # about a tenth
    assert all(held_out("  " + p.text.upper() + " ", 0.1) for p in unseen)  # normalised: the same side
    assert not any(held_out(p.text, 0.0) for p in prompts)
    seen = [p for p in prompts if p not in unseen]
    rows = holdout_questions(unseen[:3], seen)
    assert [r["slice"] for r in rows] == ["unseen"] * 3 + ["seen"] * 3 and len({r["question_id"] for r in rows}) == 6
    assert holdout_questions(unseen[:3], seen[::-1]) == rows  # the seen ones: the first by hash, not by order


def _serve(uri: str, prompts: list[tuple[str, str]], low: set[str] = frozenset()) -> None:
    """Served answers as the serving side traces them (the contract's name, request, response and tags);
    the monitor's judge verdict `overall` 2 on the prompts in `low`."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(contract.PRODUCTION_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(contract.PRODUCTION_EXPERIMENT)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    for category, prompt in prompts:
        with mlflow.start_span(contract.SERVED_TRACE_NAME, span_type="CHAT_MODEL") as span:
            span.set_inputs({"messages": [{"role": "user", "content": prompt}]})
            span.set_outputs({"answer": "서비스가 쓴 답변입니다."})
            mlflow.update_current_trace(tags={contract.TAG_CATEGORY: category, contract.TAG_CATEGORY_SOURCE: "client",
                                              contract.TAG_MODEL_VERSION: "1", contract.TAG_REDACTIONS: "0"})
        if prompt in low:
            mlflow.flush_trace_async_logging()
            mlflow.log_feedback(trace_id=span.trace_id, name="overall", value=2.0,
                                source=AssessmentSource(source_type="LLM_JUDGE", source_id="gpt-4o"))
    mlflow.flush_trace_async_logging()


def test_replayed_traffic_grows_the_seed_without_test_questions_and_sends_only_new_records(
        tmp_path, empty_store, monkeypatch, capsys):  # noqa: F811
    from selfguided.components.registry.genai_pages import ensure_questions_dataset

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    # A test set on record: the pipeline published its questions in the experiment.
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "category": "news", "turns": [TEST_QUESTION]},
                                    ensure_ascii=False) + "\n", encoding="utf-8")
    experiment_id = MlflowClient(uri).create_experiment("selfguided", artifact_location=(tmp_path / "a").as_uri())
    ensure_questions_dataset(uri, experiment_id, questions)
    # The seed version production grows from.
    store = SeedStore(tmp_path / ".selfguided" / "seed-versions")
    base, _ = store.save([{"id": "s1", "category": "poem", "instruction": "가을 밤하늘을 노래하는 시를 지어 주세요",
                           "input": "", "output": "별이 빛나는 밤"}])
    _serve(uri, [("blog", "회사 소개 블로그 글을 써 주세요. 우리 회사는 친환경 포장재를 만듭니다."),
                 ("blog", "회사 소개 블로그 글을 써 주세요. 우리 회사는 친환경 포장재를 만들어요."),
                 ("news", TEST_QUESTION),
                 ("poem", "가을 밤하늘을 노래하는 시를 지어 주세요"),
                 ("poem", "봄에 대한 시를 써 주세요"),
                 ("blog", "제 메일 kim.minsu@example.com 으로 보낼 자기소개 글을 써 주세요"),
                 ("news", "지역 축제 취소 소식을 짧은 기사로 써 주세요")], low={"봄에 대한 시를 써 주세요"})

    with FakeOpenAI() as server:
        argv = ["harvest", "--tracking-uri", uri, "--teacher", "gpt-4o", "--score-model", "gpt-4o",
                "--llm-base-url", server.base_url, "--llm-concurrency", "2"]
        assert main([*argv, "--extends", base.version]) == 0
        out = capsys.readouterr().out
        assert "Watermark: no earlier harvest of selfguided-production on record" in out
        first_requests = server.chat_requests
        first = out.split("Seed version ", 1)[1].split(":", 1)[0]
        assert "1  test-set question" in out and "1  near-duplicate" in out and "1  already in the seed" in out
        assert "3  kept; 1 hard" in out and "Scored: 4 sent to the scorer gpt-4o, 0 reused" in out
        assert first_requests == 4 + 4  # the teacher and the scorer, once per kept or hard prompt

        records = store.records(first)
        instructions = [r["instruction"] for r in records]
        assert TEST_QUESTION not in instructions and len(records) == 1 + 3
        assert any("[EMAIL]" in t for t in instructions) and not any("@example.com" in t for t in instructions)
        assert all(r["scores"] for r in records[1:]) and {r["category"] for r in records[1:]} == {"blog", "news"}
        hard = [json.loads(line) for line in (tmp_path / ".selfguided" / "harvest-hard.jsonl").read_text().splitlines()]
        assert [h["instruction"] for h in hard] == ["봄에 대한 시를 써 주세요"]

        # A week later: the same prompts again plus two new ones; only the new ones are answered and scored.
        server.reset_counters()
        _serve(uri, [("news", "지역 축제 취소 소식을 짧은 기사로 써 주세요"), ("news", TEST_QUESTION),
                     ("poem", "겨울 바다를 그리는 시를 써 주세요"), ("blog", "주말 캠핑 후기를 블로그 글로 써 주세요")])
        assert main([*argv, "--extends", first, "--hard-out", "hard2.jsonl"]) == 0
        out = capsys.readouterr().out
        second = out.split("Seed version ", 1)[1].split(":", 1)[0]
        # 겨울 바다 is on the held-out side (its hash is below the default --holdout-fraction 0.1):
        # never answered, never trained on; 캠핑 is answered, scored and saved.
        assert "1  of the kept held out of training" in out
        assert server.chat_requests == 1 + 1 and "Scored: 1 sent to the scorer" in out
        holdout = load_questions(tmp_path / ".selfguided" / "harvest-holdout.jsonl", slices=FRESH_SLICES)
        assert [(q["turns"][0], q["slice"]) for q in holdout] == [("겨울 바다를 그리는 시를 써 주세요", "unseen"),
                                                                   ("주말 캠핑 후기를 블로그 글로 써 주세요", "seen")]
        assert holdout[0]["question_id"] == "harvest-" + question_hash("겨울 바다를 그리는 시를 써 주세요")[:12]
        assert out.strip().splitlines()[-1] == (
            f"Next: selfguided run --seed-data .selfguided/seed-versions/{second}/records.jsonl --fresh-questions .selfguided/harvest-holdout.jsonl "
            "(--fresh-questions: the held-out slice, pipeline parameter fresh_questions_uri)")
        # The watermark: only the traces served after the newest one the first harvest read.
        assert f"the newest trace the harvest that made {first} read" in out
        assert "4 production prompts read" in out

        # No new traffic: the watermark of the second harvest leaves nothing; no version, and it says so.
        server.reset_counters()
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert f"the harvest that made {second} read" in out and f"Extends {second}" in out
        assert "No new traffic in selfguided-production since the watermark: no seed version made." in out
        assert server.chat_requests == 0 and "Seed version " not in out

        # The held-out prompt served again, harvested with no hold-out at all: its test-set record keeps it out.
        _serve(uri, [("poem", "겨울 바다를 그리는 시를 써 주세요")])
        assert main([*argv, "--holdout-fraction", "0"]) == 0
        out = capsys.readouterr().out
        assert "1  test-set question" in out and "Nothing new to harvest: no seed version made." in out
        assert server.chat_requests == 0
        # That harvest made no version, yet its watermark is recorded: the left-out trace is not read again.
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "the newest trace the last harvest read (it made no seed version)" in out
        assert "No new traffic in selfguided-production since the watermark" in out and f"Extends {second}" in out
    assert len(store.records(second)) == 4 + 1
    assert "겨울 바다를 그리는 시를 써 주세요" not in [r["instruction"] for r in store.records(second)]
    assert TEST_QUESTION not in [r["instruction"] for r in store.records(second)]
    chain = seed_lineage(uri, "selfguided", second)
    assert [c["version"] for c in chain] == [second, first]  # the base was never logged: the chain stops there
    assert chain[0]["parent"] == first and chain[1]["parent"] == base.version
    assert chain[0]["source"]["traces"] == contract.PRODUCTION_EXPERIMENT and chain[0]["source"]["teacher"] == "gpt-4o"
    assert int(chain[0]["source"]["since_ms"]) == int(chain[1]["source"]["until_ms"]) < int(chain[0]["source"]["until_ms"])


def test_harvest_refuses_an_unknown_parent_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["harvest", "--teacher", "gpt-4o", "--extends", "seed-0123456789abcdef",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    err = capsys.readouterr().err
    assert "is not in the seed store" in err and err.count("\n") == 1


def test_the_retrain_trigger_submits_one_training_run_once_n_new_records_accumulate(
        tmp_path, empty_store, s3_server, monkeypatch, capsys):  # noqa: F811
    """Records counted against the champion's seed version; below N it waits, at N it submits one run
    of the compiled training pipeline (the real kfp.Client against tests/kfp_api_stub.py) whose
    seed_uri is the new version's records on S3 (moto); without --kfp-host it prints the command.
    N = 3: 2 new records wait, 3 print the command, 4 submit exactly one run."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url}.items():
        monkeypatch.setenv(name, value)
    # moto keeps buckets per process, whichever server made them: a bucket no other test module uses.
    s3_server.client().create_bucket(Bucket="harvest-seeds")
    root = "s3://harvest-seeds/flywheel"
    store = SeedStore(root, client=s3_server.client())
    base, _ = store.save([{"id": "s1", "category": "poem", "instruction": "가을 밤하늘을 노래하는 시를 지어 주세요",
                           "input": "", "output": "별이 빛나는 밤"}])
    client = MlflowClient(uri)
    client.create_registered_model("selfguided-model")
    champion = client.create_model_version("selfguided-model", source=str(tmp_path / "model"),
                                           tags={"seed_version": base.version})
    client.set_registered_model_alias("selfguided-model", "champion", champion.version)
    kfp_api = KfpApiStub()
    with FakeOpenAI() as server, serving(kfp_api.server):
        argv = ["harvest", "--tracking-uri", uri, "--teacher", "gpt-4o", "--llm-base-url", server.base_url,
                "--seed-store", root, "--registered-model", "selfguided-model", "--retrain-after", "3"]
        _serve(uri, [("poem", "봄비 내리는 오후를 그린 시를 써 주세요"), ("news", "시장 개장 소식을 짧은 기사로 써 주세요")])
        assert main([*argv, "--extends", base.version, "--kfp-host", kfp_api.host]) == 0
        out = capsys.readouterr().out
        assert "retrain: 2 new records (< 3): waiting" in out and not kfp_api.runs

        _serve(uri, [("blog", "동네 빵집 방문 후기를 블로그 글로 써 주세요")])
        assert main(argv) == 0  # no --kfp-host: the command, nothing submitted
        out = capsys.readouterr().out
        second = out.split("Seed version ", 1)[1].split(":", 1)[0]
        assert f"retrain: 3 new records since the champion's seed version {base.version} (>= 3)" in out
        assert f"retrain: selfguided run --seed-data {root}/{second}/records.jsonl" in out and not kfp_api.runs

        _serve(uri, [("news", "도서관 야간 개방 소식을 기사로 써 주세요"), ("poem", "겨울 바다를 그리는 시를 써 주세요")])
        assert main([*argv, "--kfp-host", kfp_api.host, "--retrain-param", "num_epochs=2"]) == 0
        out = capsys.readouterr().out
        third = out.split("Seed version ", 1)[1].split(":", 1)[0]
        assert "retrain: 4 new records since the champion's seed version" in out  # 겨울 바다 held out
    (run,) = kfp_api.runs.values()
    assert f"retrain: submitted KFP run {run['run_id']}" in out
    fresh = f"{root}/{third}/fresh-questions.jsonl"  # the held-out slice, beside the version on S3
    assert run["runtime_config"]["parameters"] == {"seed_uri": f"{root}/{third}/records.jsonl", "num_epochs": 2,
                                                   "fresh_questions_uri": fresh}
    body = s3_server.client().get_object(Bucket="harvest-seeds", Key=f"flywheel/{third}/fresh-questions.jsonl")["Body"]
    assert [(json.loads(line)["turns"][0], json.loads(line)["slice"]) for line in body.read().decode().splitlines()] == [
        ("겨울 바다를 그리는 시를 써 주세요", "unseen"), ("도서관 야간 개방 소식을 기사로 써 주세요", "seen")]
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "selfguided"
    assert run["display_name"] == f"selfguided retrain on {third}" and ("POST", f"{API}/runs") in kfp_api.calls()
    # The run's seed_uri is readable where the cluster reads it: the records on S3, the base's and the 4 harvested.
    assert [r["id"] for r in store.records(third)][0] == "s1" and len(store.records(third)) == 1 + 4


def test_retrain_and_holdout_refusals_are_one_line(tmp_path, capsys):
    assert main(["harvest", "--teacher", "gpt-4o", "--retrain-after", "3", "--kfp-host", "http://127.0.0.1:1",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert main(["harvest", "--teacher", "gpt-4o", "--kfp-host", "http://127.0.0.1:1",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert main(["harvest", "--teacher", "gpt-4o", "--holdout-fraction", "1"]) == 2
    local, no_trigger, fraction = capsys.readouterr().err.strip().splitlines()
    assert "the cluster cannot read the local seed store" in local and "give --retrain-after N too" in no_trigger
    assert "--holdout-fraction 1.0: give a share in [0, 1)" in fraction


@pytest.fixture(autouse=True)
def _no_stray_mlruns(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # MLflow's default ./mlruns lands in the test's folder, never in tests/
