"""Fine-tuning: config, data, packing, loss masking, LoRA, training, checkpoints and exact resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from kfp.dsl import Dataset, Metrics, Model
from safetensors.torch import load_file

from selfguided.components.data.inputs import sample_path
from selfguided.components.data.jsonl import DataError, write_jsonl
from selfguided.components.data.seed import load_seed
from selfguided.components.model import artifact as tm
from selfguided.components.model.prompting import format_prompt
from selfguided.components.steps import finetune as step
from selfguided.components.training import checkpoints as ckpt
from selfguided.components.training import data as td
from selfguided.components.training import loop
from selfguided.components.training.base_models import GPT_NEOX_LINEAR_MODULES, SDPA_VARLEN, build_tiny
from selfguided.components.training.config import FinetuneConfig
from selfguided.components.training.data import Sample
from selfguided.components.training.job import train
from selfguided.components.training.parallel import Distributed
from selfguided.components.training.worker import PREEMPTED_EXIT_CODE

IGNORE = td.IGNORE_INDEX


def training_rows(limit=None):
    """Training rows as the split step writes them, from the bundled seed data."""
    records = load_seed(sample_path("seed.jsonl")).records[:limit]
    return [
        {"id": r["id"], "category": r["category"], "prompt": format_prompt(r["instruction"], r["input"]),
         "response": r["output"]}
        for r in records
    ]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("split") / "unscored.jsonl"
    write_jsonl(path, training_rows())
    return path


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


# -- config ---------------------------------------------------------------------------------------


def test_every_config_field_is_documented():
    undocumented = [f.name for f in fields(FinetuneConfig) if not f.metadata.get("help")]
    assert undocumented == []


def test_defaults_per_model_size_and_json_overrides():
    small, big = FinetuneConfig.for_model("EleutherAI/polyglot-ko-1.3b"), FinetuneConfig.for_model("5.8b")
    assert big.micro_batch_tokens < small.micro_batch_tokens
    assert big.micro_batch_tokens * big.grad_accum_steps == small.micro_batch_tokens * small.grad_accum_steps
    assert FinetuneConfig.for_model("tiny").max_seq_len < small.max_seq_len
    assert small.lora_target_modules == ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    config = FinetuneConfig.from_json('{"method": "full", "num_epochs": 1}', "tiny")
    assert (config.method, config.num_epochs, config.max_seq_len) == ("full", 1, 1024)
    assert FinetuneConfig.from_json("", "tiny") == FinetuneConfig.for_model("tiny")


@pytest.mark.parametrize(
    "config_json, message",
    [
        ('{"epochs": 2}', "unknown field.*epochs.*known:.*num_epochs"),
        ('{"method": "qlora"}', "method='qlora': expected one of lora, full"),
        ('{"micro_batch_tokens": 100}', "micro_batch_tokens=100 < max_seq_len"),
        ("[1, 2]", "must be a JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_config_json_says_what_is_wrong(config_json, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig.from_json(config_json, "tiny")


# -- data -------------------------------------------------------------------------------------------


def test_train_file_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "unscored.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": ""}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"unscored.jsonl:2: field 'response' must be a non-empty string"):
        td.read_train_file(path)


def test_loss_is_on_response_and_eos_only(tiny):
    _, tokenizer = tiny
    rows = [{"prompt": format_prompt("시를 써 주세요"), "response": "봄바람이 분다"}]
    (sample,), counts = td.tokenize_records(rows, tokenizer, max_seq_len=512)
    prompt_ids = tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(rows[0]["response"], add_special_tokens=False)["input_ids"]
    assert sample.input_ids == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert sample.labels == [IGNORE] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]
    assert sample.num_targets == len(response_ids) + 1
    assert counts == {"truncated_samples": 0, "skipped_samples": 0}


def test_long_samples_are_cut_or_skipped_and_counted(tiny):
    _, tokenizer = tiny
    rows = [
        {"prompt": format_prompt("짧은 지시"), "response": "아주 긴 응답입니다. " * 200},
        {"prompt": format_prompt("아주 긴 지시 " * 200), "response": "응답"},
        {"prompt": format_prompt("보통 지시"), "response": "보통 응답"},
    ]
    samples, counts = td.tokenize_records(rows, tokenizer, max_seq_len=64)
    assert counts == {"truncated_samples": 1, "skipped_samples": 1}
    assert len(samples) == 2 and len(samples[0].input_ids) == 64
    with pytest.raises(DataError, match="no trainable samples"):
        td.tokenize_records(rows[1:2], tokenizer, max_seq_len=64)


# -- packing ----------------------------------------------------------------------------------------


def random_samples(vocab_size, lengths, prompt_len=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for n in lengths:
        ids = torch.randint(2, vocab_size, (n,), generator=generator).tolist()
        samples.append(Sample(ids, [IGNORE] * prompt_len + ids[prompt_len:]))
    return samples


@pytest.mark.parametrize("attn", ["sdpa", "eager", SDPA_VARLEN])
def test_packed_logits_equal_unpacked_logits_per_sample(tiny, attn):
    model, _ = tiny
    samples = random_samples(model.config.vocab_size, [6, 23, 11, 40, 8])
    with torch.no_grad():
        alone = [model(torch.tensor([s.input_ids])).logits[0] for s in samples]
        model.set_attn_implementation(attn)
        batch = td.collate_packed(samples, varlen_kwargs=attn == SDPA_VARLEN)
        assert batch["input_ids"].shape == (1, sum(len(s.input_ids) for s in samples))  # no padding at all
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        model.set_attn_implementation("sdpa")
    for a, b in zip(alone, torch.split(together, [len(s.input_ids) for s in samples])):
        assert torch.allclose(a, b, atol=1e-5)


def test_packed_targets_never_cross_a_sample_boundary():
    samples = [Sample([10, 11, 12, 13], [IGNORE, IGNORE, 12, 13]), Sample([20, 21, 22], [IGNORE, 21, 22])]
    batch = td.collate_packed(samples)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    # position t predicts token t+1 of its own sample; the last token of a sample predicts nothing
    assert batch["targets"].tolist() == [[IGNORE, 12, 13, IGNORE, 21, 22, IGNORE]]


def test_packed_padded_and_per_sample_losses_agree(tiny):
    model, _ = tiny
    samples = random_samples(model.config.vocab_size, [12, 30, 7, 19])
    cpu = torch.device("cpu")
    with torch.no_grad():
        one_by_one = sum(loop.loss_sum(model, td.collate_padded([s], pad_token_id=1), cpu) for s in samples)
        padded = loop.loss_sum(model, td.collate_padded(samples, pad_token_id=1), cpu)
        model.set_attn_implementation(SDPA_VARLEN)
        packed = loop.loss_sum(model, td.collate_packed(samples, varlen_kwargs=True), cpu)
        model.set_attn_implementation("sdpa")
    assert torch.allclose(packed, one_by_one, rtol=1e-5) and torch.allclose(padded, one_by_one, rtol=1e-5)


def test_plan_is_deterministic_and_uses_every_sample_once_per_epoch():
    lengths = [int(x) for x in torch.randint(20, 300, (57,), generator=torch.Generator().manual_seed(1))]
    config = FinetuneConfig(max_seq_len=512, micro_batch_tokens=600, grad_accum_steps=2, seed=3)
    for world_size in (1, 2):
        steps = td.plan_epoch(lengths, config, epoch=0, world_size=world_size)
        assert steps == td.plan_epoch(lengths, config, epoch=0, world_size=world_size)
        micro_batches = [mb for step in steps for mb in step]
        assert sorted(i for mb in micro_batches for i in mb) == list(range(57))
        assert all(sum(lengths[i] for i in mb) <= 600 for mb in micro_batches)
        assert all(len(step) == 2 * world_size for step in steps[:-1])
    assert td.plan_epoch(lengths, config, 0, 1) != td.plan_epoch(lengths, config, 1, 1)  # reshuffled per epoch
    padded = td.plan_epoch(lengths, FinetuneConfig(max_seq_len=256, micro_batch_tokens=1024, packing=False), 0, 1)
    assert all(len(mb) <= 4 for step in padded for mb in step)


# -- model preparation ------------------------------------------------------------------------------


def test_lora_targets_all_four_linear_layers_of_every_block(tiny):
    model, _ = tiny
    peft_model = loop.prepare_model(build_tiny()[0], FinetuneConfig.for_model("tiny"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    for layer in range(model.config.num_hidden_layers):
        for module in GPT_NEOX_LINEAR_MODULES:
            hits = [n for n in trainable if f"layers.{layer}." in n and f".{module}.lora_" in n]
            assert len(hits) == 2, (layer, module)  # lora_A and lora_B
    full = loop.prepare_model(build_tiny()[0], FinetuneConfig.for_model("tiny", method="full"))
    assert all(p.requires_grad for p in full.parameters())


# -- training -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_file):
    out = tmp_path_factory.mktemp("trained")
    metrics = train(train_file, "tiny", out, FinetuneConfig.for_model("tiny", num_epochs=3))
    return out, metrics


def test_training_lowers_the_loss_and_reports_metrics(trained):
    out, metrics = trained
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(history) == metrics["steps"] > 4
    first_epoch = [h["loss"] for h in history if h["epoch"] == 0]
    last_epoch = [h["loss"] for h in history if h["epoch"] == 2]
    # LoRA on a randomly initialised base cannot go far (the output head is frozen), but it must go down
    assert sum(last_epoch) / len(last_epoch) < sum(first_epoch) / len(first_epoch) - 0.1
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert metrics["epochs"] == 3.0 and metrics["train_samples"] == 84
    assert metrics["train_tokens"] > metrics["target_tokens"] > 0 and metrics["tokens_per_s"] > 0
    assert metrics["peak_memory_gb"] > 0 and metrics["seconds"] > 0


def test_output_is_the_model_artifact_layout(trained):
    out, metrics = trained
    meta = tm.read_manifest(out)  # validates the layout
    assert meta.base_model == "tiny" and meta.base_model_ref == tm.BUNDLED_BASE_REF
    assert meta.arm == "unscored" and meta.method == "lora" and meta.strategy == "condition"
    assert meta.train_metrics == metrics and meta.config["num_epochs"] == 3
    assert tm.read_train_log(out) and len(tm.read_train_log(out)) == metrics["steps"]
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "base" / "config.json").exists()
    assert (out / "tokenizer" / "tokenizer.json").exists() and not (out / "model").exists()
    assert not (out / "checkpoints").exists()  # temporary checkpoints are cleaned up


def test_full_fine_tuning_writes_a_standalone_model(tmp_path, train_file):
    config = FinetuneConfig.for_model("tiny", method="full", max_steps=2, learning_rate=1e-3)
    train(train_file, "tiny", tmp_path, config)
    assert (tmp_path / "model" / "config.json").exists() and not (tmp_path / "adapter").exists()
    model, tokenizer = tm.load_trained(tmp_path)
    assert model.config.use_cache and not model.training
    with torch.no_grad():
        model(torch.tensor([tokenizer("시", add_special_tokens=False)["input_ids"]]))
    # written in bf16 (half of fp32), in shards of at most 2 GB, so MLflow's staging volume and S3
    # move a 5.8B model one shard at a time; fp32 only where asked
    from safetensors import safe_open

    shards = sorted((tmp_path / "model").glob("*.safetensors"))
    with safe_open(str(shards[0]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"


def test_full_fine_tuning_in_fp32_only_where_asked_and_in_2gb_shards(tmp_path, train_file, monkeypatch):
    from safetensors import safe_open

    from selfguided.components.model import artifact

    monkeypatch.setattr(artifact, "MERGED_MAX_SHARD_SIZE", "100KB")  # the tiny model in several shards
    config = FinetuneConfig.for_model("tiny", method="full", max_steps=1, save_dtype="fp32")
    train(train_file, "tiny", tmp_path, config)
    shards = sorted((tmp_path / "model").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model" / "model.safetensors.index.json").exists()
    with safe_open(str(shards[0]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    tm.load_trained(tmp_path)


def test_unknown_arm_is_refused(tmp_path, train_file):
    with pytest.raises(ValueError, match="unknown arm 'bogus'"):
        train(train_file, "tiny", tmp_path, arm="bogus")


def test_kfp_component_trains_the_arm_file_and_logs_metrics(tmp_path, train_file):
    model, metrics = Model(name="model", uri=str(tmp_path / "model"), metadata={}), Metrics(
        name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    step.finetune.python_func(
        train_data=Dataset(name="train", uri=str(train_file.parent), metadata={}), base_model="tiny", arm="unscored",
        strategy="filter", config_json='{"max_steps": 2}', num_gpus=0, checkpoint_dir="", model=model, metrics=metrics,
    )
    assert model.metadata == {"base_model": "tiny", "arm": "unscored", "strategy": "filter", "replicate": 0}
    assert tm.read_manifest(model.path).strategy == "filter"
    assert metrics.metadata["steps"] == 2 and metrics.metadata["train_loss"] > 0
    with pytest.raises(DataError, match="self_guided.jsonl: no training file for arm"):
        step.run_finetune_step(train_file.parent, "tiny", "self_guided", "condition", "", 0, "", tmp_path / "other")


def test_module_imports_inside_a_kfp_step():
    """A running step has _KFP_RUNTIME=true, where kfp.dsl leaves out `dsl.component`."""
    env = {**os.environ, "_KFP_RUNTIME": "true"}
    result = subprocess.run([sys.executable, "-c", "import selfguided.components.steps.finetune"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# -- checkpoints and resume -------------------------------------------------------------------------

# Long enough (16 steps on the first 48 seed records) that a SIGTERM sent after the 2nd step lands
# well before the end. All 84 records make 34 steps: twice the training and the checkpoints in each
# of the 3 runs that go to the end, and no more proof.
RESUME_CONFIG = json.dumps({"max_seq_len": 512, "micro_batch_tokens": 512, "grad_accum_steps": 1,
                            "num_epochs": 1, "save_every_steps": 2, "lora_dropout": 0.1})
RESUME_RECORDS = 48


@pytest.fixture(scope="module")
def resume_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "unscored.jsonl"
    write_jsonl(path, training_rows(RESUME_RECORDS))
    return path


def cli(train_file, out, checkpoint_dir, *extra_python):
    """A training subprocess, as torchrun or a retried pod would start it."""
    args = ["--train-file", str(train_file), "--base-model", "tiny", "--output-dir", str(out),
            "--config-json", RESUME_CONFIG, "--checkpoint-dir", str(checkpoint_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if extra_python:  # run a small driver script instead of the module (to inject a SIGKILL)
        return subprocess.Popen([sys.executable, "-c", extra_python[0], *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([sys.executable, "-m", "selfguided.components.training.worker", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=240):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def run_dirs(checkpoint_dir):
    """The per-run subfolder (named by the run fingerprint) of a shared checkpoint_dir."""
    (run,) = [p for p in Path(checkpoint_dir).iterdir() if p.is_dir()]
    return run


def wait_for_checkpoint(checkpoint_dir, process, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(Path(checkpoint_dir).glob("*/step-*")):
            return
        assert process.poll() is None, finish(process)
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {checkpoint_dir} after {timeout} s")


def adapter(out):
    return load_file(Path(out) / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, resume_file):
    root = tmp_path_factory.mktemp("uninterrupted")
    code, stdout, stderr = finish(cli(resume_file, root / "out", root / "ckpt"))
    assert code == 0, stderr[-3000:]
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert metrics["steps"] >= 12  # room for the interrupted runs to stop well before the end
    return root / "out", metrics


def assert_same_result(out, reference):
    ref_out, ref_metrics = reference
    metrics = json.loads((Path(out) / "selfguided.json").read_text())["train_metrics"]
    assert metrics["steps"] == ref_metrics["steps"] and metrics["train_tokens"] == ref_metrics["train_tokens"]
    assert metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"], rel=1e-6)
    a, b = adapter(out), adapter(ref_out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


@pytest.mark.slow
def test_sigterm_midway_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path, resume_file, uninterrupted):
    process = cli(resume_file, tmp_path / "out", tmp_path / "ckpt")
    wait_for_checkpoint(tmp_path / "ckpt", process)
    process.send_signal(signal.SIGTERM)
    code, _, stderr = finish(process)
    assert code == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "SIGTERM: stopped after step" in stderr
    (saved,) = ckpt.Checkpoints(run_dirs(tmp_path / "ckpt"), "", Distributed(), 1).complete()
    stopped_at = json.loads((saved / "meta.json").read_text())["step"]
    assert 2 <= stopped_at < uninterrupted[1]["steps"]  # really stopped midway
    assert not (tmp_path / "out" / "selfguided.json").exists()

    code, _, stderr = finish(cli(resume_file, tmp_path / "out", tmp_path / "ckpt"))
    assert code == 0, stderr[-3000:]
    assert_same_result(tmp_path / "out", uninterrupted)


# Dies by SIGKILL in the middle of writing the step-4 checkpoint (after the DCP shards of weights and
# optimizer state, before the scheduler and meta.json), like a pod killed without grace.
KILL_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    from selfguided.components.training import checkpoints, worker
    real_save = checkpoints._save_synced
    def save_then_die(obj, path):
        if path.parent.name == ".tmp-step-000004" and path.name == "scheduler.pt":
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, path)
    checkpoints._save_synced = save_then_die
    sys.exit(worker.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_kill_9_while_saving_leaves_no_torn_checkpoint_and_resume_is_exact(tmp_path, resume_file, uninterrupted):
    code, _, stderr = finish(cli(resume_file, tmp_path / "out", tmp_path / "ckpt", KILL_WHILE_SAVING))
    assert code == -signal.SIGKILL, stderr[-3000:]
    run = run_dirs(tmp_path / "ckpt")
    assert sorted(p.name for p in run.iterdir()) == [".tmp-step-000004", "step-000002"]
    checkpoints = ckpt.Checkpoints(run, "", Distributed(), 1)  # also clears the torn temporary folder
    assert [p.name for p in checkpoints.complete()] == ["step-000002"]
    assert not (run / ".tmp-step-000004").exists()

    code, _, stderr = finish(cli(resume_file, tmp_path / "out", tmp_path / "ckpt"))
    assert code == 0, stderr[-3000:]
    assert_same_result(tmp_path / "out", uninterrupted)


def test_checkpoint_of_another_run_is_refused(tmp_path, tiny):
    model, _ = tiny
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ckpt.Checkpoints(tmp_path, "run-a", Distributed(), 1).save(ckpt.RunState(step=3), model, optimizer, scheduler)
    other = ckpt.Checkpoints(tmp_path, "run-b", Distributed(), 1)
    with pytest.raises(RuntimeError, match="checkpoint of a different run"):
        other.load(other.latest(), model, optimizer, scheduler)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_accumulation(tmp_path, train_file):
    """DDP over 2 CPU processes (gloo) takes the same steps as 1 process accumulating 2 micro-batches."""
    base = {"max_seq_len": 512, "micro_batch_tokens": 512, "max_steps": 4, "lora_dropout": 0.0}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    module = ["-m", "selfguided.components.training.worker", "--train-file", str(train_file), "--base-model", "tiny"]
    single = subprocess.run(
        [sys.executable, *module, "--output-dir", str(tmp_path / "one"),
         "--config-json", json.dumps({**base, "grad_accum_steps": 2})],
        env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    double = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *module,
         "--output-dir", str(tmp_path / "two"), "--config-json", json.dumps({**base, "grad_accum_steps": 1})],
        env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = adapter(tmp_path / "one"), adapter(tmp_path / "two")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    one, two = (json.loads((tmp_path / d / "selfguided.json").read_text())["train_metrics"] for d in ("one", "two"))
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6)
    assert two["train_tokens"] == one["train_tokens"]


def test_the_strategy_is_written_once_into_the_manifest(tmp_path):
    from selfguided.components.data.hashing import file_sha256
    from selfguided.components.data.jsonl import write_jsonl
    from selfguided.components.model.prompting import format_prompt

    train_dir = tmp_path / "train"
    write_jsonl(train_dir / "self_guided.jsonl", [
        {"id": str(i), "category": "blog", "prompt": format_prompt(f"글 {i}"), "response": "짧은 답입니다."}
        for i in range(4)])
    step.run_finetune_step(train_dir, "tiny", "self_guided", "filter", '{"max_steps": 1}', 0, "", tmp_path / "out")
    manifest = tm.read_manifest(tmp_path / "out")
    assert manifest.strategy == "filter" and manifest.base_revision is None
    assert manifest.train_data_sha256 == file_sha256(train_dir / "self_guided.jsonl")


def test_a_pod_asked_for_gpus_it_cannot_see_refuses_to_train_on_the_cpu(tmp_path, monkeypatch):
    """On a cluster a pod without its nvidia.com/gpu limit would train on a few CPU cores for hours:
    the step stops at once, naming the pod; num_gpus=0 trains on the CPU on purpose."""
    import torch

    from selfguided.components.steps.finetune import run_finetune_step
    from selfguided.components.training.parallel import GpusMissing, require_gpus

    monkeypatch.setenv("HOSTNAME", "selfguided-abc-finetune-123")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert require_gpus(0) == 0
    with pytest.raises(GpusMissing, match=r"pod selfguided-abc-finetune-123 was asked to train on 1 GPU\(s\) but sees 0"):
        require_gpus(1)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "unscored.jsonl").write_text('{"id": "a", "category": "poem", "prompt": "p", "response": "r"}\n')
    with pytest.raises(GpusMissing, match="sees 0"):
        run_finetune_step(tmp_path / "train", "tiny", "unscored", "condition", "", 1, "", tmp_path / "model")
