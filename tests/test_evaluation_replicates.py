"""--replicates K through the steps: the loop items, the seed each training gets, the row each judge names."""

from __future__ import annotations

from selfguided.components.data.jsonl import write_jsonl


def test_plan_runs_makes_k_items_per_base_and_arm_and_k1_is_the_plain_plan():
    from selfguided.components.steps.finetune import plan_runs

    items = plan_runs.python_func(base_models=["tiny"], arms=["unscored", "self_guided"], replicates=2)
    assert [(i["arm"], i["replicate"]) for i in items] == [("unscored", 0), ("unscored", 1), ("self_guided", 0),
                                                          ("self_guided", 1)]
    single = plan_runs.python_func(base_models=["tiny"], arms=["unscored"], replicates=1)
    assert [i["replicate"] for i in single] == [0]


def test_replicate_r_trains_with_the_configs_seed_plus_r(tmp_path, monkeypatch):
    from selfguided.components.steps import finetune as step
    from selfguided.components.training import job

    import shutil

    from registry_fixtures import make_model_dir

    from selfguided.components.model.artifact import read_manifest

    trained = make_model_dir(tmp_path / "trained", arm="unscored")
    seen = []

    def fake_train(train_file, base, out, config, *a, **k):
        seen.append(config.seed)
        shutil.copytree(trained, out, dirs_exist_ok=True)
        return {}

    monkeypatch.setattr(job, "train", fake_train)
    write_jsonl(tmp_path / "unscored.jsonl", [{"id": "1", "category": "poem", "prompt": "p", "response": "r"}])
    for replicate in (0, 2):
        step.run_finetune_step(tmp_path, "tiny", "unscored", "condition", "", 0, "", tmp_path / f"out{replicate}",
                               replicate)
    assert seen[1] == seen[0] + 2
    # the model says which replicate it is: register pairs it with its judge summary by it
    assert [read_manifest(tmp_path / f"out{r}").replicate for r in (0, 2)] == [0, 2]


def test_a_replicates_summary_paired_with_another_replicates_model_is_refused(tmp_path):
    import dataclasses

    import pytest
    from registry_fixtures import category_scores, make_model_dir, make_summary, write_summary

    from selfguided.components.data.jsonl import DataError
    from selfguided.components.model.artifact import read_manifest, write_manifest
    from selfguided.components.registry.runs import load_candidates

    models = [make_model_dir(tmp_path / str(r), arm="unscored") for r in (0, 1)]
    write_manifest(models[1], dataclasses.replace(read_manifest(models[1]), replicate=1))
    summaries = [write_summary(tmp_path / f"s{r}.json", make_summary("tiny", "unscored", category_scores(5.0),
                                                                     replicate=r)) for r in (0, 1)]
    assert [c.manifest.replicate for c in load_candidates(models, summaries)] == [0, 1]
    with pytest.raises(DataError, match=r"s0.json: judge summary .* paired with the model in .*\(tiny/unscored, "
                                        r"replicate 1\)"):
        load_candidates(models[::-1], summaries)


def test_the_judge_step_names_replicate_r_and_records_it(tmp_path):
    from selfguided.components.evaluation.judge_summary import JudgeSummary
    from selfguided.components.steps.judge import run_judge_step

    questions = [{"question_id": i, "category": "poem", "turns": ["봄을 주제로 시를 써 주세요."]} for i in range(2)]
    answers = [{"question_id": i, "answer_id": str(i), "model_id": "tiny/self_guided",
                "choices": [{"index": 0, "turns": ["벚꽃이 피고 바람이 분다."]}], "tstamp": 0.0} for i in range(2)]
    write_jsonl(tmp_path / "q.jsonl", questions)
    write_jsonl(tmp_path / "a.jsonl", answers)
    paths = [str(tmp_path / name) for name in ("j.jsonl", "s.json", "r.md", "r.html")]
    run_judge_step(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"), "offline-heuristic", *paths,
                   row_kind="trained", base_model="tiny", arm="self_guided", replicate=1)
    summary = JudgeSummary.read(tmp_path / "s.json")
    assert summary.row == "tiny/self_guided#1" and summary.replicate == 1
