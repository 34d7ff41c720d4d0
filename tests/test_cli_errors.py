"""Bad input on any `selfguided` command: one line on stderr naming what to change, exit code 2,
never a traceback; read-only commands create no store; `--help` tells the truth."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import free_port

from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.pipelines.cli.main import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
LONG_REASON = ("promoted: no champion yet: the first champion must beat its untuned base, paired, by the same rule; "
               "it does; overall paired difference +2.91 [95% CI +2.25, +3.57] against its untuned base row over 41 "
               "shared questions")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    # main() turns library progress bars off through these; keep that inside each test
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A real SQLite MLflow store: the experiment, and one registered version as champion with the
    gate's record (no previous champion, so rollback without VERSION has nowhere to go)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment(EXPERIMENT_NAME, artifact_location=str(folder / "artifacts"))
    client.create_registered_model(REGISTERED_MODEL_NAME)
    (folder / "model").mkdir()
    version = client.create_model_version(REGISTERED_MODEL_NAME, source=str(folder / "model"),
                                          tags={"base_model": "tiny", "arm": "unscored", "promotion": LONG_REASON})
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, "champion", version.version)
    return uri


def one_line_error(capsys, argv: list[str]) -> str:
    """Run `selfguided ARGV`; it must exit 2 with exactly one stderr line. Returns that line."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals exit from parse_args
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and "Traceback" not in err, (argv, err)
    return lines[0]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_an_unknown_option_in_one_line(command, capsys):
    line = one_line_error(capsys, [command, "--no-such-option"])
    # the unknown option, or a required one missing, said by the command's parser
    assert line.startswith(f"selfguided {command}: ") and f"(see selfguided {command} --help)" in line


def test_an_unknown_command_is_one_line(capsys):
    assert "invalid choice" in one_line_error(capsys, ["bogus"])


def test_run_checks_its_choices_before_any_step(capsys, tmp_path):
    line = one_line_error(capsys, ["run", "--workdir", str(tmp_path), "--strategy", "bogus"])
    assert "--strategy" in line and "condition" in line
    line = one_line_error(capsys, ["run", "--workdir", str(tmp_path), "--arms", "self_guided,bogus"])
    assert "--arms" in line and "bogus" in line
    assert not (tmp_path / "logs").exists()  # refused before the run started


def test_plan_eval_bad_inputs(store, capsys):
    line = one_line_error(capsys, ["plan-eval", "--from-run", "no-such-run", "--tracking-uri", store])
    assert "--from-run 'no-such-run'" in line
    line = one_line_error(capsys, ["plan-eval", "--from-run", "x", "--delta", "0", "--tracking-uri", store])
    assert "--delta 0" in line and "above 0" in line


def test_promote_and_rollback_bad_versions(store, capsys):
    assert "not a version number" in one_line_error(capsys, ["promote", "abc", "--tracking-uri", store])
    line = one_line_error(capsys, ["promote", "99", "--tracking-uri", store])
    assert "99" in line and "selfguided models" in line
    line = one_line_error(capsys, ["rollback", "--tracking-uri", store])
    assert "selfguided rollback VERSION" in line and "version=" not in line


def test_models_shows_the_gates_reasons_whole(store, capsys):
    assert main(["models", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "[95% CI +2.25, +3.57]" in " ".join(out.split())  # wrapped between words, never cut in a figure


def test_calibrate_names_a_review_sample_that_does_not_exist(store, capsys):
    line = one_line_error(capsys, ["calibrate", "--review-sample", "nope", "--tracking-uri", store])
    assert "no such review sample 'nope'" in line


def test_plan_training_unknown_base(capsys):
    assert "--base" in one_line_error(capsys, ["plan-training", "--base", "nope"])


def test_a_read_only_command_from_another_folder_creates_no_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv in (["models"], ["calibrate"], ["review", "--sample", "3"], ["plan-eval", "--from-run", "x"],
                 ["promote", "1"], ["rollback"]):
        line = one_line_error(capsys, argv)
        assert "no MLflow store at" in line and "--tracking-uri" in line, (argv, line)
    assert "make run" in one_line_error(capsys, ["serve"])  # serve names the model it could not find
    assert not (tmp_path / ".selfguided").exists()


def test_score_with_a_named_model_and_no_endpoint_is_an_error(tmp_path, capsys):
    write_jsonl(tmp_path / "seed.jsonl", [{"id": "1", "category": "poem", "instruction": "봄 시", "output": "봄이 왔다"}])
    line = one_line_error(capsys, ["score", str(tmp_path / "seed.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                                   "--score-model", "gpt-4o"])
    assert "--score-model gpt-4o needs an LLM endpoint" in line and not (tmp_path / "o.jsonl").exists()
    # without a model named, the offline stand-in grades (and says so)
    assert main(["score", str(tmp_path / "seed.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 0


def test_a_dead_endpoint_mentions_cache_only_when_one_was_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    write_jsonl(tmp_path / "seed.jsonl", [{"id": "1", "category": "poem", "instruction": "봄 시", "output": "봄이 왔다"}])
    base = ["score", str(tmp_path / "seed.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--max-attempts", "1",
            "--timeout", "5"]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "1 failed" in err and "--cache" not in err
    assert main([*base, "--cache", str(tmp_path / "cache")]) == 1
    assert f"same --cache {tmp_path / 'cache'}" in capsys.readouterr().err


def test_run_help_shows_the_defaults_a_local_run_uses(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    reference = text[text.index("--reference-models REFERENCE_MODELS"):]
    assert "(default: $SELFGUIDED_TEACHER_MODEL or gpt-4o-mini if OPENAI_API_KEY/OPENAI_BASE_URL is set, else none)" \
        in reference
    assert '"method": "full"' in text and "LoRA for a real base model" in text
    assert "SELFGUIDED_JUDGE_MODEL" in text


def test_plan_eval_help_cites_docs_that_exist(capsys):
    with pytest.raises(SystemExit):
        main(["plan-eval", "--help"])
    cited = re.findall(r"\b((?:docs/)?[\w-]+\.md)\b", capsys.readouterr().out)
    assert cited and all((ROOT / (c if c.startswith("docs/") else f"docs/{c}")).exists() for c in cited), cited


def test_what_a_user_sees_is_one_line_in_a_fresh_interpreter(tmp_path):
    """The whole process, as a shell runs it: library warnings at import count as lines too."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OPENAI_API_KEY", "OPENAI_BASE_URL")}
    for argv in (["models"], ["promote", "abc"], ["plan-training", "--base", "nope"]):
        done = subprocess.run([sys.executable, "-m", "selfguided.pipelines.cli.main", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, (argv, done.stderr)
    assert not (tmp_path / ".selfguided").exists()


def test_library_progress_bars_are_off_unless_verbose(monkeypatch):
    import logging

    from selfguided.pipelines.options import quiet_libraries

    queue_log = logging.getLogger("mlflow.tracing.export.async_export_queue")
    monkeypatch.setattr(queue_log, "level", logging.NOTSET)
    for name in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    quiet_libraries(verbose=True)
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ and queue_log.level == logging.NOTSET
    quiet_libraries(verbose=False)
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and queue_log.level == logging.WARNING
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False  # what MLflow's download bar reads


@pytest.mark.parametrize("argv", [["--help"], *([command, "--help"] for command in COMMANDS)])
def test_every_help_answers(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0 and "usage: selfguided" in capsys.readouterr().out
