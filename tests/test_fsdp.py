"""FSDP2 on 2 CPU processes (gloo) against 1 process with the same effective batch, and DCP
checkpoints that resume on another number of ranks.

Two ranks are two `python -m selfguided.components.training.worker` processes with the environment
torchrun gives its workers (test_finetune.py runs torchrun itself), one rank the same training in
this process; 4 optimizer steps of the tiny model. Tolerance: per-step losses equal to 1e-5 relative (gloo's
reduce-scatter sums in another order than one process accumulating: float32 rounding only), final
weights to 1e-4 absolute (Adam divides by sqrt of tiny second moments, which amplifies rounding).
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from selfguided.components.data.inputs import sample_path
from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.data.seed import load_seed
from selfguided.components.model.prompting import format_prompt
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.job import train
from servers import free_port

LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4
# save_dtype fp32: the weights are compared as trained, to 1e-4; in bf16 (the default) two runs that
# agree to 1e-4 can round to neighbouring bf16 values (one step is 2.4e-4 near 0.03)
BASE = {"max_seq_len": 512, "micro_batch_tokens": 512, "max_steps": 4, "lora_dropout": 0.0,
        "parallelism": "fsdp", "save_every_steps": 2, "keep_checkpoints": 2, "save_dtype": "fp32"}


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "unscored.jsonl"
    write_jsonl(path, [{"id": r["id"], "category": r["category"], "prompt": format_prompt(r["instruction"], r["input"]),
                        "response": r["output"]} for r in load_seed(sample_path("seed.jsonl")).records])
    return path


def run(train_file, out, ranks, method, checkpoint_dir=None) -> str:
    """Train with `ranks` processes, 2 micro-batches per optimizer step in every case; returns the
    training's stderr. One rank trains in this process (no interpreter start to pay), two under
    torchrun, as the step runs them."""
    config = {**BASE, "method": method, "grad_accum_steps": 2 // ranks}
    if ranks == 1:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            train(train_file, "tiny", out, FinetuneConfig.for_model("tiny", **config), checkpoint_dir)
        return stderr.getvalue()
    args = ["-m", "selfguided.components.training.worker", "--train-file", str(train_file), "--base-model", "tiny",
            "--output-dir", str(out), "--config-json", json.dumps(config)]
    if checkpoint_dir:
        args += ["--checkpoint-dir", str(checkpoint_dir)]
    # The environment torchrun gives its workers, without its agent process (one interpreter less to start).
    port = free_port()
    processes = [
        subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(ranks),
                              "LOCAL_WORLD_SIZE": str(ranks), "RANK": str(rank), "LOCAL_RANK": str(rank)})
        for rank in range(ranks)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs[0][1]


def losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def weights(out):
    manifest = json.loads((Path(out) / "selfguided.json").read_text())
    folder = "adapter" if manifest["method"] == "lora" else "model"
    (file,) = (Path(out) / folder).glob("*.safetensors")
    return load_file(file)


def assert_same_training(a, b):
    assert losses(a) == pytest.approx(losses(b), rel=LOSS_RTOL)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()  # the same artifact layout, gathered from the shards
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() <= WEIGHT_ATOL, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_file):
    """Full and LoRA, each on 1 and on 2 ranks, each with its checkpoints (steps 2 and 4)."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("full", "lora"):
        for ranks in (1, 2):
            run(train_file, root / f"{method}{ranks}", ranks, method, root / f"{method}{ranks}-ckpt")
    return root


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_on_two_ranks_trains_like_one_process(runs, method):
    one, two = runs / f"{method}1", runs / f"{method}2"
    assert len(losses(two)) == 4 and losses(two)[-1] < losses(two)[0]
    assert_same_training(one, two)


@pytest.mark.parametrize("method, written_by, resumed_on", [("full", 2, 1), ("lora", 1, 2)])
def test_a_checkpoint_resumes_on_another_number_of_ranks(tmp_path, train_file, runs, method, written_by, resumed_on):
    """Drop the final checkpoint of a finished run, so the rerun resumes at step 2 of 4 on the other
    world size; it must end where the uninterrupted run ended."""
    checkpoints = tmp_path / "ckpt"
    shutil.copytree(runs / f"{method}{written_by}-ckpt", checkpoints)
    (run_dir,) = checkpoints.iterdir()
    shutil.rmtree(run_dir / "step-000004")
    stderr = run(train_file, tmp_path / "out", resumed_on, method, checkpoints)
    assert f"written by {written_by} rank(s), resumed on {resumed_on}" in stderr
    assert_same_training(tmp_path / "out", runs / f"{method}{written_by}")


def test_both_world_sizes_are_the_same_run(runs):
    """The checkpoint folder is named by the run's fingerprint: equal for 1 rank x 2 micro-batches
    and 2 ranks x 1, different for another method."""
    names = {key: [p.name for p in (runs / f"{key}-ckpt").iterdir()] for key in ("full1", "full2", "lora1")}
    assert names["full1"] == names["full2"] != names["lora1"]
