"""LLM judging of model answers: Vicuna-style single-answer grading of every turn.

Every answer turn of FastChat `question.jsonl` questions is graded on the four criteria plus an
overall rating, by one judge model through the client layer (cache, retries, cost): turn 1 with
`judge-single`, later turns with `judge-single-multi`, which shows the judge the conversation so
far and asks it to grade the answer to the last question (as FastChat's multi-turn single grading
does); each with its `-ref` variant when the question carries a reference answer for that turn.
Rows come from `rules.judgment_row`, which applies the Korean rule (KoMT-Bench's square-root
penalty on answers that are not in Korean; the prompt says such answers are penalised).

A jury (judging.jury) calls this once per judge, and once per repeat of the repeated sample.
Pairwise comparison against a baseline model is judging.pairwise (the CLI's `--mode pair`).
"""

from __future__ import annotations

from typing import Any

from selfguided.components.data.categories import CATEGORY_LABELS_KO
from selfguided.components.judging.answers import answer_turns, check_answers
from selfguided.components.judging.prompts import (
    MULTI_TURN_PROMPT,
    REFERENCE_ANSWER_PROMPTS,
    SINGLE_PROMPT,
    Prompt,
    load_prompt,
)
from selfguided.components.judging.judge import Item, Judge
from selfguided.components.judging.rules import JudgeIdentity, judgment_row, reference_for
from selfguided.components.llm.request import LLMRequest, UsageSummary


def single_identity(model: str) -> JudgeIdentity:
    """The identity of `model` grading single answers with the judge-single prompt set (its
    turn-1 prompt names the set's version)."""
    prompt = load_prompt(SINGLE_PROMPT)
    return JudgeIdentity(model, prompt.name, str(prompt.version), "single")


class LLMJudge(Judge):
    """A model on an OpenAI-compatible endpoint as a judge (judge.Judge); grades through `config`
    (an LLMConfig: its model, endpoint, key, cache, temperature). Without a config it only says who
    it is (e.g. read back from a judgments file)."""

    def __init__(self, identity: JudgeIdentity, endpoint: str = "", config: Any = None) -> None:
        self.identity, self.endpoint, self.config = identity, endpoint, config

    @classmethod
    def named(cls, model: str, endpoint: str = "", config: Any = None) -> LLMJudge:
        return cls(single_identity(model), endpoint, config)

    def grade(self, questions: list[dict[str, Any]], answers: list[dict[str, Any]], *, repeat: int = 0,
              items: set[Item] | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
        if self.config is None:
            raise ValueError(f"judge {self.label} has no endpoint configuration to grade with")
        rows, usage = judge_with_llm(questions, answers, self.config, repeat=repeat, items=items)
        return rows, usage.to_metrics("judge")


def question_fields(question: dict[str, Any]) -> dict[str, str]:
    """The fields every judge prompt fills in from the question (category, its Korean label, turn 1)."""
    category = question["category"]
    return {"category": category, "category_label": CATEGORY_LABELS_KO.get(category, category),
            "question": question["turns"][0]}


def user_prompt(request: LLMRequest) -> str:
    """The user message a request ends with (what a judgment row shows as `user_prompt`)."""
    return request.messages[-1]["content"]


def _conversation(question: dict[str, Any], answers: list[str], turn: int) -> str:
    """The conversation before `turn` (1-based), as the multi-turn judge prompt shows it."""
    lines = []
    for k in range(turn - 1):
        lines += [f"### User:\n{question['turns'][k]}", f"### Assistant:\n{answers[k]}"]
    return "\n\n".join(lines)


def judge_with_llm(
    questions: list[dict[str, Any]],
    answers: list[dict[str, Any]],
    config: Any,
    *,
    repeat: int = 0,
    items: set[Item] | None = None,
) -> tuple[list[dict[str, Any]], UsageSummary]:
    """Grade every answer turn (or only `items`) with the judge of `config` (an LLMConfig).

    Returns FastChat model_judgment rows (one per graded turn, failures included with their
    `error`) and the client's usage. `repeat` > 0 asks again (a distinct cache key, a real call).
    """
    from selfguided.components.judging.verdicts import ask, parse_ratings
    from selfguided.components.llm.client import LLMClient

    by_id = {q["question_id"]: q for q in questions}
    check_answers(answers, by_id)
    prompts: dict[str, Prompt] = {name: load_prompt(name) for name in (SINGLE_PROMPT, MULTI_TURN_PROMPT)}
    prompts |= {REFERENCE_ANSWER_PROMPTS[name]: load_prompt(REFERENCE_ANSWER_PROMPTS[name]) for name in list(prompts)}
    judge = single_identity(config.model)
    client = LLMClient(config, step="judge")
    graded = [(a, by_id[a["question_id"]], k + 1) for a in answers for k in range(len(answer_turns(a)))
              if items is None or (a["question_id"], k + 1) in items]
    requests, used = [], []
    for answer, question, turn in graded:
        texts = answer_turns(answer)
        fields = {**question_fields(question), "question": question["turns"][turn - 1], "answer": texts[turn - 1]}
        name = SINGLE_PROMPT if turn == 1 else MULTI_TURN_PROMPT
        if turn > 1:
            fields["conversation"] = _conversation(question, texts, turn)
        if reference_for(question, turn):
            name, fields["reference"] = REFERENCE_ANSWER_PROMPTS[name], reference_for(question, turn)
        requests.append(prompts[name].request(**fields).repeated(repeat))
        used.append(name)
    verdicts = ask(client, list(prompts.values()), requests, lambda text: parse_ratings(text, with_overall=True))
    rows = []
    for (answer, question, turn), request, verdict, prompt_id in zip(graded, requests, verdicts, used):
        rows.append({**judgment_row(
            question=question, turn=turn, answer=answer_turns(answer)[turn - 1], model=answer["model_id"],
            judge=judge, user_prompt=user_prompt(client.as_sent(request)), judgment=verdict.text,
            ratings=verdict.parsed[0] if verdict.parsed is not None else None, error=verdict.error,
        ), "prompt": prompt_id})  # the prompt of this turn (the identity names the set)
    usage = client.usage
    usage.records = len(rows)
    usage.failed = sum(1 for r in rows if r["error"] is not None)
    usage.done = usage.records - usage.failed
    return rows, usage
