"""Every judged answer as an MLflow trace, so people can check the judge where they already look.

One trace per judgment row (one answer to one turn of one question, graded by the jury):

- request: the conversation the answer responded to, as chat messages (earlier turns with the
  row's own earlier answers, then the question of this turn);
- response: the answer;
- assessments: each judge's verdict as one `overall` feedback (the four criteria in its metadata
  and at the head of its rationale), its source the judge's own (judging/judge.Judge.mlflow_source:
  LLM_JUDGE with the judge model as id, CODE for a judge that is no LLM); a failed judge logs its
  error instead of a value; with more than one judge, the jury's score as `jury_overall` (the jury's
  source: CODE, id `selfguided-jury`). Each assessment's
  metadata names the prompt and its version (and the repeat, with repeated judging);
- linked to the row's MLflow run (`mlflow.sourceRun`), so the run's Traces tab lists them;
- tags: `row`, `row_kind`, `category`, `question_id`, `turn`, `pipeline_run`, and MLflow's
  `mlflow.linkedPrompts` when the prompts' registry versions are known. The blind review sample
  (`registry/review.py`) copies only request and response, so these stay out of the editors' view.

Editors add their own grade as a `score` feedback (1-10, source HUMAN), see `HUMAN_SCORE`.

Rows in the jury's shape (`judges: [{judge, scores, rationale, error, repeat}]`, judging/jury.py)
and in the one-judge shape (`judge`, `scores`, `judgment`) are both read by `judge_entries`; a
judge's identity has one shape, JudgeIdentity's JSON.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.judging.jury import Jury, judge_of
from selfguided.components.judging.rules import SCORE_NAMES, JudgeIdentity, mean_of_criteria
from selfguided.components.registry.prompts import prompt_uri

TRACE_NAME = "judged_answer"
HUMAN_SCORE = "score"
"""The feedback name editors use for their grade (1-10, source HUMAN): the review's label schema."""
JURY_SCORE = "jury_overall"
TRACE_TAGS = ("row", "row_kind", "category", "question_id", "turn", "pipeline_run")


@dataclass(frozen=True)
class JudgeEntry:
    """One judge's verdict on one answer, whatever shape the judgment row has."""

    identity: JudgeIdentity
    scores: dict[str, float] | None
    """the four criteria and `overall`; None when this judge failed (see `error`)."""
    rationale: str
    error: str | None
    repeat: int = 0

    @property
    def judge(self) -> str:
        return self.identity.name


def _identity(value: Any) -> JudgeIdentity:
    """A judge identity as the rows carry it (JudgeIdentity JSON). A row without one (hand-made
    judgments) is graded by an `unknown` judge rather than not shown at all."""
    return JudgeIdentity("unknown", "unknown", "0") if value is None else JudgeIdentity.from_json(value)


def _scores(scores: Any, overall: Any = None) -> dict[str, float] | None:
    if not isinstance(scores, Mapping):
        return None
    try:
        result = {c: float(scores[c]) for c in SCORE_NAMES if c != "overall"}
    except (KeyError, TypeError, ValueError):
        return None
    value = scores.get("overall", overall)
    result["overall"] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else mean_of_criteria(result)
    return result


def judge_entries(row: Mapping[str, Any]) -> list[JudgeEntry]:
    """Every judge's verdict in a judgment row: its `judges` list, or the row itself in today's shape."""
    entries = []
    if isinstance(row.get("judges"), list):
        for entry in row["judges"]:
            entries.append(JudgeEntry(_identity(entry.get("judge")),
                                      None if entry.get("error") else _scores(entry.get("scores")),
                                      str(entry.get("rationale") or ""), entry.get("error"),
                                      int(entry.get("repeat") or 0)))
        return entries
    scores = None if row.get("error") else _scores(row.get("scores"), row.get("score"))
    return [JudgeEntry(_identity(row.get("judge")), scores, str(row.get("judgment") or ""), row.get("error"))]


