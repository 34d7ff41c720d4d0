"""Register step: the promotion gate, candidate matching, registration against a real SQLite
MLflow store (versions, tags, metrics, aliases, promotion and rollback), and loading a
registered model back and generating with it."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
import registry_fixtures
from registry_fixtures import (
    category_scores,
    empty_store,  # noqa: F401  (fixture)
    make_judgments,
    make_model_dir,
    make_summary,
    write_row,
    write_summary,
)

from selfguided.components.data.categories import CATEGORIES
from selfguided.components.data.hashing import file_sha256
from selfguided.components.data.jsonl import DataError
from selfguided.components.evaluation.compare_result import CompareResult
from selfguided.components.evaluation.decision import PromotionGate
from selfguided.components.steps.compare import run_compare_step
from selfguided.components.model.prompting import CRITERIA, inference_prompt
from selfguided.components.registry.names import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION_TAG, RegistryError
from selfguided.components.registry.aliases import rollback_champion
from selfguided.components.registry.promotion import register_candidates
from selfguided.components.evaluation.rows import write_evidence
from selfguided.components.registry.runs import Candidate, default_artifact_location, load_candidates, load_evidence

NAME = "korean-writing-assistant"
HUB_BASE = "EleutherAI/polyglot-ko-1.3b"


def alias(client: MlflowClient, name: str) -> str:
    """The version an alias points at (the SQLite store returns ints, the REST API strings)."""
    return str(client.get_model_version_by_alias(NAME, name).version)


def decided(challenger: Candidate, promote: bool, reason: str = "the compare step said so",
            champion_version: str | None = None, metrics: dict | None = None) -> CompareResult:
    """A compare step result that names `challenger` and carries a decision (the gate itself is
    tested in test_compare_step.py; here the registry must follow what it decided)."""
    manifest = challenger.manifest
    return registry_fixtures.decided(promote, (reason,), base_model=manifest.base_model, arm=manifest.arm,
                                     champion_version=champion_version, metrics=metrics)


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
    assert [c.summary.arm for c in candidates] == ["unscored", "self_guided"]
    assert [c.model_dir for c in candidates] == models


def test_load_candidates_refuses_a_pair_that_is_not_what_it_claims(two_arms):
    models, summaries = two_arms
    with pytest.raises(DataError, match=r"sg.json: judge summary of 'tiny/self_guided' paired with the model in "
                                        r".*-unscored-lora \(tiny/unscored, replicate 0\)"):
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


@pytest.fixture
def store(tmp_path, empty_store):
    """A fresh SQLite tracking store; returns (tracking URI, client, seed file sha)."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    seed = tmp_path / "scored.jsonl"
    seed.write_text('{"id": "1", "category": "poem", "instruction": "시", "output": "봄"}\n', encoding="utf-8")
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri), file_sha256(seed)


def register_one(root: Path, uri: str, per_category: dict[str, float], *, run: str, promote: bool,
                 arm: str = "self_guided", base_model: str = "tiny", champion_version: str | None = None):
    model_dir = make_model_dir(root / run, base_model=base_model, arm=arm)
    candidate = Candidate(model_dir, make_summary(base_model, arm, per_category))
    return register_candidates([candidate], evaluation=decided(candidate, promote, champion_version=champion_version),
                               tracking_uri=uri, pipeline_run=run, scored_data_sha256="0" * 64)


