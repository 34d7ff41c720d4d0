"""The experiment's GenAI pages "Datasets" and "Judges" (MLflow 3), so editors see what was graded and by whom.

- **Datasets**: the run's test questions (the judge step's input, FastChat question.jsonl) as a
  GenAI evaluation dataset of the experiment: one record per question, `inputs` = its `turns` and
  `category`, `expectations` = `{"reference": [one text per turn]}` where the question has a
  reference answer, tags `question_id` (and `seen`). Its name holds a hash of the records
  (`selfguided-questions-<sha12>`), so a run with the same questions reuses the dataset (linked to
  the experiment if it is not yet) and never makes a second one. Every row run logs it as its
  input (context `evaluation`): a run's page shows what it was evaluated on.
- **Judges**: every juror of the run registered as an MLflow judge named after its model (the source
  id of its `overall` feedback on the traces): `make_judge` with our judge prompt as instructions
  (the system message, then the user template with `{question}` as `{{ inputs }}`, `{answer}` as
  `{{ outputs }}`, `{reference}` as `{{ expectations }}`, then the output format), the model as
  `openai:/<model>` (every judge speaks the OpenAI API, on the run's endpoint or its own, `name@url`),
  and a description naming the endpoint, the prompt set's registry versions and the feedback the
  traces carry. A judge is registered again only when that content changed (a new judge version);
  MLflow runs none of them (registering calls no LLM; "Evaluating traces" stays off).
  The offline stand-in `offline-heuristic` is no LLM and is never registered as one: it goes in as
  a code scorer that runs the heuristic, which MLflow accepts only where custom code scorers are
  enabled (MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS on the server, or in this process for a local
  store); elsewhere the step says so and goes on.

Nothing here may fail the register step: `publish_genai_pages` prints a `[selfguided] register:`
line for whatever MLflow refuses, as the traces do.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from selfguided.components.evaluation.judge_summary import JudgeSummary
from selfguided.components.judging.judge import Judge
from selfguided.components.judging.offline import OFFLINE_JUDGE
from selfguided.components.judging.rules import SCORE_NAMES
from selfguided.components.registry.prompts import prompt_uri

DATASET_PREFIX = "selfguided-questions-"
DATASET_CONTEXT = "evaluation"
FEEDBACK_NAME = "overall"
"""The feedback each judge's verdict is on a judged answer's trace (registry/traces.py)."""
DIGEST_TAG = "selfguided.questions_sha256"


def _warn(what: str, exc: BaseException) -> None:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    print(f"[selfguided] register: {what} ({type(exc).__name__}: {first})", flush=True)


# --- Datasets -----------------------------------------------------------------------------------

def question_records(questions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """FastChat questions as evaluation dataset records (inputs, expectations where there is a
    reference answer, tags), in the file's order."""
    records = []
    for question in questions:
        record: dict[str, Any] = {
            "inputs": {"turns": [str(t) for t in question["turns"]], "category": str(question["category"])},
            "tags": {"question_id": str(question["question_id"]),
                     **({"seen": str(question["seen"]).lower()} if "seen" in question else {})},
        }
        if question.get("reference"):
            record["expectations"] = {"reference": [str(t) for t in question["reference"]]}
        records.append(record)
    return records


