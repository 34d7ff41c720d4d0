"""One flag vocabulary across every `selfguided` command (pipelines/options.py), the old
spellings still accepted with one deprecation line, and the README's command lines parsed by the
CLI's own parsers: every command and option the README names exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from selfguided.pipelines.cli.main import COMMANDS, build_parser
from selfguided.pipelines.options import RENAMED, old_spellings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's full parser, by name (COMMANDS: a new command is covered as it is added)."""
    parser = build_parser("all")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.choices[name] for name in COMMANDS}


def test_no_command_uses_an_old_spelling_as_its_own_option(parsers):
    for name, parser in parsers.items():
        visible = {s for a in parser._actions for s in a.option_strings}
        assert not visible & set(RENAMED), f"{name} names {sorted(visible & set(RENAMED))}: use {RENAMED}"


def test_every_hidden_alias_is_a_documented_old_spelling(parsers):
    for name, parser in parsers.items():
        for old, new in old_spellings(parser).items():
            assert old in RENAMED and new in RENAMED[old], (name, old, new)


def test_one_name_per_concept(parsers):
    """The MLflow store is --tracking-uri wherever a command reads one; a random seed is
    --random-seed; a server's own address --listen-host; a KFP endpoint --kfp-host."""
    for name, parser in parsers.items():
        for action in parser._actions:
            text = (action.help or "").lower()
            option = action.option_strings[0] if action.option_strings else ""
            if "mlflow tracking uri" in text:
                assert option == "--tracking-uri", (name, option)
            if re.search(r"\b(random|bootstrap) seed\b", text):
                assert option == "--random-seed", (name, option)
            if "address to listen on" in text:
                assert option == "--listen-host", (name, option)
            if "kubeflow pipelines api endpoint" in text or text.startswith("kfp api endpoint"):
                assert option == "--kfp-host", (name, option)
    for command in ("run", "models", "promote", "rollback", "review", "calibrate", "plan-eval", "serve", "submit"):
        assert "--tracking-uri" in parsers[command]._option_string_actions, command
    for command in ("models", "promote", "rollback", "run", "submit"):
        assert "--registered-model" in parsers[command]._option_string_actions, command
    assert "--kfp-experiment" in parsers["submit"]._option_string_actions
    assert "--seed-data" in parsers["run"]._option_string_actions


@pytest.mark.parametrize("argv, dest, value, new", [
    (["run", "--seed", "s3://b/seed.jsonl"], "seed_uri", "s3://b/seed.jsonl", "--seed-data"),
    (["run", "--registered-model-name", "m"], "registered_model_name", "m", "--registered-model"),
    (["run", "--experiment-name", "e"], "experiment_name", "e", "--experiment"),
    (["run", "--mlflow-tracking-uri", "sqlite:///x.db"], "tracking_uri", "sqlite:///x.db", "--tracking-uri"),
    (["submit", "--host", "http://kfp", "--mlflow-tracking-uri", "http://m"], "kfp_host", "http://kfp", "--kfp-host"),
    (["upload", "--host", "http://kfp", "--pipeline", "p"], "kfp_host", "http://kfp", "--kfp-host"),
    (["serve", "--host", "0.0.0.0"], "listen_host", "0.0.0.0", "--listen-host"),
    (["models", "--name", "m"], "registered_model", "m", "--registered-model"),
    (["review", "--sample", "3", "--seed", "7"], "random_seed", 7, "--random-seed"),
    (["calibrate", "--seed", "7"], "random_seed", 7, "--random-seed"),
    (["score", "s.jsonl", "-o", "o.jsonl", "--model", "gpt-4o"], "model", "gpt-4o", "--score-model"),
    (["judge", "q", "a", "-o", "j", "--concurrency", "3"], "concurrency", 3, "--llm-concurrency"),
])
def test_an_old_spelling_still_works_with_one_deprecation_line(argv, dest, value, new, capsys, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    args = build_parser(argv[0]).parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    old = next(a for a in argv if a.startswith("--") and a in RENAMED)
    assert any(line == f"selfguided: {old} is deprecated and goes in the next release; use {new}" for line in err)


def test_required_option_is_satisfied_by_its_old_spelling(monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    assert build_parser("submit").parse_args(["submit", "--host", "http://kfp"]).kfp_host == "http://kfp"
    with pytest.raises(SystemExit) as exit_:
        build_parser("submit").parse_args(["submit"])
    assert exit_.value.code == 2


def _readme_commands() -> list[str]:
    """Lines starting with `selfguided ` inside the README's code blocks (continuations joined)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("selfguided "):
                commands.append(line.split(" #", 1)[0].strip())
    return commands


def test_readme_names_only_commands_and_options_that_exist(capsys, monkeypatch):
    commands = _readme_commands()
    assert len(commands) >= 6 and any(c.startswith("selfguided plan-eval") for c in commands)
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    for line in commands:
        argv = shlex.split(line)[1:]
        try:
            build_parser(argv[0] if argv else None).parse_args(argv)
        except SystemExit as exc:
            if exc.code != 0 or "--help" not in argv:
                pytest.fail(f"README: `{line}` does not parse: {capsys.readouterr().err.strip()}")
        assert "deprecated" not in capsys.readouterr().err, f"README uses an old spelling: {line}"


def test_readme_is_one_page_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160
    assert "make run" in text and "make test" in text
    for link in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", text):
        assert (ROOT / link).exists(), link


def test_no_development_history_where_a_user_reads():
    for path in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        text = path.read_text(encoding="utf-8")
        for pattern in (r"(?i)\bissue \d+\b", r"(?i)\bthis session\b", r"^RESULT "):
            found = re.search(pattern, text, flags=re.M)
            assert not found, f"{path.name}: {found.group(0)!r}"
