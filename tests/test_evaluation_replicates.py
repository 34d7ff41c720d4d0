"""--replicates K through the steps: the loop items, the seed each training gets, the row each judge names."""

from __future__ import annotations

import json

from selfguided.components.data import write_jsonl


def test_plan_runs_makes_k_items_per_base_and_arm_and_k1_is_the_plain_plan():
    from selfguided.pipelines.pipeline import plan_runs

    items = plan_runs.python_func(base_models=["tiny"], arms=["unscored", "self_guided"], replicates=2)
    assert [(i["arm"], i["replicate"]) for i in items] == [("unscored", 0), ("unscored", 1), ("self_guided", 0),
                                                          ("self_guided", 1)]
    single = plan_runs.python_func(base_models=["tiny"], arms=["unscored"], replicates=1)
    assert [i["replicate"] for i in single] == [0]


def test_replicate_r_trains_with_the_configs_seed_plus_r(tmp_path, monkeypatch):
    from selfguided.components.steps import finetune as step
    from selfguided.components.training import job

    seen = []
    monkeypatch.setattr(job, "train", lambda train_file, base, out, config, *a, **k: seen.append(config.seed) or {})
    write_jsonl(tmp_path / "unscored.jsonl", [{"id": "1", "category": "poem", "prompt": "p", "response": "r"}])
    for replicate in (0, 2):
        step.run_finetune_step(tmp_path, "tiny", "unscored", "condition", "", 1, "", tmp_path / "out", replicate)
    assert seen[1] == seen[0] + 2


def test_the_judge_step_names_replicate_r_and_records_it(tmp_path):
    from selfguided.components.steps.judge import run_judge_step

    questions = [{"question_id": i, "category": "poem", "turns": ["봄을 주제로 시를 써 주세요."]} for i in range(2)]
    answers = [{"question_id": i, "answer_id": str(i), "model_id": "tiny/self_guided",
                "choices": [{"index": 0, "turns": ["벚꽃이 피고 바람이 분다."]}], "tstamp": 0.0} for i in range(2)]
    write_jsonl(tmp_path / "q.jsonl", questions)
    write_jsonl(tmp_path / "a.jsonl", answers)
    paths = [str(tmp_path / name) for name in ("j.jsonl", "s.json", "r.md", "r.html")]
    run_judge_step(str(tmp_path / "q.jsonl"), str(tmp_path / "a.jsonl"), "offline-heuristic", *paths,
                   row_kind="trained", base_model="tiny", arm="self_guided", replicate=1)
    summary = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert summary["row"] == "tiny/self_guided#1" and summary["replicate"] == 1