def test_register_logs_runs_versions_metrics_and_aliases(tmp_path, store, two_arms):
    uri, client, sha = store
    models, summaries = two_arms
    models.append(make_model_dir(tmp_path / "m", base_model=HUB_BASE, arm="self_guided"))
    hub_summary = make_summary(HUB_BASE, "self_guided", category_scores(5.5), judge_model="gpt-4o",
                               usage={"prompt_tokens": 1234, "cost_usd": 0.5})
    summaries.append(write_summary(tmp_path / "s" / "hub.json", hub_summary))

    candidates = load_candidates(models, [summaries[1], summaries[0], summaries[2]])
    report = register_candidates(candidates, evaluation=decided(candidates[1], True), tracking_uri=uri,
                                 pipeline_run="run-1", scored_data_sha256=sha)

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
    assert run.data.params["judge_prompt"] == "judge-single-v1"
    assert run.data.tags["judge"] == "gpt-4o/judge-single-v1" and run.data.tags["replicate"] == "0"
    assert run.data.params["finetune.lora.r"] == "4"
    assert run.data.params["finetune.learning_rate"] == "0.0002"
    assert run.data.params["train.device"] == "cpu"
    metrics = run.data.metrics
    assert metrics["train/train_loss"] == 2.5 and metrics["train/train_tokens"] == 1200
    assert metrics["judge_usage/prompt_tokens"] == 1234 and metrics["judge_usage/cost_usd"] == 0.5
    assert metrics["judge_run/n_judged"] == 36 and metrics["judge_run/n_failed"] == 0
    expected = {f"judge/{cat}/{c}" for cat in CATEGORIES for c in (*CRITERIA, "overall")} | {"judge/overall"}
    assert {k for k in metrics if k.startswith("judge/")} == expected
    assert all(metrics[k] == hub_summary.metrics[k] for k in expected)
    # MLflow 3: the same metrics are attached to the LoggedModel behind the version.
    logged = client.get_logged_model(hub.source.removeprefix("models:/"))
    assert {m.key for m in logged.metrics} >= expected


