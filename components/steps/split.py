"""Step 2, split: a deterministic train/test split, one training set per arm, and the test questions.

- Held-out categories (default cover_letter and poem, as in the paper) never reach training:
  they measure how the models do on unseen kinds of writing.
- The rest is split train/eval by a hash of each record's id, so a record stays on its side
  whatever the file order or the other records.
- `unscored`: the seed as it is (the Alpaca / Self-Instruct baseline).
- `self_guided`, strategy `condition` (SteerLM-style): the four scores go into the prompt; at
  inference the model is asked for top scores. Strategy `filter` (AlpaGasus-style): only
  records scored at or above a threshold, plain prompts.
- `control` separates "the scores carry information" from "a different training set": for
  `filter`, a seeded random subset of the same size and category mix as the filtered set (the
  control Deita and AlpaGasus report); for `condition`, the same records with the scores
  shuffled across records.

The test set (the paper's protocol): with no questions file, every held-out record plus the eval
fraction of the rest becomes a FastChat question whose `question_id` is the seed id, with its
category and `seen` (whether the category was trained on); `max_eval_questions` caps each
category, drawn deterministically. With a questions file (any FastChat benchmark, or `sample`
for the bundled demo questions) those questions are used, marked seen or unseen the same way.

Fresh questions (`fresh_questions_uri`, written by `selfguided harvest`): harvested production
prompts, each with `"slice": "unseen"` (held out of every seed version) or `"seen"` (in the
training seed data), appended to the test set after the cap (`max_eval_questions` applies to the
fixed set only) and keeping their slice; the fixed questions carry no `slice` (read as `fixed`,
data/questions.question_slice). A question id of both is refused. The gate decides on fixed and
unseen questions; seen ones are only reported (evaluation/slices.py).

Training rows are `{"id", "category", "prompt", "response"}`, the prompt already formatted, so
the finetune step needs to know nothing about arms.
"""

import hashlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from kfp.dsl import Dataset, Input, Markdown, Output

from selfguided.components.data.categories import CATEGORIES, HELD_OUT_CATEGORIES, REFERENCE_CATEGORIES, category_order
from selfguided.components.data.inputs import SAMPLE_QUESTIONS, fetch_input
from selfguided.components.data.jsonl import DataError, read_jsonl, write_jsonl
from selfguided.components.data.questions import (
    FRESH_SLICES, attach_references, load_questions, load_reference_answers, question_slice,
)
from selfguided.components.model.prompting import ARMS, STRATEGIES, format_prompt
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
    max_eval_questions: int = 0
    """Most test questions per category (0: no cap), drawn by a hash of the question id."""
    reference_categories: list[str] = field(default_factory=lambda: list(REFERENCE_CATEGORIES))
    """Categories whose questions are judged against a reference answer (math, reasoning, coding)."""
    seed: str = "selfguided"
    """Salt of the hashes and of the control's draw; change it for a different (still
    deterministic) split."""

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
        if self.max_eval_questions < 0:
            raise ValueError(f"max_eval_questions must be >= 0, got {self.max_eval_questions}")