def records_digest(records: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 of the records' content (question id, inputs, expectations), key order aside."""
    canonical = [[r["tags"]["question_id"], r["inputs"], r.get("expectations")] for r in records]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def dataset_name(digest: str) -> str:
    return f"{DATASET_PREFIX}{digest[:12]}"


def ensure_questions_dataset(tracking_uri: str, experiment_id: str, questions_file: str | Path):
    """The questions of `questions_file` as the experiment's evaluation dataset (an existing one with
    the same records is reused and linked to the experiment); returns MLflow's EvaluationDataset."""
    import mlflow
    from mlflow import MlflowClient

    from selfguided.components.data.questions import load_questions

    records = question_records(load_questions(questions_file))
    digest = records_digest(records)
    name = dataset_name(digest)
    mlflow.set_tracking_uri(tracking_uri)  # records go through the fluent store, as in MLflow's own API
    client = MlflowClient(tracking_uri=tracking_uri)
    # Scoped to the experiment: under basic-auth a search without experiment_ids is refused to every
    # user but the admin (mlflow/server/auth/__init__.py at 3.17: validate_can_search_evaluation_datasets
    # requires experiment ids the caller may read), and the pipeline runs as its own, non-admin user.
    query = dict(filter_string=f"name = '{name}'", order_by=["created_time ASC"], max_results=10)
    found = list(client.search_datasets(experiment_ids=[experiment_id], **query))
    if not found:  # the same questions in another experiment: one dataset, linked to both, where allowed
        found = _search_everywhere(client, query)
    if found:
        dataset = found[0]
        if experiment_id not in dataset.experiment_ids:
            dataset = client.add_dataset_to_experiments(dataset.dataset_id, [experiment_id])
    else:
        references = sum(1 for r in records if "expectations" in r)
        categories = sorted({r["inputs"]["category"] for r in records})
        dataset = client.create_dataset(name, experiment_id=[experiment_id], tags={
            DIGEST_TAG: digest, "source": Path(questions_file).name, "questions": str(len(records)),
            "with_reference": str(references), "categories": ",".join(categories),
            "description": (f"The test questions of a selfguided run: {len(records)} FastChat questions "
                            f"({', '.join(categories)}), {references} with a reference answer."),
        })
    if len(dataset.records) != len(records):  # new, or a run stopped between creating and filling it
        dataset.merge_records([dict(r, tags=dict(r["tags"])) for r in records])  # upserts by inputs
    return client.get_dataset(dataset.dataset_id)


def dataset_records(tracking_uri: str, dataset_id: str) -> list:
    """The records of an evaluation dataset in the store at `tracking_uri`. Not
    `MlflowClient(uri).get_dataset(id).records`: that property loads lazily from the *global*
    tracking store (mlflow/entities/evaluation_dataset.py at 3.17, `records`: `_get_store()` with no
    URI), so with another global URI it reads nothing, silently."""
    from mlflow.tracking._tracking_service.utils import _get_store

    records, _ = _get_store(tracking_uri)._load_dataset_records(dataset_id, max_results=None)
    return list(records or [])


def _search_everywhere(client, query: dict) -> list:
    """Datasets of every experiment; [] where the server allows that search to its admin only."""
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_datasets(**query))
    except MlflowException as exc:
        if exc.error_code == "PERMISSION_DENIED":
            return []
        raise


def link_dataset(tracking_uri: str, dataset, run_ids: Iterable[str]) -> None:
    """Log the dataset as each run's input (context `evaluation`): the run page shows it."""
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client = MlflowClient(tracking_uri=tracking_uri)
    entity = dataset._to_mlflow_entity()
    for run_id in run_ids:
        client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])])


# --- Judges -------------------------------------------------------------------------------------

def run_judges(summaries: Iterable[JudgeSummary]) -> list[Judge]:
    """The jurors of the rows' juries (each summary's `jury`), each once, in order."""
    judges: dict[tuple[str, str, str], Judge] = {}
    for summary in summaries:
        for usage in summary.jury.judges:
            judge = usage.as_judge()
            judges.setdefault((judge.identity.model, judge.identity.prompt_id, judge.endpoint), judge)
    return list(judges.values())


def judge_model_uri(model: str) -> str:
    """Our judge model as MLflow names one: every judge is a model on an OpenAI-compatible endpoint."""
    return f"openai:/{model}"