def test_logged_files_reference_the_hub_base_and_bundle_only_the_tiny_base(tmp_path, store, two_arms):
    uri, client, sha = store
    models, summaries = two_arms
    models.append(make_model_dir(tmp_path / "m", base_model=HUB_BASE, arm="self_guided"))
    summaries.append(write_summary(tmp_path / "s" / "hub.json",
                                   make_summary(HUB_BASE, "self_guided", category_scores(5.5))))
    candidates = load_candidates(models, [summaries[1], summaries[0], summaries[2]])
    register_candidates(candidates, evaluation=decided(candidates[2], False), tracking_uri=uri, pipeline_run="r",
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
    assert {"code/selfguided/components/model/artifact.py", "code/selfguided/components/model/pyfunc.py",
            "code/selfguided/components/model/prompting.py"} <= hub_files
    assert (hub_dir / "artifacts/model_dir/adapter/adapter_model.safetensors").read_bytes() == (
        models[2] / "adapter" / "adapter_model.safetensors").read_bytes()
    logged = mlflow.models.Model.load(hub_dir / "MLmodel")
    meta = logged.metadata
    assert meta["base_model_ref"] == HUB_BASE and meta["base_weights"] == "referenced"
    # Models from code: the version keeps the model file MLflow runs at load, no pickled instance.
    assert logged.flavors["python_function"].get("model_code_path", "").endswith("pyfunc_code.py")
    assert "python_model.pkl" not in hub_files

    tiny_dir, tiny_files = files("1")
    assert "artifacts/model_dir/base/model.safetensors" in tiny_files
    assert mlflow.models.Model.load(tiny_dir / "MLmodel").metadata["base_weights"] == "bundled"
    # With a SQLite store, artifacts live beside the database file, not in the working directory.
    assert (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").is_dir()


def test_champion_moves_only_as_decided_and_rolls_back(tmp_path, store):
    uri, client, _ = store
    first = register_one(tmp_path, uri, category_scores(6.0), run="run-1", promote=True)
    assert first.decision.promote and first.champion_after == "1"
    assert client.get_model_version(NAME, "1").tags["merged_weights"] == first.champion_storage_uri
    merged = Path(mlflow.artifacts.download_artifacts(first.champion_storage_uri, tracking_uri=uri,
                                                      dst_path=str(tmp_path / "merged")))
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()

    kept = register_one(tmp_path, uri, category_scores(5.0), run="run-2", promote=False, champion_version="1")
    assert not kept.decision.promote
    assert kept.champion_before == "1" and kept.champion_after == "1" and kept.champion_storage_uri == ""
    assert alias(client, CHAMPION) == "1"
    assert alias(client, CHALLENGER) == "2"
    assert client.get_model_version(NAME, "2").tags["promotion"] == "rejected: the compare step said so"
    assert kept.decision_line() == ("kept champion v1; challenger v2 (tiny/self_guided) not promoted: "
                                    "the compare step said so")

    better = register_one(tmp_path, uri, category_scores(6.5), run="run-3", promote=True, champion_version="1")
    assert better.decision.promote and better.champion_before == "1"
    assert better.decision_line() == "promoted korean-writing-assistant v3 (tiny/self_guided) to champion, replacing v1"
    assert alias(client, CHAMPION) == "3"
    assert client.get_model_version_by_alias(NAME, CHAMPION).tags[PREVIOUS_CHAMPION_TAG] == "1"

    assert rollback_champion(uri, NAME) == "1"
    assert alias(client, CHAMPION) == "1"
    assert client.get_model_version(NAME, "3").tags["rolled_back"] == "champion moved to v1"
    with pytest.raises(RegistryError, match="champion v1 replaced no earlier champion"):
        rollback_champion(uri, NAME)
    assert rollback_champion(uri, NAME, version=3) == "3"
    assert alias(client, CHAMPION) == "3"


def test_a_promotion_decided_against_a_champion_that_has_moved_since_is_refused(tmp_path, store):
    uri, client, _ = store
    register_one(tmp_path, uri, category_scores(6.0), run="run-1", promote=True)
    register_one(tmp_path, uri, category_scores(6.5), run="run-2", promote=True, champion_version="1")
    late = register_one(tmp_path, uri, category_scores(7.0), run="run-3", promote=True, champion_version="1")
    assert not late.decision.promote and alias(client, CHAMPION) == "2"
    assert late.decision.reasons[0].startswith("the champion moved to v2 while this run compared the challenger with v1")


def test_every_row_of_a_run_is_logged_under_one_parent_with_its_evidence(tmp_path, store):
    """The whole flow on constructed judgments: compare decides, register logs what it decided."""
    uri, client, sha = store
    rows = tmp_path / "rows"
    trained = {arm: write_row(rows, arm, make_judgments(category_scores(score), spread=0.5, seed=i), arm=arm)
               for i, (arm, score) in enumerate([("unscored", 5.0), ("self_guided", 6.5), ("control", 5.2)])}
    base = write_row(rows, "base", make_judgments(category_scores(2.0), seed=7), row_kind="base")
    champion = write_row(rows, "champion", [], row_kind="champion", base_model="", note="no champion yet")
    run_compare_step([p for p, _ in trained.values()] + [base[0], champion[0]],
                     [j for _, j in trained.values()] + [base[1], champion[1]], str(tmp_path / "result.json"),
                     str(tmp_path / "r.md"), str(tmp_path / "r.html"), gate=PromotionGate())
    evaluation = CompareResult.read(tmp_path / "result.json")  # what the register step reads
    assert evaluation.challenger.arm == "self_guided" and evaluation.decision.promote
    assert evaluation.notes == ["champion: no champion yet"]
    models = [make_model_dir(tmp_path / "m", arm=arm) for arm in trained]
    (tmp_path / "train").mkdir()
    for arm in trained:
        (tmp_path / "train" / f"{arm}.jsonl").write_text('{"id": "1", "prompt": "p", "response": "r"}\n', "utf-8")
    # What the compare step hands on (write_evidence) is what the register step reads back.
    evidence = write_evidence(tmp_path / "evidence", [p for p, _ in trained.values()] + [base[0], champion[0]],
                              [j for _, j in trained.values()] + [base[1], champion[1]], trained=len(trained))
    candidates, references = load_evidence(evidence, models, train_dir=tmp_path / "train")
    assert [c.summary.row for c in candidates] == [f"tiny/{arm}" for arm in trained]
    assert [r.summary.row_kind for r in references] == ["base", "champion"]
    assert [len(c.row.judgments) for c in candidates] == [48, 48, 48] and references[1].row is None
    (tmp_path / "report.md").write_text("# Evaluation with uncertainty\n", encoding="utf-8")
    (tmp_path / "page.html").write_text("<html></html>", encoding="utf-8")
    scored = tmp_path / "scored.jsonl"
    scored.write_text('{"id": "1", "category": "poem", "instruction": "시", "output": "봄", "score": 5}\n', "utf-8")
    report = register_candidates(
        candidates, evaluation=evaluation, tracking_uri=uri, pipeline_run="run-1", scored_data_sha256=sha,
        references=references, scored_data=scored,
        reports={"report.md": tmp_path / "report.md", "report.html": tmp_path / "page.html"})
    assert report.decision.promote and report.report_markdown.startswith("# Evaluation with uncertainty")

    experiment = client.get_experiment_by_name("selfguided").experiment_id
    found = client.search_runs([experiment], "tags.pipeline_run = 'run-1'")
    runs = {r.data.tags.get("row", "(parent)"): r for r in found}
    assert set(runs) == {"(parent)", "tiny/unscored", "tiny/self_guided", "tiny/control", "base/tiny", "champion"}
    parent = runs.pop("(parent)")
    assert parent.info.run_id == report.parent_run_id and parent.data.tags["row_kind"] == "pipeline"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"comparison.json", "report.md",
                                                                            "report.html"}
    logged = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/comparison.json")
    assert logged == json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))  # one file form
    assert [i.dataset.name for i in parent.inputs.dataset_inputs] == ["scored.jsonl"]
    for run in runs.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"row_kind", "base_model", "arm", "judge", "pipeline_run"} <= set(run.data.tags)
    guided = runs["tiny/self_guided"]
    m = guided.data.metrics
    assert m["judge/overall_ci_low"] < m["judge/overall"] < m["judge/overall_ci_high"]
    assert m["judge/poem/overall_ci_low"] <= m["judge/poem/overall"] <= m["judge/poem/overall_ci_high"]
    assert m["delta/overall"] == pytest.approx(1.5, abs=0.5) and m["delta/overall_ci_low"] > 0
    assert "judgments.jsonl" in {a.path.split("/")[-1] for a in client.list_artifacts(guided.info.run_id)}
    assert [i.dataset.name for i in guided.inputs.dataset_inputs] == ["self_guided.jsonl"]
    assert [h.step for h in client.get_metric_history(guided.info.run_id, "train/loss")] == [1]
    assert runs["base/tiny"].data.metrics["judge/overall"] == pytest.approx(2.0)
    assert runs["champion"].data.tags["note"] == "no champion yet" and not runs["champion"].data.metrics


