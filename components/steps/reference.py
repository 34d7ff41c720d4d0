"""Reference rows: models judged on the same questions as the trained ones, never promoted.

- `base`: each base model untuned, asked with the plain prompt (the unscored format), so the
  table shows what fine-tuning added;
- `teacher`: an API model (the paper's ChatGPT row, e.g. gpt-4o-mini) answering through the
  LLM client layer (cache, rate limits, cost accounting); every teacher is answered by one task
  on the CPU pool (`answer_teachers`), as it holds no model, and judged by one (`judge.judge_rows`);
- `champion`: the registered model's current champion, loaded from MLflow and answering in this
  run, so that the gate compares challenger and champion on the same questions by the same judge.
  Greedy decoding and the judge's cache make re-judging an unchanged champion cost nothing.

Base and champion rows run a model: one loop iteration each on the GPU pool (`answer_reference`).

When the registry has no champion yet, or it cannot be loaded, the row has no answers and says
why (`ReferenceAnswers.note`); the compare step then decides without it, and says so.
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.data.questions import load_questions
from selfguided.components.llm.config import parse_model_entry
from selfguided.components.images import GPU_IMAGE, CPU_IMAGE

PLAIN_PROMPT = ("unscored", "condition")  # the arm and strategy whose prompt is the plain one


def teacher_models(reference_models: List[str]) -> List[str]:
    """The teacher rows' models, each once (`name` or `name@url`); two entries with one name are an error."""
    teachers = list(dict.fromkeys(m.strip() for m in reference_models if m.strip()))
    names = [parse_model_entry(m)[0] for m in teachers]  # ValueError for a malformed entry
    if len(set(names)) != len(names):
        raise ValueError(f"reference_models names a model twice ({', '.join(teachers)}): each teacher row needs "
                         "its own name")
    return teachers


def plan_reference_rows(base_models: List[str]) -> List[Dict[str, str]]:
    """The reference rows that run a model on the GPU pool, as loop items: every base untuned, and the
    champion. Teachers only call an API: `answer_teachers` answers them all on the CPU pool."""
    return [*({"row_kind": "base", "base_model": m, "model": ""} for m in base_models),
            {"row_kind": "champion", "base_model": "", "model": ""}]


@dataclass
class ReferenceAnswers:
    """What answering a reference row produced."""

    answers: list[dict[str, Any]]
    row_model: str = ""
    """The teacher's model, or the champion's version ("" for base rows)."""
    generate_seconds: float = 0.0
    answer_cost_usd: float = 0.0
    note: str = ""
    """Why the row has no answers (no champion yet, or it could not be loaded)."""
    fallback_metrics: dict[str, float] = field(default_factory=dict)
    """The champion's logged judge metrics, when it exists but could not be re-evaluated."""
    fallback_judge: str = ""


def answer_base(base_model: str, questions: list[dict[str, Any]], *, max_new_tokens: int) -> ReferenceAnswers:
    """The untuned base model, asked with the plain prompt (every turn, the conversation so far)."""
    import torch

    from selfguided.components.model.engines import answer_conversations, transformers_engine
    from selfguided.components.training.base_models import load_base
    from selfguided.components.model.prompting import conversation_prompt

    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.monotonic()
    model, tokenizer = load_base(base_model, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                 device=device)
    engine = transformers_engine(model.eval(), tokenizer, max_new_tokens=max_new_tokens,
                                 batch_size=64 if device == "cuda" else 16)
    rows = answer_conversations(questions, engine, lambda turns, earlier: conversation_prompt(turns, earlier, *PLAIN_PROMPT),
                                model_id=f"base/{base_model}")
    return ReferenceAnswers(rows, generate_seconds=time.monotonic() - started)


