"""`selfguided models | promote | rollback` against a real SQLite MLflow store."""

import pytest
from mlflow import MlflowClient
from registry_fixtures import category_scores, decided, make_judgments, make_model_dir, relocated_copy, write_row

from selfguided.components.evaluation.judge_summary import load_row
from selfguided.components.registry.promotion import register_candidates
from selfguided.components.registry.runs import load_candidates
from selfguided.pipelines.cli.main import main

NAME = "korean-writing-assistant"


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory):
    """v1 (champion, scores 5.0), v2 (clearly better, 6.5), v3 (the same judgments as v1), registered
    once for the module: each test gets a copy (`registry`) to promote and roll back in."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    rows = root / "rows"
    judged = {
        "1": make_judgments(category_scores(5.0), spread=0.6, seed=1),
        "2": make_judgments(category_scores(6.5), spread=0.6, seed=2),
    }
    judged["3"] = judged["1"]
    for number, judgments in judged.items():
        summary_path, judgments_path = write_row(rows, f"v{number}", judgments, arm="self_guided")
        model_dir = make_model_dir(root / f"m{number}", arm="self_guided")
        candidates = load_candidates([model_dir], [summary_path], [judgments_path])
        evaluation = decided(number == "1", ("first",), champion_version=None if number == "1" else "1")
        register_candidates(candidates, evaluation=evaluation, tracking_uri=uri, pipeline_run=f"run-{number}",
                            scored_data_sha256="0" * 64)
    return root


@pytest.fixture
def registry(registry_template, tmp_path):
    """This test's own copy of the module's registry (`registry_template`)."""
    root = relocated_copy(registry_template, tmp_path / "registry")
    uri = f"sqlite:///{root}/mlflow.db"
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_models_lists_versions_with_aliases_scores_and_reasons(registry, capsys):
    uri, _ = registry
    assert main(["models", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    versions = [line for line in lines[1:] if line.split()[0].isdigit()]
    assert versions[0].split()[0] == "3" and versions[-1].split()[0] == "1"  # newest first
    assert "champion" in versions[-1] and "tiny/self_guided" in versions[-1]
    # the gate's record follows its version, whole, wrapped between words
    assert " ".join(out.split(versions[-1], 1)[1].split()).startswith("promoted: first")


def test_promote_goes_through_the_paired_gate_and_records_who_and_why(registry, capsys):
    uri, client = registry
    assert main(["promote", "3", "--tracking-uri", uri, "--by", "alice"]) == 1  # identical to the champion
    out = capsys.readouterr().out
    assert out.startswith("not promoted: v3") and "overall paired difference +0.00" in out
    assert champion(client) == "1"
    assert client.get_model_version(NAME, "3").tags["promotion"].startswith("rejected by alice")

    assert main(["promote", "2", "--tracking-uri", uri, "--by", "alice", "--reason", "weekly review"]) == 0
    assert "promoted: v2" in capsys.readouterr().out
    assert champion(client) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promotion"].startswith("promoted by alice (weekly review): ") and tags["previous_champion"] == "1"
    assert tags["merged_weights"].endswith("/merged")  # what the InferenceService is pointed at


def test_force_skips_the_gate_and_rollback_walks_back(registry, capsys):
    uri, client = registry
    assert main(["promote", "3", "--force", "--tracking-uri", uri, "--by", "bob"]) == 0
    assert champion(client) == "3"
    assert client.get_model_version(NAME, "3").tags["promotion"] == "promoted by bob: forced: the gate was not consulted"
    assert main(["rollback", "--tracking-uri", uri, "--by", "bob", "--reason", "bad answers"]) == 0
    assert champion(client) == "1" and "now v1" in capsys.readouterr().out
    assert client.get_model_version(NAME, "3").tags["rolled_back"] == "champion moved to v1 by bob: bad answers"
    assert main(["rollback", "--tracking-uri", uri]) == 2  # v1 replaced nothing
    assert "replaced no earlier champion" in capsys.readouterr().err


def test_registry_commands_say_when_there_is_no_registry(tmp_path, capsys):
    assert main(["models", "--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "empty.db").exists()
    MlflowClient(f"sqlite:///{tmp_path}/other.db").create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    assert main(["models", "--tracking-uri", f"sqlite:///{tmp_path}/other.db"]) == 2
    assert "no registered model 'korean-writing-assistant'" in capsys.readouterr().err


@pytest.mark.parametrize("trained, promoted", [(4.0, False), (7.0, True)])
def test_a_first_champion_by_hand_must_beat_the_base_row_of_its_run(tmp_path, capsys, trained, promoted):
    """No champion yet: `selfguided promote` pairs the version with the untuned base row judged in
    the same pipeline run, by the gate's rule; a version worse than its base never becomes champion."""
    from selfguided.components.registry.runs import ReferenceRow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rows = tmp_path / "rows"
    summary, judgments = write_row(rows, "t", make_judgments(category_scores(trained), spread=0.6, seed=1),
                                   arm="self_guided")
    base_summary, base_judgments = write_row(rows, "b", make_judgments(category_scores(5.5), spread=0.6, seed=2),
                                             row_kind="base")
    candidates = load_candidates([make_model_dir(tmp_path / "m", arm="self_guided")], [summary], [judgments])
    register_candidates(candidates, evaluation=decided(False, ("held back",)), tracking_uri=uri, pipeline_run="run-1",
                        scored_data_sha256="0" * 64, references=[ReferenceRow(*load_row(base_summary, base_judgments))])
    code = main(["promote", "1", "--tracking-uri", uri, "--by", "alice"])
    out = capsys.readouterr().out
    assert (code == 0) == promoted, out
    assert "base" in out
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert (str(client.get_registered_model(NAME).aliases.get("champion")) == "1") == promoted
