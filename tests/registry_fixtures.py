"""Builders for the register step's inputs: trained model directories and judge summaries.

Everything is made here, offline and in a second: a 2-layer GPT-NeoX with random weights, a
byte-level BPE tokenizer trained on a few Korean lines, a real PEFT LoRA adapter, written through
`trained_model.save_trained` exactly as the finetune step writes its Model artifact.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any, Mapping

import pytest

from selfguided.components.data.categories import CATEGORIES
from selfguided.components.evaluation.compare_result import CompareResult
from selfguided.components.evaluation.judge_summary import JudgeSummary
from selfguided.components.judging.jury import JudgeUsage, JuryUsage, judge_named
from selfguided.components.model import artifact as tm
from selfguided.components.model.prompting import CRITERIA

KOREAN_LINES = [
    "### 지시:\n봄을 주제로 짧은 시를 써 주세요.\n\n### 응답:\n벚꽃이 피고 바람이 분다.",
    "### 지시:\n자기소개서를 작성해 주세요.\n\n### 응답:\n저는 성실하고 책임감 있는 사람입니다.",
    "### 지시:\n여행 블로그 글을 써 주세요.\n\n### 응답:\n제주도의 바다는 정말 아름다웠습니다.",
    "### 지시:\n짧은 소설의 첫 문단을 써 주세요.\n\n### 응답:\n그날 밤, 비가 조용히 내리고 있었다.",
    "### 지시:\n시나리오의 한 장면을 써 주세요.\n\n### 응답:\n카페 안. 두 사람이 마주 앉아 있다.",
    "### 지시:\n뉴스 기사를 작성해 주세요.\n\n### 응답:\n오늘 서울의 기온은 영하로 떨어졌다.",
    "### 목표 평가:\n유용성 10, 관련성 10, 정확성 10, 상세함 10",
]
EOS = "<|endoftext|>"
PAD = "<|padding|>"
LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def build_tokenizer():
    """A deterministic byte-level BPE tokenizer (any text encodes, no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(KOREAN_LINES, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def build_tiny_base(seed: int = 0):
    """(model, tokenizer): a 2-layer, hidden-32 GPT-NeoX with random weights."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = build_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        rotary_pct=0.25,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config).eval(), tokenizer


def make_model_dir(
    root: Path,
    *,
    base_model: str = "tiny",
    arm: str = "self_guided",
    method: str = "lora",
    strategy: str = "condition",
    seed: int = 0,
) -> Path:
    """Write a trained-model directory through trained_model.save_trained and return it.

    `base_model="tiny"` bundles the base weights under base/; any other name is referenced by hub
    id (at a made-up revision) and no base weights are written. A `checkpoints/` folder is added
    too, as the finetune step leaves one while it trains: it must not be logged to MLflow.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    out = Path(root) / f"{base_model.replace('/', '_')}-{arm}-{method}"
    out.mkdir(parents=True)
    base, tokenizer = build_tiny_base(seed)
    bundled = base_model == "tiny"
    if method == "lora":
        if bundled:
            tm.save_bundled_base(out, base, tokenizer)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
        torch.manual_seed(seed + 1)
        with torch.no_grad():  # a non-zero adapter, so merging it visibly changes the model
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.02)
    elif method == "full":
        model = base
    else:
        raise ValueError(f"unknown method {method!r}")
    (out / "checkpoints" / "step-1").mkdir(parents=True)
    (out / "checkpoints" / "step-1" / "optimizer.pt").write_bytes(b"not for the registry")
    manifest = tm.ModelManifest(
        base_model=base_model,
        base_model_ref=tm.BUNDLED_BASE_REF if bundled else base_model,
        base_revision=None if bundled else "0123abcd",
        arm=arm,
        strategy=strategy,
        method=method,
        config={"learning_rate": 2e-4, "epochs": 1, "lora": {"r": 4, "alpha": 8}, "targets": LORA_TARGETS},
        train_metrics={"train_loss": 2.5, "train_tokens": 1200, "tokens_per_s": 300.0, "device": "cpu"},
        train_data_sha256="ab" * 32,
    )
    tm.save_trained(out, model, tokenizer, manifest, train_log=[{"step": 1, "loss": 2.5}])
    return out


def category_scores(base: float, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-category overall scores: `base` everywhere, `overrides` where given."""
    return {c: float((overrides or {}).get(c, base)) for c in CATEGORIES}


def jury_of(judge_model: str = "offline-heuristic") -> JuryUsage:
    """The usage of a jury of one, `judge_model` (the offline stand-in or an LLM judge), as the
    judge step records it."""
    identity = judge_named(judge_model).identity
    return JuryUsage(identity, "mean", 1, 1, 0.0, [JudgeUsage(identity, items=6)])


def make_summary(
    base_model: str,
    arm: str,
    per_category: Mapping[str, float],
    *,
    judge_model: str = "offline-heuristic",
    usage: Mapping[str, float] | None = None,
    replicate: int = 0,
) -> JudgeSummary:
    """A judge summary made as the judge step makes it (JudgeSummary.of_judgments), from six judgments
    per category whose criteria all equal the category's given score."""
    judgments = [
        {"category": cat, "score": score, "scores": {c: score for c in CRITERIA}, "error": None}
        for cat, score in per_category.items()
        for _ in range(6)
    ]
    return JudgeSummary.of_judgments(judgments, jury_of(judge_model), row_kind="trained", base_model=base_model,
                                     arm=arm, replicate=replicate, usage=dict(usage or {}))


def decided(promote: bool, reasons: tuple[str, ...] = ("decided",), *, base_model: str = "tiny",
            arm: str = "self_guided", champion_version: str | None = None,
            metrics: Mapping[str, Mapping[str, float]] | None = None) -> CompareResult:
    """A compare step result naming `<base_model>/<arm>` as the challenger and carrying a decision
    (the gate is tested in test_gate.py and test_compare_step.py; the registry must follow it)."""
    from selfguided.components.evaluation.agreement import JuryAgreement
    from selfguided.components.evaluation.decision import Challenger, GateDecision
    from selfguided.components.evaluation.paired import Comparison

    row = f"{base_model}/{arm}"
    return CompareResult(Comparison([], {}, [], [], {}), GateDecision(promote, list(reasons)),
                         Challenger(base_model, arm, [row], row, float("nan"), 1), champion_version,
                         {k: dict(v) for k, v in (metrics or {}).items()}, [], JuryAgreement([]))


def write_summary(path: Path, summary: JudgeSummary) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return summary.write(path)


def make_judgments(per_category: Mapping[str, float], *, n: int = 8, spread: float = 0.0, seed: int = 0,
                   unseen: tuple[str, ...] = ("cover_letter", "poem")) -> list[dict[str, Any]]:
    """Judgment rows as the judge step writes them: `n` questions per category (question ids
    `<category>-<i>`, shared by every row built here), scores around the category's value."""
    import random

    rng = random.Random(seed)
    rows = []
    for category, value in per_category.items():
        for i in range(n):
            score = min(10.0, max(1.0, value + (rng.uniform(-spread, spread) if spread else 0.0)))
            rows.append({"question_id": f"{category}-{i}", "turn": 1, "category": category,
                         "seen": category not in unseen, "scores": {c: score for c in CRITERIA}, "score": score,
                         "answer_chars": 200 + 10 * i, "error": None})
    return rows


def write_row(root: Path, name: str, judgments: list[dict[str, Any]], *, row_kind: str = "trained",
              base_model: str = "tiny", arm: str = "", model: str = "", judge_model: str = "offline-heuristic",
              note: str = "", replicate: int = 0, fallback: Any = None) -> tuple[Path, Path]:
    """A judge step's two outputs for one row: (summary file, judgments file)."""
    from selfguided.components.data.jsonl import write_jsonl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary = JudgeSummary.of_judgments(judgments, jury_of(judge_model), row_kind=row_kind, base_model=base_model,
                                        arm=arm, model=model, replicate=replicate, note=note, fallback=fallback)
    write_jsonl(root / f"{name}.judgments.jsonl", judgments)
    return write_summary(root / f"{name}.summary.json", summary), root / f"{name}.judgments.jsonl"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An initialised, empty SQLite MLflow store to copy: creating one runs MLflow's migrations
    (seconds), copying does not. Import it into a test module (`from registry_fixtures import empty_store`)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def relocated_copy(template: Path, to: Path) -> Path:
    """A copy of a folder holding a local MLflow store (`mlflow.db` and its `artifacts/`) at `to`, with
    every absolute path MLflow recorded in it (artifact locations in the database, a logged model's
    MLmodel) pointing into the copy: a registry built once per module, then given to each test to
    change as it likes, for far less than registering its versions again."""
    shutil.copytree(template, to)
    old, new = str(template), str(to)
    connection = sqlite3.connect(to / "mlflow.db")
    with connection:
        for (table,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [c[1] for c in connection.execute(f'PRAGMA table_info("{table}")').fetchall()
                           if "CHAR" in (c[2] or "").upper() or "TEXT" in (c[2] or "").upper()]:
                connection.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                   f'WHERE instr("{column}", ?) > 0', (old, new, old))
    connection.close()
    for path in to.rglob("MLmodel"):
        path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return to
