"""Register step: the promotion gate, candidate matching, registration against a real SQLite
MLflow store (versions, tags, metrics, aliases, promotion and rollback), and loading a
registered model back and generating with it."""

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from registry_fixtures import category_scores, make_model_dir, make_summary, write_summary

from selfguided.components.data import CATEGORIES, DataError, file_sha256
from selfguided.components.prompting import CRITERIA, inference_prompt
from selfguided.components.register import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION_TAG,
    Candidate,
    PromotionGate,
    RegistryError,
    default_artifact_location,
    evaluate_gate,
    load_candidates,
    register_candidates,
    rollback_champion,
)

NAME = "korean-writing-assistant"
HUB_BASE = "EleutherAI/polyglot-ko-1.3b"


def alias(client: MlflowClient, name: str) -> str:
    """The version an alias points at (the SQLite store returns ints, the REST API strings)."""
    return str(client.get_model_version_by_alias(NAME, name).version)


def judge_metrics(per_category: dict[str, float]) -> dict[str, float]:
    return make_summary("tiny", "self_guided", per_category)["metrics"]


# --- the gate --------------------------------------------------------------------------------


def test_gate_promotes_without_champion_when_every_category_is_scored():
    decision = evaluate_gate(judge_metrics(category_scores(4.0)), None, PromotionGate())
    assert decision.promote
    assert decision.reasons == ["no champion yet: nothing to compare against"]


def test_gate_rejects_missing_and_nan_categories_even_without_champion():
    scores = category_scores(7.0)
    del scores["poem"]
    metrics = judge_metrics(scores)
    metrics["judge/news/overall"] = math.nan
    decision = evaluate_gate(metrics, None, PromotionGate(required_categories=CATEGORIES))
    assert not decision.promote
    assert not evaluate_gate(metrics, None, PromotionGate()).promote  # news is present, and NaN
    assert "category poem is not scored (no judge/poem/overall)" in decision.reasons
    assert "category news is not scored (no judge/news/overall)" in decision.reasons


def test_gate_rejects_challenger_without_overall():
    metrics = judge_metrics(category_scores(7.0))
    del metrics["judge/overall"]
    decision = evaluate_gate(metrics, None, PromotionGate())
    assert not decision.promote
    assert "the challenger has no judge/overall score" in decision.reasons


def test_gate_rejects_equal_overall_because_strictly_better_is_required():
    champion = judge_metrics(category_scores(6.0))
    decision = evaluate_gate(judge_metrics(category_scores(6.0)), champion, PromotionGate())
    assert not decision.promote
    assert decision.reasons[0] == (
        "overall 6.000 vs champion 6.000 (+0.000): not better than the champion by more than 0.000"
    )


def test_gate_requires_min_improvement():
    champion = judge_metrics(category_scores(6.0))
    challenger = judge_metrics(category_scores(6.1))
    assert evaluate_gate(challenger, champion, PromotionGate(min_improvement=0.0)).promote
    decision = evaluate_gate(challenger, champion, PromotionGate(min_improvement=0.2))
    assert not decision.promote
    assert "not better than the champion by more than 0.200" in decision.reasons[0]


def test_gate_rejects_a_category_worse_beyond_tolerance_even_if_overall_is_better():
    champion = judge_metrics(category_scores(6.0))
    challenger = judge_metrics(category_scores(7.0, {"novel": 5.5}))  # overall 6.75, novel -0.5
    decision = evaluate_gate(challenger, champion, PromotionGate(tolerance=0.25))
    assert not decision.promote
    assert decision.reasons == [
        "category novel is worse by 0.500 (5.500 vs champion 6.000) > tolerance 0.250",
        "overall 6.750 vs champion 6.000 (+0.750, more than the required +0.000)",
    ]


def test_gate_accepts_a_category_worse_within_tolerance():
    champion = judge_metrics(category_scores(6.0))
    challenger = judge_metrics(category_scores(7.0, {"poem": 5.8}))
    decision = evaluate_gate(challenger, champion, PromotionGate(tolerance=0.25))
    assert decision.promote
    assert decision.reasons == [
        "overall 6.800 vs champion 6.000 (+0.800, more than the required +0.000)",
        "no category worse than the champion's by more than 0.250",
    ]