def conversations(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], list[dict[str, str]]]:
    """(question_id, turn) -> the chat messages answer `turn` responded to, rebuilt from the rows'
    `question` and `answer` fields (the earlier turns of the same question with the row's answers)."""
    by_question: dict[str, dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_question[str(row["question_id"])][int(row.get("turn", 1))] = row
    messages: dict[tuple[str, int], list[dict[str, str]]] = {}
    for question_id, turns in by_question.items():
        history: list[dict[str, str]] = []
        for turn in sorted(turns):
            row = turns[turn]
            history = history + [{"role": "user", "content": str(row.get("question") or row.get("user_prompt") or "")}]
            messages[(question_id, turn)] = history
            history = history + [{"role": "assistant", "content": str(row.get("answer") or "")}]
    return messages


def _source(judge) -> Any:
    """The MLflow assessment source of a judge's verdicts (judging/judge.Judge.mlflow_source)."""
    from mlflow.entities import AssessmentSource

    source_type, source_id = judge.mlflow_source
    return AssessmentSource(source_type=source_type, source_id=source_id)


def _rationale_text(judgment: str) -> str:
    """The judge's explanation: the `rationale` field of a structured (JSON) verdict, else the text."""
    text = judgment.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(parsed, dict) and isinstance(parsed.get("rationale"), str):
            return parsed["rationale"]
    return text


def _log_entry(trace_id: str, entry: JudgeEntry, prompt_uri: str) -> None:
    """One feedback per judge (and repeat): `overall`, with the four criteria in its metadata and
    rationale. One chip per judge keeps the trace view readable, and a trace costs one write per judge."""
    import mlflow
    from mlflow.entities import AssessmentError

    metadata = {**entry.identity.to_json(), "prompt_id": entry.identity.prompt_id, "repeat": str(entry.repeat)}
    if prompt_uri:
        metadata["prompt_uri"] = prompt_uri
    source = _source(judge_of(entry.identity))
    if entry.scores is None:
        mlflow.log_feedback(trace_id=trace_id, name="overall", source=source, metadata=metadata,
                            error=AssessmentError(error_code="JUDGE_FAILED", error_message=str(entry.error)[:1000]))
        return
    criteria = {name: entry.scores[name] for name in SCORE_NAMES if name != "overall"}
    said = _rationale_text(entry.rationale)
    metadata.update({name: f"{value:g}" for name, value in criteria.items()})
    summary = ", ".join(f"{name} {value:g}" for name, value in criteria.items())
    rationale = f"{summary}. {said}" if said else summary
    mlflow.log_feedback(trace_id=trace_id, name="overall", value=entry.scores["overall"], source=source,
                        metadata=metadata, rationale=rationale[:10000])


def log_judged_traces(
    judgments: Iterable[Mapping[str, Any]], *, run_id: str, tags: Mapping[str, str] | None = None,
    prompt_versions: Mapping[str, tuple[str, int]] | None = None,
) -> list[str]:
    """Log every judgment row as a trace in `run_id`'s experiment, linked to that run.

    judgments: judgment rows of one evaluation row (the judge step's judgments.jsonl).
    run_id: the row's MLflow run.
    tags: trace tags every trace gets (`row`, `row_kind`, `pipeline_run`); the rest come from the row.
    prompt_versions: prompt id as the rows name it (e.g. `judge-single-v1`) -> (registered prompt
        name, version), from `registry/prompts.register_prompts`, for `mlflow.linkedPrompts`.
    Returns the trace ids, in the rows' order. Traces are written in the background; call
    `mlflow.flush_trace_async_logging()` before reading them back.
    """
    import mlflow

    rows = list(judgments)
    messages = conversations(rows)
    prompt_versions = prompt_versions or {}
    trace_ids = []
    for row in rows:
        entries = judge_entries(row)
        linked = sorted({prompt_versions[e.identity.prompt_id] for e in entries
                         if e.identity.prompt_id in prompt_versions})
        row_tags = {**{k: str(v) for k, v in (tags or {}).items()},
                    "category": str(row.get("category", "")), "question_id": str(row["question_id"]),
                    "turn": str(row.get("turn", 1)), "model": str(row.get("model", ""))}
        if linked:
            row_tags["mlflow.linkedPrompts"] = json.dumps([{"name": n, "version": str(v)} for n, v in linked])
        with mlflow.start_span(TRACE_NAME, span_type="CHAT_MODEL", run_id=run_id) as span:
            span.set_inputs({"messages": messages[(str(row["question_id"]), int(row.get("turn", 1)))]})
            span.set_outputs(str(row.get("answer") or ""))
            span.set_attributes({"answer_chars": row.get("answer_chars"), "korean_ratio": row.get("korean_ratio"),
                                 "korean_penalty": row.get("korean_penalty")})
            mlflow.update_current_trace(tags=row_tags)
            for entry in entries:
                version = prompt_versions.get(entry.identity.prompt_id)
                _log_entry(span.trace_id, entry, prompt_uri(version) if version else "")
            members = list({e.judge: e.identity for e in entries}.values())
            if len(members) > 1 and isinstance(row.get("score"), (int, float)) and row.get("scores") is not None:
                jury = row.get("jury") or {}
                mlflow.log_feedback(trace_id=span.trace_id, name=JURY_SCORE, value=float(row["score"]),
                                    source=_source(Jury([judge_of(m) for m in members])),
                                    metadata={k: str(v) for k, v in jury.items()})
            trace_ids.append(span.trace_id)
    return trace_ids


_REGISTERED_PROMPTS: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}


def log_row_traces(row: RowJudgments) -> int:
    """The register step's hook, called inside an evaluation row's active MLflow run: every judgment
    of the judged row becomes a trace linked to that run (tags from the run: `row`, `row_kind`,
    `pipeline_run`), and the run is tagged with the registry version of each prompt its judgments
    used (`prompt/<prompt id>`). The prompts are registered once per process and experiment.
    Returns how many traces it logged."""
    import mlflow

    run = mlflow.active_run()
    if run is None or not row.judgments:
        return 0
    try:
        return _log_row_traces(run, row)
    except Exception as exc:  # noqa: BLE001 - the evidence is logged already; say what is missing, go on
        print(f"[selfguided] register: the judged answers of {row.row} were not logged as traces "
              f"({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})", flush=True)
        return 0


def _log_row_traces(run, row: RowJudgments) -> int:
    import mlflow

    from selfguided.components.registry.prompts import prompt_run_tags, register_prompts

    key = (mlflow.get_tracking_uri(), run.info.experiment_id)
    if key not in _REGISTERED_PROMPTS:
        try:
            _REGISTERED_PROMPTS[key] = register_prompts(key[0], experiment_id=key[1])
        except Exception as exc:  # noqa: BLE001 - e.g. a user who may not create prompts: traces still go in
            print(f"[selfguided] register: prompts not registered ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); traces name the prompt files only",
                  flush=True)
            _REGISTERED_PROMPTS[key] = {}
    prompts = _REGISTERED_PROMPTS[key]
    rows = row.judgments
    used = {e.identity.prompt_id for judgment in rows for e in judge_entries(judgment)}
    if prompt_run_tags(prompts, used):
        mlflow.set_tags(prompt_run_tags(prompts, used))
    tags = {k: run.data.tags.get(k, "") for k in ("row", "row_kind", "pipeline_run")}
    tags["row"] = tags["row"] or row.row
    return len(log_judged_traces(rows, run_id=run.info.run_id, tags=tags, prompt_versions=prompts))