def _unit_hash(key: str, seed: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_eval(record_id: str, fraction: float, seed: str) -> bool:
    """Stable membership of the eval split, from a hash of the id (not the file order)."""
    return _unit_hash(record_id, seed) < fraction


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
    control: str = ""
    """What the control arm is, in words (empty when it was not asked for)."""


def _guided_records(train_side: list[dict[str, Any]], config: SplitConfig) -> tuple[list[dict[str, Any]], Counter]:
    """The records the self_guided arm trains on, and why the others were left out."""
    kept, excluded = [], Counter()
    for record in train_side:
        if record.get("scores") is None:
            excluded["could not be scored"] += 1
        elif config.strategy == "filter" and record["score"] < config.filter_threshold:
            excluded[f"score below {config.filter_threshold}"] += 1
        else:
            kept.append(record)
    return kept, excluded


def _control_rows(train_side: list[dict[str, Any]], guided: list[dict[str, Any]], config: SplitConfig
                  ) -> tuple[list[dict[str, Any]], str]:
    """The control arm's rows and a sentence saying what they are."""
    rng = random.Random(f"{config.seed}:control")
    if config.strategy == "filter":
        wanted = Counter(r["category"] for r in guided)
        rows = []
        for category in sorted(wanted):
            pool = sorted((r for r in train_side if r["category"] == category), key=lambda r: r["id"])
            rows += [training_row(r, with_scores=False) for r in rng.sample(pool, wanted[category])]
        return rows, (f"random subset of {len(rows)} records with the filtered set's category mix "
                      f"(drawn without regard to scores)")
    scores = [r["scores"] for r in guided]
    rng.shuffle(scores)
    rows = [training_row({**r, "scores": s}, with_scores=True) for r, s in zip(guided, scores)]
    return rows, f"the {len(rows)} self_guided records with their scores shuffled across records"


def split_records(scored: list[dict[str, Any]], config: SplitConfig) -> SplitResult:
    config.validate()
    held_out = [r for r in scored if r["category"] in config.held_out_categories]
    rest = [r for r in scored if r["category"] not in config.held_out_categories]
    eval_rows = [r for r in rest if in_eval(r["id"], config.eval_fraction, config.seed)]
    train_side = [r for r in rest if not in_eval(r["id"], config.eval_fraction, config.seed)]

    result = SplitResult(train={}, eval=eval_rows, held_out=held_out)
    guided, guided_excluded = _guided_records(train_side, config)
    for arm in config.arms:
        excluded: Counter = Counter()
        if arm == "unscored":
            rows = [training_row(record, with_scores=False) for record in train_side]
        elif arm == "self_guided":
            rows, excluded = [training_row(r, with_scores=config.strategy == "condition") for r in guided], guided_excluded
        else:
            rows, result.control = _control_rows(train_side, guided, config)
        if not rows:
            raise DataError(
                f"arm {arm!r} has no training records ({dict(excluded) or 'no records outside the held-out categories'}); "
                "lower filter_threshold, hold out fewer categories or add seed data"
            )
        result.train[arm] = rows
        result.excluded[arm] = excluded
    return result


def seed_questions(result: SplitResult, config: SplitConfig) -> list[dict[str, Any]]:
    """The test set from the seed data: held-out and eval records as FastChat questions."""
    questions = []
    for record in result.held_out + result.eval:
        turn = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        questions.append({"question_id": record["id"], "category": record["category"], "turns": [turn]})
    return questions


def mark_and_cap(questions: list[dict[str, Any]], config: SplitConfig, trained: set[str]) -> list[dict[str, Any]]:
    """Mark each question seen (its category was trained on) or not, and keep at most
    `max_eval_questions` per category, chosen by a hash of the question id (file order kept)."""
    marked = [{**q, "seen": q["category"] in trained} for q in questions]
    if not config.max_eval_questions:
        return marked
    by_category: dict[str, list[dict[str, Any]]] = {}
    for q in marked:
        by_category.setdefault(q["category"], []).append(q)
    keep = set()
    for rows in by_category.values():
        ranked = sorted(rows, key=lambda q: _unit_hash(str(q["question_id"]), config.seed))
        keep.update(id(q) for q in ranked[: config.max_eval_questions])
    return [q for q in marked if id(q) in keep]


def load_fresh(fixed: list[dict[str, Any]], fresh_path: str | Path, origin: str) -> list[dict[str, Any]]:
    """The harvested questions of `fresh_path`, to append to the fixed test set, each keeping its
    `slice` (FRESH_SLICES). Refused, naming the file: a question id twice in it, or one the fixed set
    (`fixed`, before the cap) has."""
    fresh = load_questions(fresh_path, slices=FRESH_SLICES)
    ids = Counter(str(q["question_id"]) for q in fresh)
    twice = sorted(i for i, n in ids.items() if n > 1)
    if twice:
        raise DataError(f"{origin}: question_id {', '.join(twice[:3])} appears more than once")
    clash = sorted(set(ids) & {str(q["question_id"]) for q in fixed})
    if clash:
        raise DataError(f"{origin}: question_id {', '.join(clash[:3])} is also in the fixed test set "
                        f"({len(clash)} in all); give harvested questions ids of their own")
    return fresh


def _fresh_line(questions: list[dict[str, Any]], uri: str) -> str:
    counts = Counter(question_slice(q) for q in questions)
    return (f" {counts['fixed']} are the fixed set; {counts['unseen'] + counts['seen']} are harvested prompts from "
            f"{uri}: {counts['unseen']} held out of every seed version (slice unseen) and {counts['seen']} in the "
            "training seed data (slice seen, reported but never deciding the gate).")


def split_report(result: SplitResult, config: SplitConfig) -> str:
    # every one of the paper's categories gets a column, trained on or not
    categories = category_order([*CATEGORIES, *(r["category"] for rows in result.train.values() for r in rows)])
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
    if result.control:
        lines.append(f"\ncontrol: {result.control}.")
    return "\n".join(lines) + "\n"


def run_split_step(
    scored_path: str, questions_uri: str, train_dir: str, questions_path: str, report_path: str,
    config: SplitConfig, *, workdir: str = ".", reference_answers_uri: str = "", fresh_questions_uri: str = "",
) -> tuple[SplitResult, list[dict[str, Any]]]:
    """Split scored records into per-arm training files and write the test questions (the fixed set,
    then the harvested questions of `fresh_questions_uri`, see the module docstring)."""
    scored = read_jsonl(scored_path)
    result = split_records(scored, config)
    Path(train_dir).mkdir(parents=True, exist_ok=True)
    for arm, rows in result.train.items():
        write_jsonl(Path(train_dir) / f"{arm}.jsonl", rows)
    (Path(train_dir) / "split.json").write_text(json.dumps(asdict(config), ensure_ascii=False, indent=2), "utf-8")
    if questions_uri:
        source = fetch_input("" if questions_uri == "sample" else questions_uri, SAMPLE_QUESTIONS, workdir)
        questions = load_questions(source)  # fails here, early, with file and line, not in generate
        origin = "the bundled sample questions" if questions_uri == "sample" else questions_uri
        marked = next((q for q in questions if question_slice(q) != "fixed"), None)
        if marked is not None:  # it would silently leave (seen) or join (unseen) the gate's questions
            raise DataError(f"{questions_uri}: question {marked['question_id']} carries slice {marked['slice']!r}; "
                            "harvested questions go in fresh_questions_uri (--fresh-questions)")
    else:
        questions = seed_questions(result, config)
        origin = "the seed records held out of training"
    trained = {r["category"] for rows in result.train.values() for r in rows}
    references = load_reference_answers(fetch_input(reference_answers_uri, "", workdir)) if reference_answers_uri else {}
    capped = mark_and_cap(questions, config, trained)
    if not capped:
        raise DataError(f"no test questions from {origin}: hold out a category, raise eval_fraction or pass a "
                        "questions file")
    if fresh_questions_uri:  # after the cap: max_eval_questions is the fixed set's
        fresh = load_fresh(questions, fetch_input(fresh_questions_uri, "", workdir), fresh_questions_uri)
        capped += [{**q, "seen": q["category"] in trained} for q in fresh]
    questions = attach_references(capped, references, config.reference_categories)
    write_jsonl(questions_path, questions)
    per_category = Counter(q["category"] for q in questions)
    report = split_report(result, config) + (
        f"\n## Test questions\n\n{len(questions)} questions from {origin}"
        + (f", at most {config.max_eval_questions} per category" if config.max_eval_questions else "") + ": "
        + ", ".join(f"{c} {n}" + ("" if c in trained else " (unseen)") for c, n in per_category.items()) + "."
        + (f" {sum('reference' in q for q in questions)} are judged against a reference answer "
           f"({', '.join(config.reference_categories)})." if any("reference" in q for q in questions) else "")
        + (_fresh_line(questions, fresh_questions_uri) if fresh_questions_uri else "") + "\n")
    Path(report_path).write_text(report, encoding="utf-8")
    sizes = ", ".join(f"{arm} {len(rows)}" for arm, rows in result.train.items())
    fresh_note = f" (+ harvested from {fresh_questions_uri})" if fresh_questions_uri else ""
    print(f"[selfguided] split: training records per arm: {sizes}; {len(questions)} test questions from {origin}"
          f"{fresh_note}", flush=True)
    return result, questions


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def split(
    scored: Input[Dataset],
    questions_uri: str,
    arms: list,
    strategy: str,
    filter_threshold: float,
    held_out_categories: list,
    eval_fraction: float,
    max_eval_questions: int,
    reference_answers_uri: str,
    reference_categories: list,
    train: Output[Dataset],
    questions: Output[Dataset],
    report: Output[Markdown],
    fresh_questions_uri: str = "",
):
    """Split scored seed data into one training set per arm and the test questions.

    Args:
        scored: scored records from the score step (JSONL).
        questions_uri: test questions in FastChat question.jsonl shape (any benchmark); "" = the seed
            records held out of training (the paper's protocol); `sample` = the bundled demo questions.
        arms: training sets to write, from `unscored`, `self_guided` and `control`.
        strategy: `condition` (scores in the prompt, SteerLM-style) or `filter` (AlpaGasus-style).
        filter_threshold: minimum mean score kept by the `filter` strategy (1-10).
        held_out_categories: categories that never reach training (unseen at evaluation).
        eval_fraction: share of the other records kept for evaluation (by a hash of the id).
        max_eval_questions: most test questions per category of the fixed set (0: all), drawn
            deterministically.
        reference_answers_uri: FastChat reference answers (`reference_answer/gpt-4.jsonl`); "" = only
            the questions' own inline `reference`.
        reference_categories: categories judged against a reference answer (math, reasoning, coding).
        train: a directory with `<arm>.jsonl` per arm and `split.json` (the settings).
        questions: the test questions (FastChat question.jsonl, each with `seen`; harvested ones with `slice`).
        report: records per arm and category, what was left out and why, the test set (Markdown).
        fresh_questions_uri: harvested questions (question.jsonl, each with `"slice"`: `unseen` or `seen`)
            appended to the test questions after max_eval_questions' cap, which is the fixed set's;
            the gate decides on the fixed and unseen ones; "" = none.
    """
    import tempfile

    from selfguided.components.steps.split import SplitConfig, run_split_step

    config = SplitConfig(arms=list(arms), strategy=strategy, filter_threshold=filter_threshold,
                         held_out_categories=list(held_out_categories), eval_fraction=eval_fraction,
                         max_eval_questions=max_eval_questions, reference_categories=list(reference_categories))
    run_split_step(scored.path, questions_uri, train.path, questions.path, report.path, config,
                   workdir=tempfile.mkdtemp(), reference_answers_uri=reference_answers_uri,
                   fresh_questions_uri=fresh_questions_uri)