def test_gate_lists_every_failing_reason_at_once():
    champion = judge_metrics(category_scores(6.0))
    scores = category_scores(5.0)
    del scores["blog"]
    decision = evaluate_gate(judge_metrics(scores), champion, PromotionGate())
    assert not decision.promote
    assert decision.reasons[0] == "category blog is not scored (no judge/blog/overall)"
    assert any(r.startswith("overall 5.000 vs champion 6.000") for r in decision.reasons)
    worse = [r for r in decision.reasons if "is worse by 1.000" in r]
    assert len(worse) == len(CATEGORIES) - 1


def test_gate_compares_only_categories_the_champion_has():
    champion = judge_metrics(category_scores(6.0))
    del champion["judge/scenario/overall"]
    decision = evaluate_gate(judge_metrics(category_scores(6.5)), champion, PromotionGate())
    assert decision.promote
    assert "category scenario: the champion has no score, not compared" in decision.reasons


def test_gate_rejects_when_the_champion_has_no_overall():
    champion = judge_metrics(category_scores(6.0))
    del champion["judge/overall"]
    decision = evaluate_gate(judge_metrics(category_scores(9.0)), champion, PromotionGate())
    assert not decision.promote
    assert "the champion has no judge/overall score to compare against; promote by hand" in decision.reasons


def test_gate_works_over_the_categories_the_questions_carry_unless_told_otherwise():
    metrics = judge_metrics({"novel": 6.0, "writing": 6.0, "roleplay": 6.0})  # e.g. KoMT-Bench categories
    assert evaluate_gate(metrics, None, PromotionGate()).promote
    decision = evaluate_gate(metrics, None, PromotionGate(required_categories=("novel", "poem")))
    assert not decision.promote and "category poem is not scored (no judge/poem/overall)" in decision.reasons


@pytest.mark.parametrize("kwargs", [{"tolerance": -0.1}, {"min_improvement": -1.0}, {"tolerance": math.inf}])
def test_gate_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="PromotionGate"):
        PromotionGate(**kwargs)


# --- candidates ------------------------------------------------------------------------------


@pytest.fixture
def two_arms(tmp_path):
    """Model dirs and summary files for tiny:unscored (5.0) and tiny:self_guided (6.0)."""
    models = [make_model_dir(tmp_path / "m", arm="unscored"), make_model_dir(tmp_path / "m", arm="self_guided")]
    summaries = [
        write_summary(tmp_path / "s" / "sg.json", make_summary("tiny", "self_guided", category_scores(6.0))),
        write_summary(tmp_path / "s" / "un.json", make_summary("tiny", "unscored", category_scores(5.0))),
    ]
    return models, summaries


def test_load_candidates_takes_the_pairs_as_the_loop_collected_them(two_arms):
    models, summaries = two_arms
    candidates = load_candidates(models, summaries[::-1])  # the i-th summary belongs to the i-th model
    assert [c.label for c in candidates] == ["tiny/unscored", "tiny/self_guided"]
    assert [c.summary["arm"] for c in candidates] == ["unscored", "self_guided"]
    assert [c.model_dir for c in candidates] == models


def test_load_candidates_refuses_a_pair_that_is_not_what_it_claims(two_arms):
    models, summaries = two_arms
    with pytest.raises(DataError, match=r"sg.json: judge summary of 'tiny/self_guided' paired with the model in "
                                        r".*-unscored-lora \(tiny/unscored\)"):
        load_candidates(models, summaries)
    with pytest.raises(DataError, match="2 model directories but 1 judge summaries"):
        load_candidates(models, summaries[:1])


