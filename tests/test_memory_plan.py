"""The memory plan: the accounting, its verdicts on Polyglot-ko 5.8B, how close it is to what the
tiny model really allocates on a CPU, and the finetune path refusing before the model loads."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from selfguided.components.training import job
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.memory_plan import (
    DoesNotFit,
    Setup,
    check_fits,
    estimate,
    model_shape,
    plan_for_run,
)

REPO = Path(__file__).parent.parent
# planned / measured for what a training step adds on top of the loaded model and its optimizer state
# (benchmarks/memory_plan_check.py). Seen on this CPU: tiny full 1.00, tiny LoRA 0.97.
MARGIN = (0.85, 1.15)


@pytest.mark.parametrize("name, parameters", [  # the EleutherAI model cards
    ("1.3b", 1_331_810_304), ("3.8b", 3_809_974_272), ("5.8b", 5_885_059_072)])
def test_the_torch_free_shapes_count_the_model_card_parameters(name, parameters):
    assert model_shape(name).params == parameters


def test_5_8b_full_is_refused_on_one_80gb_gpu_and_accepted_on_8():
    shape, config = model_shape("polyglot-ko-5.8b"), FinetuneConfig.for_model("polyglot-ko-5.8b", method="full")
    one = Setup(method="full", gpus_per_node=1, gpu_memory_gb=80, micro_batch_tokens=config.micro_batch_tokens)
    planned = estimate(shape, one)
    # weights + gradients + AdamW alone: 16 bytes a parameter, ~94 GB, before any activation
    assert planned.weights + planned.gradients + planned.optimizer == pytest.approx(16 * shape.params)
    with pytest.raises(DoesNotFit, match=r"5.8b full ddp on 1 node\(s\) x 1 GPU\(s\) of 80 GB.*144.5 GB per GPU.*"
                                         r"does NOT fit; smallest setup that fits: .* fsdp .* fits"):
        check_fits(shape, one)
    plan = plan_for_run("polyglot-ko-5.8b", config, gpus_per_node=8, gpu_memory_gb=80)
    assert plan.fits and plan.setup.parallelism == "fsdp"  # auto: DDP does not fit 8 x 80 GB, FSDP does
    assert not estimate(shape, Setup(method="full", gpus_per_node=8, micro_batch_tokens=8192)).fits  # DDP
    lora = plan_for_run("polyglot-ko-5.8b", FinetuneConfig.for_model("5.8b"), gpus_per_node=8, gpu_memory_gb=80)
    assert lora.setup.parallelism == "ddp"  # LoRA fits every GPU whole: no sharding needed


def test_fsdp_divides_the_model_state_by_the_ranks():
    shape = model_shape("1.3b")
    ddp = estimate(shape, Setup(method="full", gpus_per_node=8))
    fsdp = estimate(shape, Setup(method="full", gpus_per_node=8, parallelism="fsdp"))
    assert fsdp.optimizer == pytest.approx(ddp.optimizer / 8)
    assert fsdp.activations == ddp.activations  # activations are per rank either way
    checkpointed = estimate(shape, Setup(method="full", gradient_checkpointing=True))
    assert checkpointed.activations < ddp.activations / 5


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_plan_is_within_its_margin_of_the_measured_tiny_peak(method):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "memory_plan_check.py"), "--model", "tiny", "--method", method,
         "--tokens", "2048", "--steps", "1"],
        capture_output=True, text=True, timeout=300, env={"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("RESULT ")
    ratio = float(re.search(r"ratio=([\d.]+)", line).group(1))
    assert MARGIN[0] <= ratio <= MARGIN[1], line


def test_training_refuses_an_impossible_setup_before_the_model_loads(tmp_path, monkeypatch):
    train_file = tmp_path / "unscored.jsonl"
    train_file.write_text('{"id": "1", "category": "blog", "prompt": "p", "response": "r"}\n', encoding="utf-8")
    monkeypatch.setattr(job, "detect_gpu_memory_gb", lambda: 80.0)  # as on one 80 GB GPU

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the memory plan refused")

    monkeypatch.setattr(job, "load_base", must_not_load)
    config = FinetuneConfig.for_model("polyglot-ko-5.8b", method="full")
    with pytest.raises(DoesNotFit, match=r"144.5 GB per GPU .* does NOT fit"):
        job.train(train_file, "polyglot-ko-5.8b", tmp_path / "out", config)


def test_plan_training_prints_every_size_without_importing_torch():
    code = (
        "import sys\n"
        "from selfguided.pipelines.cli.main import main\n"
        "for base in ('1.3b', '3.8b', '5.8b', '12.8b'):\n"
        "    main(['plan-training', '--base', base, '--method', 'full', '--gpus', '8', '--gpu-memory', '80'])\n"
        "assert 'torch' not in sys.modules, 'plan-training imported torch'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("smallest setup that fits:") == 4
    assert "EleutherAI/polyglot-ko-12.8b: 12.89B parameters" in result.stdout