def test_report_markdown_has_the_score_table_and_the_reasons(tmp_path, store, two_arms):
    uri, _, sha = store
    models, summaries = two_arms
    candidates = load_candidates(models, summaries[::-1])
    report = register_candidates(candidates, evaluation=decided(candidates[1], True, "overall paired difference +1.00"),
                                 tracking_uri=uri, pipeline_run="run-1", scored_data_sha256=sha)
    text = report.to_markdown()
    assert "| model | cover_letter | poem | blog | novel | scenario | news | overall |" in text
    assert "| tiny/unscored (v1) | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 | 5.00 |" in text
    assert "| tiny/self_guided (v2) | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 |" in text
    assert "| tiny/self_guided | poem | 6.00 | 6.00 | 6.00 | 6.00 | 6.00 |" in text
    assert "## Promotion: promoted to `champion`" in text
    assert "- overall paired difference +1.00" in text
    assert "`champion` is now v2." in text


# --- loading a registered version back -------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full"])
def test_registered_model_loads_back_and_generates_like_the_trained_model(tmp_path, store, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    uri, _, sha = store
    model_dir = make_model_dir(tmp_path / "m", arm="self_guided", method=method)
    candidate = Candidate(model_dir, make_summary("tiny", "self_guided", category_scores(6.0)))
    register_candidates([candidate], evaluation=decided(candidate, True), tracking_uri=uri, pipeline_run="run-1",
                        scored_data_sha256=sha)

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
        # stored in bf16 (artifact.save_trained); served on a CPU in fp32: the same values, upcast
        reference = AutoModelForCausalLM.from_pretrained(model_dir / "model", dtype=torch.float32).eval()
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