def _safe_url(url: str) -> str:
    """The endpoint without credentials, query or fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", "")) \
        if parts.hostname else url


def prompt_set(prompt_id: str) -> list[str]:
    """The prompts a judge of this prompt set uses: turn 1, later turns, and both with a reference."""
    from selfguided.components.judging.prompts import MULTI_TURN_PROMPT, REFERENCE_ANSWER_PROMPTS, SINGLE_PROMPT

    if prompt_id == SINGLE_PROMPT:
        return [SINGLE_PROMPT, MULTI_TURN_PROMPT, *REFERENCE_ANSWER_PROMPTS.values()]
    return [prompt_id]


_TEMPLATE_FIELDS = (
    ("{category_label} ({category})", "the question's `category`"),
    ("{conversation}", "(the earlier `turns` of the question, each with the assistant's answer)"),
    ("{question}", "{{ inputs }}"),
    ("{answer}", "{{ outputs }}"),
    ("{reference}", "{{ expectations }}"),
)
_OTHER_FIELD = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")


def judge_instructions(prompt_id: str) -> str:
    """Our judge prompt as MLflow judge instructions: the system message, the user template with
    its fields as MLflow's variables (question: inputs, answer: outputs, reference: expectations),
    the output format."""
    from selfguided.components.judging.prompts import load_prompt

    prompt = load_prompt(prompt_id)
    user = prompt.user_template
    for field, text in _TEMPLATE_FIELDS:
        user = user.replace(field, text)
    user = _OTHER_FIELD.sub(r"the question's `\1` in {{ inputs }}", user)
    return "\n\n".join(part for part in (prompt.system, user, prompt.output_format) if part)


def judge_description(judge: Judge, registered: Mapping[str, tuple[str, int]]) -> str:
    """What the judges page says about a judge: endpoint, prompts and their registry versions,
    and the feedback its verdicts are on the traces."""
    identity = judge.identity
    where = f"its own endpoint {_safe_url(judge.endpoint)}" if judge.endpoint else "the run's LLM endpoint"
    prompts = ", ".join(f"{p} ({prompt_uri(registered[p])})" if p in registered else p
                        for p in prompt_set(identity.prompt_id))
    criteria = ", ".join(c for c in SCORE_NAMES if c != FEEDBACK_NAME)
    return (f"LLM judge {identity.model} of the selfguided jury, on {where} (OpenAI API), mode {identity.mode}. "
            f"Prompts: {prompts}; the instructions are the first one's. On each judged answer's trace its verdict is "
            f"the feedback `{FEEDBACK_NAME}` (source LLM_JUDGE, id {identity.model}), 1-10, with {criteria} in its "
            f"metadata. Registered by the register step for the record: MLflow does not run it.")


def code_description(judge: Judge) -> str:
    """What the judges page says about a judge that is no LLM (the offline stand-in)."""
    return (f"NOT an LLM: {judge.identity.model} ({judge.identity.prompt_id}). {judge.disclaimer} It scores surface "
            "features (overlap with the request, the category's form and length, Korean share, repetition) and "
            f"applies the Korean rule (components/judging/offline.py); its verdicts are the traces' `{FEEDBACK_NAME}` "
            "feedback with source CODE. This code scorer runs it where the selfguided package is installed.")


def offline_verdict(inputs: Mapping[str, Any], outputs: Any, expectations: Mapping[str, Any] | None = None
                    ) -> tuple[float, str]:
    """The stand-in's overall score and rationale of `outputs` as the answer to the last of `inputs`'
    turns, as the judge step computes it (judging/offline.py, the Korean rule included)."""
    from selfguided.components.judging.offline import heuristic_scores
    from selfguided.components.judging.rules import judgment_row, mean_of_criteria, reference_for

    turns = [str(t) for t in inputs.get("turns") or [""]]
    question = {"question_id": "", "category": str(inputs.get("category", "")), "turns": turns,
                "reference": list((expectations or {}).get("reference") or [])}
    text = outputs if isinstance(outputs, str) else json.dumps(outputs, ensure_ascii=False)
    scores, rationale = heuristic_scores(question["category"], turns[-1], text,
                                         reference=reference_for(question, len(turns)) or None)
    row = judgment_row(question=question, turn=len(turns), answer=text, model="", judge=OFFLINE_JUDGE,
                       user_prompt=turns[-1], judgment=rationale,
                       ratings={**scores, "overall": mean_of_criteria(scores)}, error=None)
    return row["score"], rationale


def offline_heuristic(inputs, outputs, expectations=None):
    # The body is what MLflow stores for this code scorer: it runs the stand-in where selfguided is installed.
    from mlflow.entities import Feedback

    from selfguided.components.registry.genai_pages import offline_verdict

    value, rationale = offline_verdict(inputs, outputs, expectations)
    return Feedback(value=value, rationale=rationale)


def build_judge(judge: Judge, registered: Mapping[str, tuple[str, int]]):
    """The MLflow judge (or, for a judge that is no LLM: the offline stand-in, a code scorer) of one
    juror; builds it, calls no LLM."""
    if not judge.calls_llm:
        from mlflow.genai.scorers import scorer

        return scorer(offline_heuristic, name=judge.identity.model, description=code_description(judge),
                      aggregations=["mean"])
    from mlflow.genai.judges import make_judge

    return make_judge(name=judge.identity.model, instructions=judge_instructions(judge.identity.prompt_id),
                      model=judge_model_uri(judge.identity.model), description=judge_description(judge, registered),
                      feedback_value_type=int)


def _content(serialized: Mapping[str, Any]) -> dict[str, Any]:
    """A serialized scorer without what changes with the MLflow client, not with the judge."""
    return {k: v for k, v in serialized.items() if k not in ("mlflow_version", "serialization_version")}


def _registered_content(tracking_uri: str, experiment_id: str) -> dict[str, dict[str, Any]]:
    """name -> the latest registered version's serialized content, read without rebuilding the
    scorers (MLflow refuses to rebuild a code scorer where custom scorers are off)."""
    from dataclasses import asdict

    from mlflow.tracking._tracking_service.utils import _get_store

    return {v.scorer_name: _content(asdict(v.serialized_scorer))
            for v in _get_store(tracking_uri).list_scorers(experiment_id)}


def register_judges(tracking_uri: str, experiment_id: str, judges: Iterable[Judge],
                    registered: Mapping[str, tuple[str, int]] | None = None) -> dict[str, str]:
    """Register each judge in the experiment unless its latest registered version says the same;
    returns name -> `registered`, `unchanged` or `refused: <why>` (what MLflow refused is printed)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # Scorer.register writes to the fluent API's store
    existing = _registered_content(tracking_uri, experiment_id)
    outcome = {}
    for judge in judges:
        name = judge.identity.model
        try:
            built = build_judge(judge, registered or {})
            if existing.get(name) == _content(built.model_dump()):
                outcome[name] = "unchanged"
                continue
            built.register(experiment_id=experiment_id)
            existing[name] = _content(built.model_dump())
            outcome[name] = "registered"
        except Exception as exc:  # noqa: BLE001 - e.g. custom code scorers off, an unknown model form
            _warn(f"{name} is no LLM, so it goes on the Judges page only as a code scorer, which MLflow takes where "
                  "MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS=true (server, or this process for a local store); not there"
                  if not judge.calls_llm else f"judge {name} is not on the experiment's Judges page", exc)
            outcome[name] = f"refused: {type(exc).__name__}"
    return outcome


