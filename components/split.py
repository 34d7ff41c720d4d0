"""Step 2, split: a deterministic train/eval split and one training set per arm.

- Held-out categories (default cover_letter and poem, as in the paper) never reach training:
  they measure how the models do on unseen kinds of writing.
- The rest is split train/eval by a hash of each record's id, so a record stays on its side
  whatever the file order or the other records.
- `unscored`: the seed as it is (the Alpaca / Self-Instruct baseline).
- `self_guided`, strategy `condition` (SteerLM-style): the four scores go into the prompt; at
  inference the model is asked for top scores. Strategy `filter` (AlpaGasus-style): only
  records scored at or above a threshold, plain prompts.

Training rows are `{"id", "category", "prompt", "response"}`, the prompt already formatted, so
the finetune step needs to know nothing about arms.
"""

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from kfp.dsl import Dataset, Input, Markdown, Output

from selfguided.components.data import (
    CATEGORIES,
    HELD_OUT_CATEGORIES,
    DataError,
    fetch_input,
    load_questions,
    read_jsonl,
    write_jsonl,
)
from selfguided.components.prompting import ARMS, STRATEGIES, format_prompt
from selfguided.components.images import CPU_IMAGE


@dataclass
class SplitConfig:
    """How scored records become training sets."""

    arms: list[str] = field(default_factory=lambda: list(ARMS))
    """Training sets to write: `unscored` (baseline) and/or `self_guided`."""
    strategy: str = "condition"
    """How scores guide the `self_guided` arm: `condition` (scores in the prompt) or `filter`."""
    filter_threshold: float = 7.0
    """`filter` strategy: keep records whose mean score is at least this (1-10)."""
    held_out_categories: list[str] = field(default_factory=lambda: list(HELD_OUT_CATEGORIES))
    """Categories kept out of training entirely (evaluated as unseen)."""
    eval_fraction: float = 0.1
    """Share of the remaining records kept for evaluation, chosen by a hash of the record id."""
    seed: str = "selfguided"
    """Salt of the id hash; change it to draw a different (still deterministic) split."""

    def validate(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {list(ARMS)}, got {self.arms}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 1.0 <= self.filter_threshold <= 10.0:
            raise ValueError(f"filter_threshold must be in [1, 10], got {self.filter_threshold}")


def in_eval(record_id: str, fraction: float, seed: str) -> bool:
    """Stable membership of the eval split, from a hash of the id (not the file order)."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def training_row(record: dict[str, Any], with_scores: bool) -> dict[str, Any]:
    prompt = format_prompt(record["instruction"], record.get("input", ""), record["scores"] if with_scores else None)
    return {"id": record["id"], "category": record["category"], "prompt": prompt, "response": record["output"]}


@dataclass
class SplitResult:
    train: dict[str, list[dict[str, Any]]]
    eval: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    excluded: dict[str, Counter] = field(default_factory=dict)
    """Per arm, why training-side records were left out (e.g. `unscored by the judge`)."""


def split_records(scored: list[dict[str, Any]], config: SplitConfig) -> SplitResult:
    config.validate()
    held_out = [r for r in scored if r["category"] in config.held_out_categories]
    rest = [r for r in scored if r["category"] not in config.held_out_categories]
    eval_rows = [r for r in rest if in_eval(r["id"], config.eval_fraction, config.seed)]
    train_side = [r for r in rest if not in_eval(r["id"], config.eval_fraction, config.seed)]

    result = SplitResult(train={}, eval=eval_rows, held_out=held_out)
    for arm in config.arms:
        excluded: Counter = Counter()
        rows = []
        for record in train_side:
            if arm == "unscored":
                rows.append(training_row(record, with_scores=False))
            elif record.get("scores") is None:
                excluded["could not be scored"] += 1
            elif config.strategy == "filter" and record["score"] < config.filter_threshold:
                excluded[f"score below {config.filter_threshold}"] += 1
            else:
                rows.append(training_row(record, with_scores=config.strategy == "condition"))
        if not rows:
            raise DataError(
                f"arm {arm!r} has no training records ({dict(excluded) or 'no records outside the held-out categories'}); "
                "lower filter_threshold, hold out fewer categories or add seed data"
            )
        result.train[arm] = rows
        result.excluded[arm] = excluded
    return result


def split_report(result: SplitResult, config: SplitConfig) -> str:
    categories = [c for c in CATEGORIES] + sorted(
        {r["category"] for rows in result.train.values() for r in rows} - set(CATEGORIES)
    )
    lines = [
        "# Split report",
        "",
        f"Strategy: `{config.strategy}`" + (f" (threshold {config.filter_threshold})" if config.strategy == "filter" else "")
        + f". Held out (unseen): {', '.join(config.held_out_categories) or 'none'}. "
        f"Eval: {len(result.eval)} records, held-out: {len(result.held_out)} records.",
        "",
        "| arm | " + " | ".join(categories) + " | total |",
        "|---" * (len(categories) + 2) + "|",
    ]
    for arm, rows in result.train.items():
        counts = Counter(r["category"] for r in rows)
        lines.append(f"| {arm} | " + " | ".join(str(counts[c]) for c in categories) + f" | {len(rows)} |")
    for arm, excluded in result.excluded.items():
        for reason, n in excluded.items():
            lines.append(f"\n{arm}: {n} records left out: {reason}.")
    return "\n".join(lines) + "\n"


def run_split_step(
    scored_path: str, questions_uri: str, train_dir: str, eval_path: str, questions_path: str, report_path: str,
    config: SplitConfig, *, workdir: str = ".",
) -> SplitResult:
    """Split scored records into per-arm training files and copy the validated eval questions."""
    scored = read_jsonl(scored_path)
    result = split_records(scored, config)
    Path(train_dir).mkdir(parents=True, exist_ok=True)
    for arm, rows in result.train.items():
        write_jsonl(Path(train_dir) / f"{arm}.jsonl", rows)
    (Path(train_dir) / "split.json").write_text(json.dumps(asdict(config), ensure_ascii=False, indent=2), "utf-8")
    write_jsonl(eval_path, result.eval + result.held_out)
    source = fetch_input(questions_uri, "questions.jsonl", workdir)
    questions = load_questions(source)  # fails here, early, with file and line, not in generate
    write_jsonl(questions_path, questions)
    Path(report_path).write_text(split_report(result, config), encoding="utf-8")
    sizes = ", ".join(f"{arm} {len(rows)}" for arm, rows in result.train.items())
    print(f"[selfguided] split: training records per arm: {sizes}; {len(questions)} eval questions", flush=True)
    return result


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def split(
    scored: Input[Dataset],
    questions_uri: str,
    arms: list,
    strategy: str,
    filter_threshold: float,
    held_out_categories: list,
    eval_fraction: float,
    train: Output[Dataset],
    eval_records: Output[Dataset],
    questions: Output[Dataset],
    report: Output[Markdown],
):
    """Split scored seed data into one training set per arm, an eval set and the eval questions.

    Args:
        scored: scored records from the score step (JSONL).
        questions_uri: eval questions in FastChat question.jsonl shape; "" = the bundled sample.
        arms: training sets to write, from `unscored` and `self_guided`.
        strategy: `condition` (scores in the prompt, SteerLM-style) or `filter` (AlpaGasus-style).
        filter_threshold: minimum mean score kept by the `filter` strategy (1-10).
        held_out_categories: categories that never reach training (unseen at evaluation).
        eval_fraction: share of the other records kept for evaluation (by a hash of the id).
        train: a directory with `<arm>.jsonl` per arm and `split.json` (the settings).
        eval_records: eval and held-out seed records (JSONL).
        questions: validated eval questions (JSONL).
        report: records per arm and category, and what was left out and why (Markdown).
    """
    import tempfile

    from selfguided.components.split import SplitConfig, run_split_step

    config = SplitConfig(arms=list(arms), strategy=strategy, filter_threshold=filter_threshold,
                         held_out_categories=list(held_out_categories), eval_fraction=eval_fraction)
    run_split_step(scored.path, questions_uri, train.path, eval_records.path, questions.path, report.path, config,
                   workdir=tempfile.mkdtemp())