def answer_teacher(model: str, questions: list[dict[str, Any]], *, base_url: str, concurrency: int, cache: str
                   ) -> ReferenceAnswers:
    """An API model through the LLM client layer; its cost is measured."""
    from selfguided.components.llm.config import endpoint_config
    from selfguided.components.judging.teacher import answer_with_llm

    config = endpoint_config("teacher", model, base_url=base_url, concurrency=concurrency, cache=cache)
    model = config.model
    started = time.monotonic()
    rows, usage = answer_with_llm(questions, config)
    print(f"[selfguided] teacher {model}: {usage.summary_line()}", flush=True)
    return ReferenceAnswers(rows, row_model=model, generate_seconds=time.monotonic() - started,
                            answer_cost_usd=usage.cost_usd)


def answer_champion(questions: list[dict[str, Any]], *, registered_model_name: str, tracking_uri: str,
                    max_new_tokens: int, workdir: str | Path) -> ReferenceAnswers:
    """The registry's current champion, downloaded and answering in this run."""
    from mlflow import MlflowClient

    from selfguided.components.evaluation.metrics import is_judge_metric
    from selfguided.components.model.engines import answer_with_trained_model
    from selfguided.components.registry.logged_model import download_model_dir
    from selfguided.components.registry.aliases import alias_version

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = alias_version(client, registered_model_name)
    if version is None:
        return ReferenceAnswers([], note=f"{registered_model_name!r} has no champion yet")
    label = str(version.version)
    try:
        model_dir = download_model_dir(f"models:/{registered_model_name}/{label}", tracking_uri, workdir)
        started = time.monotonic()
        _, rows = answer_with_trained_model(model_dir, questions, max_new_tokens=max_new_tokens)
    except Exception as exc:  # noqa: BLE001 - any failure leaves the gate its unpaired fallback, said loudly
        run = client.get_run(version.run_id)
        metrics = {k: v for k, v in run.data.metrics.items() if is_judge_metric(k)}
        return ReferenceAnswers([], row_model=label, note=f"champion v{label} could not be re-evaluated: "
                                f"{type(exc).__name__}: {exc}", fallback_metrics=metrics,
                                fallback_judge=run.data.tags.get("judge", ""))
    for row in rows:
        row["model_id"] = f"champion/v{label}"
    return ReferenceAnswers(rows, row_model=label, generate_seconds=time.monotonic() - started)


def answer_reference_row(row: dict[str, str], questions_file: str | Path, answers_file: str | Path, *,
                         max_new_tokens: int, registered_model_name: str, tracking_uri: str,
                         workdir: str | Path = ".") -> ReferenceAnswers:
    """What the `answer_reference` component does: answer the questions as the base or champion
    `row` says, write the answers. (Teachers: `answer_teacher_rows`, on the CPU pool.)"""
    kind = row.get("row_kind")
    if kind not in ("base", "champion"):
        raise ValueError(f"not a base or champion row: {row!r} (teacher rows are answered by answer_teachers)")
    questions = load_questions(questions_file)
    if kind == "base":
        result = answer_base(row["base_model"], questions, max_new_tokens=max_new_tokens)
    else:
        result = answer_champion(questions, registered_model_name=registered_model_name, tracking_uri=tracking_uri,
                                 max_new_tokens=max_new_tokens, workdir=workdir)
    write_jsonl(answers_file, result.answers)
    what = result.note or f"{len(result.answers)} questions answered in {result.generate_seconds:.0f} s"
    print(f"[selfguided] reference {kind} {row.get('base_model') or row.get('model') or result.row_model}: {what}",
          flush=True)
    return result