# --- The register step's hook -------------------------------------------------------------------

def publish_genai_pages(tracking_uri: str, experiment_id: str, *, summaries: Iterable[JudgeSummary],
                        run_ids: Sequence[str] = (), questions_file: str | Path | None = None) -> dict[str, Any]:
    """Once per pipeline run, after its rows are logged: the questions as the experiment's dataset
    (each row run's input) and the run's judges on its Judges page. Never raises: what MLflow refuses
    is printed. Returns what it did: `dataset` (name or ""), `judges` (register_judges' outcome)."""
    done: dict[str, Any] = {"dataset": "", "judges": {}}
    if questions_file is not None:
        try:
            dataset = ensure_questions_dataset(tracking_uri, experiment_id, questions_file)
            done["dataset"] = dataset.name
            link_dataset(tracking_uri, dataset, run_ids)
        except Exception as exc:  # noqa: BLE001 - the evidence is logged already; say what is missing, go on
            _warn("the test questions are not on the experiment's Datasets page", exc)
    try:
        judges = run_judges(summaries)
        registered: Mapping[str, tuple[str, int]] = {}
        if any(j.calls_llm for j in judges):
            from selfguided.components.registry.prompts import register_prompts

            try:
                registered = register_prompts(tracking_uri, experiment_id=experiment_id)  # unchanged: read only
            except Exception as exc:  # noqa: BLE001 - the judges then name the prompt files only
                _warn("the judges name the prompt files, not their registry versions", exc)
        done["judges"] = register_judges(tracking_uri, experiment_id, judges, registered)
    except Exception as exc:  # noqa: BLE001
        _warn("the run's judges are not on the experiment's Judges page", exc)
    return done
