"""Versioned seed data: content-addressed versions, stored in a folder or S3 (moto), logged to MLflow
with their lineage, compared with `selfguided data diff`, and named by every model version."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow import MlflowClient
from registry_fixtures import empty_store, make_model_dir, make_summary  # noqa: F401  (fixture)
from servers import s3_server  # noqa: F401  (fixture)

from selfguided.components.data.jsonl import DataError
from selfguided.components.data.seed_versions import SeedManifest, SeedStore, diff_markdown, diff_versions
from selfguided.components.registry.seed_lineage import SEED_VERSION_TAG, log_seed_version, seed_lineage
from selfguided.pipelines.cli.main import main


def _records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "category": ("blog", "poem", "news")[i % 3], "instruction": f"글을 써 주세요 {i}",
             "input": "", "output": "좋은 글입니다. " * (1 + i)} for i in range(start, start + n)]


def test_a_version_is_its_content():
    records = _records(6)
    version = SeedManifest.of(records).version
    assert SeedManifest.of(list(reversed(records))).version == version  # order does not matter
    assert SeedManifest.of([{**r, "score": 9, "judge": {}} for r in records]).version == version  # scores are not content
    assert SeedManifest.of([{**records[0], "output": records[0]["output"] + "."}, *records[1:]]).version != version
    assert SeedManifest.of(records + records[:1]).version != version  # a duplicate is a record too
    assert SeedManifest.of([{**records[0], "id": "other"}, *records[1:]]).version == version  # the id is not content


def test_the_diff_names_added_removed_and_changed_records_per_category():
    a = _records(6)
    b = a[1:] + _records(2, start=6)
    b[0] = {**b[0], "output": "고친 글"}                       # r1 (poem): same id, new content
    b.append({"category": "news", "instruction": "무제", "output": "본문"})  # no id: can only be added
    diff = diff_versions(SeedManifest.of(a), SeedManifest.of(b))
    assert [e["id"] for e in diff.added] == ["r6", "r7", ""] and [e["id"] for e in diff.removed] == ["r0"]
    assert [(x["id"], y["id"]) for x, y in diff.changed] == [("r1", "r1")] and diff.unchanged == 4
    assert diff.by_category() == {"blog": {"added": 1, "removed": 1, "changed": 0},
                                  "news": {"added": 1, "removed": 0, "changed": 0},
                                  "poem": {"added": 1, "removed": 0, "changed": 1}}
    text = diff_markdown(diff)
    assert "3 added, 1 removed, 1 changed, 4 unchanged" in text and "| poem | 1 | 0 | 1 |" in text
    assert "~ r1 [poem]" in text and "- r0 [blog]" in text
    same = diff_versions(SeedManifest.of(a), SeedManifest.of(a + a[:1]))  # one more copy of a record
    assert len(same.added) == 1 and same.unchanged == 6 and not same.changed


def test_a_local_store_keeps_each_version_once(tmp_path):
    store = SeedStore(tmp_path / "store")
    first, new = store.save(_records(4), source={"teacher": "gpt-4o"})
    assert new and store.records(first.version) == _records(4)
    again, new = store.save(list(reversed(_records(4))), source={"teacher": "other"})
    assert not new and again.source == {"teacher": "gpt-4o"}  # its first lineage is kept
    grown, new = store.save(_records(6), parent=first.version)
    assert new and store.manifest(grown.version).parent == first.version
    assert store.manifest(grown.version).by_category() == {"blog": 2, "news": 2, "poem": 2}
    with pytest.raises(DataError, match="the parent"):
        store.save(_records(1), parent="seed-0123456789abcdef")
    with pytest.raises(DataError, match="is not in"):
        store.records("seed-0123456789abcdef")


def test_an_s3_store_through_moto(s3_server, monkeypatch):
    client = s3_server.client()
    client.create_bucket(Bucket="seeds")
    store = SeedStore("s3://seeds/selfguided/seed", client=client)
    manifest, new = store.save(_records(3))
    assert new and store.records(manifest.version) == _records(3)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="seeds")["Contents"])
    assert keys == [f"selfguided/seed/{manifest.version}/manifest.json", f"selfguided/seed/{manifest.version}/records.jsonl"]
    assert not store.save(_records(3))[1] and store.manifest("seed-0123456789abcdef") is None
    assert store.location(manifest.version) == f"s3://seeds/selfguided/seed/{manifest.version}/records.jsonl"


def test_mlflow_records_each_version_as_a_dataset_with_its_lineage(tmp_path, empty_store):  # noqa: F811
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = SeedStore(tmp_path / "store")
    first, _ = store.save(_records(4), source={"teacher": "gpt-4o", "prompt": "answer-v1"})
    grown, _ = store.save(_records(6), parent=first.version, source={"traces": "selfguided-production"})
    run_ids = [log_seed_version(uri, "selfguided", m, store.location(m.version)) for m in (first, grown)]
    assert log_seed_version(uri, "selfguided", grown, store.location(grown.version)) == run_ids[1]  # once
    run = MlflowClient(uri).get_run(run_ids[1])
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == grown.version and dataset.dataset.digest == grown.version.removeprefix("seed-")
    assert {t.key: t.value for t in dataset.tags}["seed_parent"] == first.version
    assert run.data.metrics["seed/records"] == 6 and run.data.metrics["seed/poem/records"] == 2
    chain = seed_lineage(uri, "selfguided", grown.version)
    assert [(c["version"], c["parent"]) for c in chain] == [(grown.version, first.version), (first.version, None)]
    assert chain[0]["source"] == {"traces": "selfguided-production"}
    assert chain[1]["source"] == {"teacher": "gpt-4o", "prompt": "answer-v1"}


def test_the_data_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in _records(6)), encoding="utf-8")
    b = _records(6)[1:] + _records(1, start=6)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in b), encoding="utf-8")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["data", "save", "a.jsonl", "--tracking-uri", uri, "--source", "teacher=gpt-4o"]) == 0
    first = capsys.readouterr().out.split("Seed version ", 1)[1].split(":", 1)[0]
    assert main(["data", "save", "b.jsonl", "--extends", first, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    second = out.split("Seed version ", 1)[1].split(":", 1)[0]
    assert f"Seed {first} -> {second}: 1 added, 1 removed, 0 changed, 5 unchanged" in out
    assert (tmp_path / ".selfguided" / "seed-versions" / second / "manifest.json").exists()
    assert main(["data", "diff", first, second, "--json", "d.json"]) == 0
    assert "| blog | 1 | 1 | 0 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.json").read_text())["by_category"]["blog"]["removed"] == 1
    assert main(["data", "diff", "a.jsonl", "b.jsonl"]) == 0  # files compare without being stored
    assert main(["data", "lineage", second, "--tracking-uri", uri]) == 0
    assert f"{second}  <- {first}" in capsys.readouterr().out
    for argv, message in ((["data", "diff", "seed-0123456789abcdef", first], "is not in the seed store"),
                          (["data", "diff", "nothing.jsonl", first], "neither a seed version"),
                          (["data", "save", "a.jsonl", "--no-mlflow", "--source", "teacher"], "write key=value"),
                          (["data", "save", "missing.jsonl"], "does not exist")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_every_model_version_names_the_seed_version_it_was_trained_on(tmp_path, empty_store):  # noqa: F811
    from test_register import decided

    from selfguided.components.registry.promotion import register_candidates
    from selfguided.components.registry.runs import Candidate

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    scored = tmp_path / "scored.jsonl"
    records = [{**r, "scores": {"helpfulness": 7}, "score": 7.0} for r in _records(5)]
    scored.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    candidate = Candidate(make_model_dir(tmp_path / "m", base_model="tiny", arm="self_guided"),
                          make_summary("tiny", "self_guided", {"blog": 6.0, "poem": 6.0, "news": 6.0}))
    report = register_candidates([candidate], evaluation=decided(candidate, False), tracking_uri=uri,
                                 pipeline_run="run-1", scored_data_sha256="0" * 64, scored_data=scored)
    version = MlflowClient(uri, registry_uri=uri).get_model_version("korean-writing-assistant", report.versions[0].version)
    assert version.tags[SEED_VERSION_TAG] == SeedManifest.of(_records(5)).version  # the seed records, not their scores


def test_new_records_count_what_the_base_lacks():
    from selfguided.components.data.seed_versions import new_records

    base = SeedManifest.of(_records(4))
    grown = SeedManifest.of([*_records(4)[1:], *_records(3, start=10), _records(1)[0] | {"output": "고친 글"}])
    assert new_records(grown, base) == 3 + 1  # three added, one changed; the removed r0 does not count
    assert new_records(base, base) == 0 and new_records(grown, None) == len(grown.records) == 7
    twice = SeedManifest.of([*_records(4), _records(1)[0]])
    assert new_records(twice, base) == 1  # an extra copy is a record more


def test_run_takes_a_seed_version_name_as_seed_data(tmp_path, capsys, monkeypatch):
    from selfguided.pipelines.cli.main import _parameters, build_parser

    monkeypatch.chdir(tmp_path)
    manifest, _ = SeedStore(tmp_path / ".selfguided" / "seed-versions").save(_records(3))
    args = build_parser("run").parse_args(["run", "--seed-data", manifest.version])
    path = tmp_path / ".selfguided" / "seed-versions" / manifest.version / "records.jsonl"
    assert _parameters(args)["seed_uri"] == str(path) and path.is_file()
    assert f"--seed-data {manifest.version} is {path}" in capsys.readouterr().out
    assert _parameters(build_parser("run").parse_args(["run", "--seed-data", "my.jsonl"]))["seed_uri"] == "my.jsonl"
    # Unknown version; a cluster run from a local store: one line, exit 2, before anything runs or is asked.
    assert main(["run", "--seed-data", "seed-0123456789abcdef"]) == 2
    assert main(["submit", "--kfp-host", "http://127.0.0.1:1", "--seed-data", manifest.version]) == 2
    unknown, local = capsys.readouterr().err.strip().splitlines()
    assert "seed version seed-0123456789abcdef is not in the seed store .selfguided/seed-versions" in unknown
    assert "the cluster cannot read; set SELFGUIDED_SEED_STORE to an s3://" in local


def test_a_file_attached_beside_a_version_is_not_its_content(tmp_path):
    store = SeedStore(tmp_path / "store")
    manifest, _ = store.save(_records(2))
    where = store.attach(manifest.version, "fresh-questions.jsonl", '{"question_id": 1}\n')
    assert where == f"{tmp_path / 'store'}/{manifest.version}/fresh-questions.jsonl"
    assert (tmp_path / "store" / manifest.version / "fresh-questions.jsonl").read_text() == '{"question_id": 1}\n'
    assert store.records(manifest.version) == _records(2) and store.save(_records(2))[0].version == manifest.version
    for version, name in ((manifest.version, "records.jsonl"), ("seed-0123456789abcdef", "x.jsonl")):
        with pytest.raises(DataError, match="cannot attach"):
            store.attach(version, name, "")


def test_the_first_harvest_grows_the_seed_the_champion_was_trained_on(tmp_path, empty_store):  # noqa: F811
    """register_candidates logs the records trained on (seed/records.jsonl on the pipeline run);
    a harvest with no earlier harvest and no --extends finds the champion's seed version through
    them, puts it into its seed store and extends it (the seed version grows from what is served)."""
    from test_register import decided

    from selfguided.components.registry.promotion import register_candidates
    from selfguided.components.registry.runs import Candidate
    from selfguided.components.registry.seed_lineage import champion_seed_records
    from selfguided.components.steps.harvest import HarvestConfig, _champion_seed

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = SeedStore(tmp_path / "seeds")
    config = HarvestConfig(tracking_uri=uri, teacher="t", seed_store=str(store.root))
    said: list[str] = []
    assert _champion_seed(config, store, said.append) == "" and "no champion's seed" in said[-1]  # no champion yet

    scored = tmp_path / "scored.jsonl"
    records = [{**r, "scores": {"helpfulness": 7}, "score": 7.0} for r in _records(5)]
    scored.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    candidate = Candidate(make_model_dir(tmp_path / "m", base_model="tiny", arm="self_guided"),
                          make_summary("tiny", "self_guided", {"blog": 6.0, "poem": 6.0, "news": 6.0}))
    register_candidates([candidate], evaluation=decided(candidate, True), tracking_uri=uri,
                        pipeline_run="run-1", scored_data_sha256="0" * 64, scored_data=scored)
    champion, version, found = champion_seed_records(uri, "korean-writing-assistant")
    assert version == SeedManifest.of(_records(5)).version and found == records

    assert store.manifest(version) is None
    assert _champion_seed(config, store, said.append) == version
    assert store.records(version) == records and f"champion v{champion}" in said[-1]