def answer_teacher_rows(reference_models: List[str], questions_file: str | Path, folder: str | Path, *,
                        llm_base_url: str = "", llm_concurrency: int = 8, llm_cache: str = "") -> List[ReferenceAnswers]:
    """What the `answer_teachers` component does: every teacher answers the questions, one after
    the other, into one folder (judging/answers.write_answer_rows; none = an empty folder)."""
    from selfguided.components.judging.answers import write_answer_rows

    questions = load_questions(questions_file)
    results, rows = [], []
    for model in teacher_models(reference_models):
        result = answer_teacher(model, questions, base_url=llm_base_url, concurrency=llm_concurrency, cache=llm_cache)
        results.append(result)
        rows.append(({"row_kind": "teacher", "base_model": "", "row_model": result.row_model,
                      "generate_seconds": result.generate_seconds, "answer_cost_usd": result.answer_cost_usd,
                      "note": result.note}, result.answers))
        print(f"[selfguided] reference teacher {result.row_model}: {len(result.answers)} questions answered in "
              f"{result.generate_seconds:.0f} s, {result.answer_cost_usd:.4f} USD", flush=True)
    write_answer_rows(folder, rows)
    if not rows:
        print("[selfguided] no teacher row (reference_models is empty)", flush=True)
    return results


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def plan_references(base_models: List[str]) -> List[dict]:
    """The reference rows that run a model (each base untuned, the champion), as loop items."""
    from selfguided.components.steps.reference import plan_reference_rows

    return plan_reference_rows(base_models)


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def answer_teachers(
    reference_models: List[str],
    questions: Input[Dataset],
    llm_base_url: str,
    llm_concurrency: int,
    llm_cache: str,
    answers: Output[Artifact],
):
    """Every teacher row (an API model: the paper's ChatGPT row) answers the test questions, on the
    CPU pool: a teacher only calls its endpoint.

    Args:
        reference_models: the teachers, `name` (on llm_base_url) or `name@http://host/v1` (an endpoint
            of its own, its key from the selfguided-judge-keys Secret); [] = no teacher row.
        questions: the test questions (FastChat question.jsonl).
        llm_base_url: OpenAI-compatible endpoint ("" = OPENAI_BASE_URL or OpenAI).
        llm_concurrency: concurrent requests per teacher.
        llm_cache: LLM response cache (a path on the cache volume or `s3://bucket/prefix`).
        answers: a folder of every teacher's answers and identity (judging/answers.write_answer_rows).
    """
    from selfguided.components.steps.reference import answer_teacher_rows

    answer_teacher_rows(reference_models, questions.path, answers.path, llm_base_url=llm_base_url,
                        llm_concurrency=llm_concurrency, llm_cache=llm_cache)


@component(base_image=GPU_IMAGE, install_kfp_package=False)  # the image has kfp
def answer_reference(
    row: dict,
    questions: Input[Dataset],
    max_new_tokens: int,
    registered_model_name: str,
    tracking_uri: str,
    answers: Output[Dataset],
) -> NamedTuple("Outputs", [("row_model", str), ("generate_seconds", float), ("answer_cost_usd", float),
                            ("note", str), ("fallback", str)]):
    """Answer the test questions as a reference row that runs a model: an untuned base, or the champion.

    Args:
        row: {"row_kind": "base" | "champion", "base_model", "model"}.
        questions: the test questions (FastChat question.jsonl).
        max_new_tokens: longest answer per turn of a local model.
        registered_model_name: where the champion is looked up.
        tracking_uri: the MLflow tracking server.
        answers: FastChat model_answer rows (empty when the row could not answer; see `note`).

    Returns:
        row_model (the champion's version), generate_seconds, answer_cost_usd (0), note
        (why the row has no answers), fallback (JSON of the champion's logged metrics and judge,
        when it exists but could not be re-evaluated).
    """
    import json
    import tempfile
    from collections import namedtuple

    from selfguided.components.steps.reference import answer_reference_row

    result = answer_reference_row(row, questions.path, answers.path, max_new_tokens=max_new_tokens,
                                  registered_model_name=registered_model_name, tracking_uri=tracking_uri,
                                  workdir=tempfile.mkdtemp())
    fallback = json.dumps({"metrics": result.fallback_metrics, "judge": result.fallback_judge}) \
        if result.fallback_metrics else ""
    outputs = namedtuple("Outputs", ["row_model", "generate_seconds", "answer_cost_usd", "note", "fallback"])
    return outputs(result.row_model, result.generate_seconds, result.answer_cost_usd, result.note, fallback)