def test_bad_model_dirs_and_summaries_are_named(two_arms, tmp_path):
    models, summaries = two_arms
    summaries = summaries[::-1]
    with pytest.raises(ValueError, match="selfguided.json is missing"):
        load_candidates([tmp_path, models[1]], summaries)
    manifest = json.loads((models[0] / "selfguided.json").read_text())
    (models[0] / "selfguided.json").write_text(json.dumps({**manifest, "method": "qlora"}))
    with pytest.raises(ValueError, match="field 'method' is 'qlora'"):
        load_candidates(models, summaries)
    (models[0] / "selfguided.json").write_text(json.dumps(manifest))
    shutil.rmtree(models[0] / "adapter")
    with pytest.raises(ValueError, match=r"folder adapter/ is missing \(method 'lora'"):
        load_candidates(models, summaries)
    summaries = summaries[::-1]
    summary = json.loads(summaries[0].read_text())
    del summary["metrics"]["judge/overall"]
    summaries[0].write_text(json.dumps(summary))
    with pytest.raises(DataError, match=r"sg.json: field 'metrics' has no 'judge/overall'"):
        load_candidates(models[1:], summaries[:1])


def test_default_artifact_location_is_beside_a_sqlite_file(tmp_path, monkeypatch):
    assert default_artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "artifacts").as_uri()
    monkeypatch.chdir(tmp_path)
    assert default_artifact_location("sqlite:///rel/mlflow.db") == (tmp_path / "rel" / "artifacts").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000") is None


