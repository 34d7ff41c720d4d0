"""A registered version loads where selfguided is not installed (issue 11, "Done means").

A tiny version is registered into a SQLite MLflow store and promoted to champion; then a new
interpreter loads `models:/korean-writing-assistant@champion` with `mlflow.pyfunc.load_model` and
generates. That interpreter is this virtual environment's Python started with `-I -S`: no user
site, no PYTHON* variables, no current directory and no `site` module, and only the environment's
site-packages directory is put on sys.path by hand. Without `site`, .pth files are not processed,
so the editable install of selfguided (a .pth import hook) is invisible, as it would be in a new
environment with only mlflow, torch, transformers and peft: the script checks that first. What
the version needs of this package must come from the code it ships.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest
from registry_fixtures import category_scores, decided, make_model_dir, make_summary

from selfguided.components.registry.promotion import register_candidates
from selfguided.components.registry.runs import Candidate

pytestmark = pytest.mark.slow

LOAD_AND_PREDICT = r"""
import json, sys
site_packages, tracking_uri = sys.argv[1], sys.argv[2]
sys.path.append(site_packages)  # no .pth processing: the editable selfguided install stays invisible
try:
    import selfguided
except ModuleNotFoundError:
    pass
else:
    sys.exit(f"selfguided is importable from {list(selfguided.__path__)}: this is not a fresh environment")
import mlflow

mlflow.set_tracking_uri(tracking_uri)
model = mlflow.pyfunc.load_model("models:/korean-writing-assistant@champion")
answers = model.predict(["봄에 대한 시를 써 주세요."], params={"max_new_tokens": 16})
print("ANSWER " + json.dumps({"answers": list(answers)}, ensure_ascii=False))
"""


def test_champion_loads_and_generates_without_selfguided(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs to run from a virtual environment (its site-packages stand for a fresh one)")
    model_dir = make_model_dir(tmp_path / "m", arm="self_guided")
    candidate = Candidate(model_dir, make_summary("tiny", "self_guided", category_scores(6.0)))
    evaluation = decided(True, ("test",))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    report = register_candidates([candidate], evaluation=evaluation, tracking_uri=uri, pipeline_run="r",
                                 scored_data_sha256="0" * 64)
    assert report.champion_after == "1"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["HF_HUB_OFFLINE"] = "1"  # the tiny base travels with the version: nothing to fetch
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOAD_AND_PREDICT, sysconfig.get_paths()["purelib"], uri],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("ANSWER "))
    answers = json.loads(line.removeprefix("ANSWER "))["answers"]
    assert len(answers) == 1 and isinstance(answers[0], str) and answers[0]
