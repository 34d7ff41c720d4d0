"""Pairwise judging against a baseline model (FastChat's `pairwise-baseline`): the CLI's
`selfguided judge --mode pair --baseline ANSWERS.jsonl`; the pipeline grades single answers.

Each answer's first turn is compared with the baseline model's answer to the same question, asked
twice with the positions swapped (FastChat's g1 / g2). A win counts only when both orders agree;
otherwise the pair is "inconsistent", and the share of consistent pairs is reported. Korean rule:
if exactly one of the two answers is not Korean, the Korean one wins the pair whatever the judge
said (g1/g2 keep the judge's own verdicts, so consistency is the judge's).

"Baseline" is the model compared against; "reference answers" are the answers a single-answer
judge is shown (rules.reference_for); "reference rows" are the evaluation's untuned, teacher and
champion rows (steps/reference.py).
"""

from __future__ import annotations

import time
from typing import Any

from selfguided.components.data.jsonl import DataError
from selfguided.components.judging.answers import check_answers, first_turn
from selfguided.components.judging.llm_judge import question_fields, user_prompt
from selfguided.components.judging.prompts import PAIR_PROMPT, load_prompt
from selfguided.components.judging.rules import JudgeIdentity, is_korean
from selfguided.components.judging.verdicts import Verdict, ask, parse_pair_verdict
from selfguided.components.llm.request import UsageSummary


def judge_pairs(
    questions: list[dict[str, Any]], answers: list[dict[str, Any]], baseline_answers: list[dict[str, Any]],
    config: Any,
) -> tuple[list[dict[str, Any]], UsageSummary]:
    """Compare the first turn of every answer with the baseline model's answer to the same
    question, in both orders; returns FastChat pairwise model_judgment rows and usage."""
    from selfguided.components.llm.client import LLMClient

    if not baseline_answers:
        raise ValueError("pairwise judging needs the baseline model's answers")
    by_id = {q["question_id"]: q for q in questions}
    check_answers(answers, by_id)
    prompt = load_prompt(PAIR_PROMPT)
    judge = JudgeIdentity(config.model, prompt.name, str(prompt.version), "pair")
    client = LLMClient(config, step="judge")
    baselines = {r["question_id"]: r for r in baseline_answers}
    baseline_model = baseline_answers[0].get("model_id")
    pairs = [(a, _baseline_for(a, baselines)) for a in answers if a.get("model_id") != baseline_model]
    requests = []
    for answer, baseline in pairs:
        fields = question_fields(by_id[answer["question_id"]])
        mine, theirs = first_turn(answer), first_turn(baseline)
        requests.append(prompt.request(**fields, answer_a=mine, answer_b=theirs))  # g1: model_1 first
        requests.append(prompt.request(**fields, answer_a=theirs, answer_b=mine))  # g2: swapped
    verdicts = ask(client, prompt, requests, parse_pair_verdict)
    rows = []
    consistent = judged = 0
    for k, (answer, baseline) in enumerate(pairs):
        g1, g2 = verdicts[2 * k], verdicts[2 * k + 1]
        g1_winner = _winner(g1, swapped=False)
        g2_winner = _winner(g2, swapped=True)
        error = g1.error or g2.error
        if error is None:
            judged += 1
            consistent += g1_winner == g2_winner
        winner = "error" if error else g1_winner if g1_winner == g2_winner else "inconsistent"
        penalty = {"model_1": not is_korean(first_turn(answer)), "model_2": not is_korean(first_turn(baseline))}
        if error is None and penalty["model_1"] != penalty["model_2"]:
            winner = "model_2" if penalty["model_1"] else "model_1"
        rows.append({
            "question_id": answer["question_id"],
            "model_1": answer["model_id"],
            "model_2": baseline["model_id"],
            "g1_winner": g1_winner,
            "g2_winner": g2_winner,
            "winner": winner,
            "judge": judge.to_json(),
            "g1_user_prompt": user_prompt(client.as_sent(requests[2 * k])),
            "g1_judgment": g1.text,
            "g2_user_prompt": user_prompt(client.as_sent(requests[2 * k + 1])),
            "g2_judgment": g2.text,
            "category": by_id[answer["question_id"]]["category"],
            "turn": 1,
            "tstamp": time.time(),
            "error": error,
            "korean_penalty": penalty,
        })
    usage = client.usage
    usage.pair_consistency = consistent / judged if judged else None
    usage.records = len(rows)
    usage.failed = sum(1 for r in rows if r["error"] is not None)
    usage.done = usage.records - usage.failed
    return rows, usage


def _baseline_for(answer: dict[str, Any], baselines: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    baseline = baselines.get(answer["question_id"])
    if baseline is None:
        raise DataError(f"baseline answers: none for question_id {answer['question_id']!r}")
    try:
        first_turn(baseline)
    except ValueError as exc:
        raise DataError(f"baseline answer to question_id {answer['question_id']!r}: {exc}") from None
    return baseline


def _winner(verdict: Verdict, swapped: bool) -> str:
    """The verdict in model_1 / model_2 terms (g2 shows model_2's answer as A), or "error"."""
    if verdict.parsed is None:
        return "error"
    side = verdict.parsed[0]
    if side == "tie":
        return "tie"
    return {"A": "model_2", "B": "model_1"}[side] if swapped else {"A": "model_1", "B": "model_2"}[side]