# --- registration against a SQLite MLflow store ----------------------------------------------


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An initialised, empty SQLite store: creating one runs MLflow's migrations (seconds), copying does not."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path, empty_store):
    """A fresh SQLite tracking store; returns (tracking URI, client, seed file sha)."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    seed = tmp_path / "scored.jsonl"
    seed.write_text('{"id": "1", "category": "poem", "instruction": "시", "output": "봄"}\n', encoding="utf-8")
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri), file_sha256(seed)


def register_one(root: Path, uri: str, per_category: dict[str, float], *, run: str, arm: str = "self_guided",
                 base_model: str = "tiny", gate: PromotionGate = PromotionGate()):
    model_dir = make_model_dir(root / run, base_model=base_model, arm=arm)
    summary = make_summary(base_model, arm, per_category)
    return register_candidates([Candidate(model_dir, summary)], tracking_uri=uri, pipeline_run=run,
                               scored_data_sha256="0" * 64, gate=gate)


def test_register_logs_runs_versions_metrics_and_aliases(tmp_path, store, two_arms):
    uri, client, sha = store
    models, summaries = two_arms
    models.append(make_model_dir(tmp_path / "m", base_model=HUB_BASE, arm="self_guided"))
    hub_summary = make_summary(HUB_BASE, "self_guided", category_scores(5.5), judge_model="gpt-4o",
                               usage={"prompt_tokens": 1234, "cost_usd": 0.5})
    summaries.append(write_summary(tmp_path / "s" / "hub.json", hub_summary))

    report = register_candidates(load_candidates(models, [summaries[1], summaries[0], summaries[2]]),
                                 tracking_uri=uri, pipeline_run="run-1", scored_data_sha256=sha)

    assert [(v.label, v.version) for v in report.versions] == [
        ("tiny/unscored", "1"), ("tiny/self_guided", "2"), (f"{HUB_BASE}/self_guided", "3")]
    assert report.decision.promote and report.champion_before is None and report.champion_after == "2"
    assert alias(client, CHALLENGER) == "2"
    assert alias(client, CHAMPION) == "2"

    hub = client.get_model_version(NAME, "3")
    assert {k: hub.tags[k] for k in ("base_model", "arm", "train_data_sha256", "pipeline_run", "judge_overall",
                                     "base_revision", "strategy")} == {
        "base_model": HUB_BASE, "arm": "self_guided", "train_data_sha256": "ab" * 32, "pipeline_run": "run-1",
        "judge_overall": "5.5000", "base_revision": "0123abcd", "strategy": "condition"}
    run = client.get_run(hub.run_id)
    assert run.info.run_name == f"{HUB_BASE}/self_guided"
    assert client.get_experiment(run.info.experiment_id).name == "selfguided"
    assert run.data.tags["scored_data_sha256"] == sha and run.data.tags["row_kind"] == "trained"
    assert run.data.params["base_model"] == HUB_BASE
    assert run.data.params["method"] == "lora"
    assert run.data.params["judge_model"] == "gpt-4o"
    assert run.data.params["prompt_version"] == "vicuna-single-v1"
    assert run.data.params["finetune.lora.r"] == "4"
    assert run.data.params["finetune.learning_rate"] == "0.0002"
    assert run.data.params["train.device"] == "cpu"
    metrics = run.data.metrics
    assert metrics["train/train_loss"] == 2.5 and metrics["train/train_tokens"] == 1200
    assert metrics["judge_usage/prompt_tokens"] == 1234 and metrics["judge_usage/cost_usd"] == 0.5
    assert metrics["judge_run/n_judged"] == 36 and metrics["judge_run/n_failed"] == 0
    expected = {f"judge/{cat}/{c}" for cat in CATEGORIES for c in (*CRITERIA, "overall")} | {"judge/overall"}
    assert {k for k in metrics if k.startswith("judge/")} == expected
    assert all(metrics[k] == hub_summary["metrics"][k] for k in expected)
    # MLflow 3: the same metrics are attached to the LoggedModel behind the version.
    logged = client.get_logged_model(hub.source.removeprefix("models:/"))
    assert {m.key for m in logged.metrics} >= expected


def test_logged_files_reference_the_hub_base_and_bundle_only_the_tiny_base(tmp_path, store, two_arms):
    uri, client, sha = store
    models, summaries = two_arms
    models.append(make_model_dir(tmp_path / "m", base_model=HUB_BASE, arm="self_guided"))
    summaries.append(write_summary(tmp_path / "s" / "hub.json",
                                   make_summary(HUB_BASE, "self_guided", category_scores(5.5))))
    register_candidates(load_candidates(models, [summaries[1], summaries[0], summaries[2]]), tracking_uri=uri, pipeline_run="r",
                        scored_data_sha256=sha)

    def files(version: str) -> tuple[Path, set[str]]:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", tracking_uri=uri,
                                                         dst_path=str(tmp_path / f"dl{version}")))
        return local, {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}

    hub_dir, hub_files = files("3")
    assert "artifacts/model_dir/adapter/adapter_model.safetensors" in hub_files
    assert "artifacts/model_dir/tokenizer/tokenizer.json" in hub_files
    assert "artifacts/model_dir/selfguided.json" in hub_files
    assert not any(f.startswith("artifacts/model_dir/base/") for f in hub_files), "hub base weights must not be copied"
    assert not any("checkpoints" in f for f in hub_files), "training checkpoints must not be logged"
    # The code a version needs to load travels with it (selfguided need not be installed).
    assert {"code/selfguided/components/trained_model.py", "code/selfguided/components/pyfunc_model.py",
            "code/selfguided/components/prompting.py"} <= hub_files
    assert (hub_dir / "artifacts/model_dir/adapter/adapter_model.safetensors").read_bytes() == (
        models[2] / "adapter" / "adapter_model.safetensors").read_bytes()
    meta = mlflow.models.Model.load(hub_dir / "MLmodel").metadata
    assert meta["base_model_ref"] == HUB_BASE and meta["base_weights"] == "referenced"

    tiny_dir, tiny_files = files("1")
    assert "artifacts/model_dir/base/model.safetensors" in tiny_files
    assert mlflow.models.Model.load(tiny_dir / "MLmodel").metadata["base_weights"] == "bundled"
    # With a SQLite store, artifacts live beside the database file, not in the working directory.
    assert (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").is_dir()


def test_champion_moves_only_through_the_gate_and_rolls_back(tmp_path, store):
    uri, client, _ = store
    first = register_one(tmp_path, uri, category_scores(6.0), run="run-1")
    assert first.decision.promote and first.champion_after == "1"

    worse = register_one(tmp_path, uri, category_scores(5.0), run="run-2")
    assert not worse.decision.promote
    assert worse.champion_before == "1" and worse.champion_after == "1"
    assert alias(client, CHAMPION) == "1"
    assert alias(client, CHALLENGER) == "2"
    assert client.get_model_version(NAME, "2").tags["promotion"].startswith("rejected: overall 5.000 vs champion 6.000")
    assert worse.decision_line().startswith("kept champion v1; challenger v2 (tiny/self_guided) not promoted: overall")

    lopsided = register_one(tmp_path, uri, category_scores(7.0, {"poem": 5.0}), run="run-3")
    assert not lopsided.decision.promote
    assert any(r.startswith("category poem is worse by 1.000") for r in lopsided.decision.reasons)
    assert alias(client, CHAMPION) == "1"

    better = register_one(tmp_path, uri, category_scores(6.5), run="run-4")
    assert better.decision.promote and better.champion_before == "1"
    assert better.decision_line() == "promoted korean-writing-assistant v4 (tiny/self_guided) to champion, replacing v1"
    assert alias(client, CHAMPION) == "4"
    assert client.get_model_version_by_alias(NAME, CHAMPION).tags[PREVIOUS_CHAMPION_TAG] == "1"

    assert rollback_champion(uri, NAME) == "1"
    assert alias(client, CHAMPION) == "1"
    assert client.get_model_version(NAME, "4").tags["rolled_back"] == "champion moved to v1"
    with pytest.raises(RegistryError, match="champion v1 replaced no earlier champion"):
        rollback_champion(uri, NAME)
    assert rollback_champion(uri, NAME, version=4) == "4"
    assert alias(client, CHAMPION) == "4"


def test_first_candidate_with_an_unscored_category_is_registered_but_not_champion(tmp_path, store):
    uri, client, _ = store
    scores = category_scores(8.0, {"cover_letter": math.nan})
    report = register_one(tmp_path, uri, scores, run="run-1")
    assert not report.decision.promote and report.champion_after is None
    assert alias(client, CHALLENGER) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(NAME, CHAMPION)
    assert report.decision_line().startswith("no champion; challenger v1 (tiny/self_guided) not promoted: "
                                             "category cover_letter is not scored")
    with pytest.raises(RegistryError, match="has no champion to roll back"):
        rollback_champion(uri, NAME)


def test_report_markdown_has_the_score_table_and_the_reasons(tmp_path, store, two_arms):
    uri, _, sha = store
    register_one(tmp_path, uri, category_scores(5.5), run="run-0")
    models, summaries = two_arms
    report = register_candidates(load_candidates(models, summaries[::-1]), tracking_uri=uri, pipeline_run="run-1",
                                 scored_data_sha256=sha)
    text = report.to_markdown()
    assert "| model | cover_letter | poem | blog | novel | scenario | news | overall |" in text
    assert "| tiny/unscored (v2) | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 |" in text
    assert "| tiny/self_guided (v3) | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 |" in text
    assert "| champion before (v1) | 5.50 | 5.50 | 5.50 | 5.50 | 5.50 | 5.50 | 5.50 |" in text
    assert "| tiny/self_guided | poem | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 |" in text
    assert "## Promotion: promoted to `champion`" in text
    assert "- overall 6.000 vs champion 5.500 (+0.500, more than the required +0.000)" in text
    assert "`champion` is now v3." in text


# --- loading a registered version back -------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full"])
def test_registered_model_loads_back_and_generates_like_the_trained_model(tmp_path, store, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    uri, _, sha = store
    model_dir = make_model_dir(tmp_path / "m", arm="self_guided", method=method)
    register_candidates([Candidate(model_dir, make_summary("tiny", "self_guided", category_scores(6.0)))],
                        tracking_uri=uri, pipeline_run="run-1", scored_data_sha256=sha)

    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    questions = ["봄을 주제로 짧은 시를 써 주세요.", "뉴스 기사를 작성해 주세요."]
    answers = served.predict(questions, params={"max_new_tokens": 6})
    assert isinstance(answers, list) and len(answers) == 2

    # The same answers straight from the trained directory, without MLflow in between.
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    if method == "lora":
        base = AutoModelForCausalLM.from_pretrained(model_dir / "base")
        reference = PeftModel.from_pretrained(base, model_dir / "adapter").merge_and_unload().eval()
    else:
        reference = AutoModelForCausalLM.from_pretrained(model_dir / "model").eval()
    expected = []
    for question in questions:
        ids = tokenizer(inference_prompt(question, "self_guided", "condition"), return_tensors="pt")
        out = reference.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert answers == expected

    prompt = tokenizer(inference_prompt(questions[0], "self_guided", "condition"), return_tensors="pt")
    with torch.no_grad():
        served_logits = served.unwrap_python_model().model(**prompt).logits
        assert torch.allclose(served_logits, reference(**prompt).logits, atol=1e-5)
        if method == "lora":  # the adapter really is applied: the bare base answers differently
            bare = AutoModelForCausalLM.from_pretrained(model_dir / "base").eval()
            assert not torch.allclose(served_logits, bare(**prompt).logits, atol=1e-3)


# --- the KFP component under kfp.local -------------------------------------------------------


@pytest.mark.slow
def test_register_component_runs_under_kfp_local(tmp_path, two_arms):
    from typing import List

    from kfp import dsl, local
    from kfp.dsl import Artifact, Dataset, Model, Output

    from selfguided.components.register import register

    models, summaries = two_arms
    seed = tmp_path / "scored.jsonl"
    seed.write_text('{"id": "1"}\n', encoding="utf-8")

    @dsl.component
    def bring_model(src: str, model: Output[Model]):
        import shutil

        shutil.copytree(src, model.path)

    @dsl.component
    def bring_file(src: str, out: Output[Artifact]):
        import shutil

        shutil.copyfile(src, out.path)

    @dsl.component
    def bring_dataset(src: str, out: Output[Dataset]):
        import shutil

        shutil.copyfile(src, out.path)

    pairs = [{"model": str(m), "summary": str(s)} for m, s in zip(models, summaries[::-1])]
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    @dsl.pipeline
    def register_only(pairs: List[dict], seed_file: str, tracking_uri: str) -> str:
        data = bring_dataset(src=seed_file)
        with dsl.ParallelFor(pairs) as pair:
            model = bring_model(src=pair.model)
            summary = bring_file(src=pair.summary)
        return register(
            models=dsl.Collected(model.outputs["model"]),
            judge_summaries=dsl.Collected(summary.outputs["out"]),
            scored_data=data.outputs["out"],
            registered_model_name=NAME,
            tracking_uri=tracking_uri,
            experiment_name="kfp-local",
            pipeline_run="kfp-local-run",
            promotion_tolerance=0.25,
        ).outputs["Output"]

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    result = register_only(pairs=pairs, seed_file=str(seed), tracking_uri=uri)
    output = json.loads(result.output)
    assert output["decision"] == "promoted korean-writing-assistant v2 (tiny/self_guided) to champion"
    assert output["promoted"] and [v["label"] for v in output["versions"]] == ["tiny/unscored", "tiny/self_guided"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(NAME, CHAMPION)
    assert champion.tags["pipeline_run"] == "kfp-local-run"
    assert client.get_run(champion.run_id).data.tags["scored_data_sha256"] == file_sha256(seed)
    reports = list((tmp_path / "root").rglob("report"))
    assert len(reports) == 1 and "## Promotion: promoted to `champion`" in reports[0].read_text(encoding="utf-8")


def test_scores_of_different_judges_are_not_compared():
    scores = {"judge/overall": 9.0, **{f"judge/{c}/overall": 9.0 for c in CATEGORIES}}
    champion = {"judge/overall": 5.0, **{f"judge/{c}/overall": 5.0 for c in CATEGORIES}}
    decision = evaluate_gate(scores, champion, PromotionGate(), challenger_judge="offline-heuristic/heuristic-v1",
                             champion_judge="gpt-4o/judge-single-v1")
    assert not decision.promote
    assert any("not comparable" in r for r in decision.reasons)
    same = evaluate_gate(scores, champion, PromotionGate(), challenger_judge="gpt-4o/judge-single-v1",
                         champion_judge="gpt-4o/judge-single-v1")
    assert same.promote
