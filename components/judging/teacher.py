"""Teacher rows: an API model (the paper's ChatGPT row) answers the test questions through the
client layer, every turn with the conversation so far, with the `answer` prompt."""

from __future__ import annotations

import time
from typing import Any

from selfguided.components.judging.prompts import ANSWER_PROMPT, load_prompt
from selfguided.components.llm.client import LLMClient
from selfguided.components.llm.config import LLMConfig
from selfguided.components.llm.request import LLMRequest, UsageSummary


def answer_with_llm(questions: list[dict[str, Any]], config: LLMConfig) -> tuple[list[dict[str, Any]], UsageSummary]:
    """A teacher's FastChat model_answer rows: every turn asked with the conversation so far.

    A turn the API could not answer ends that conversation: the row keeps the turns answered
    before it and says why in `error`, so the judge records the rest as failed, never as a score.
    """
    prompt = load_prompt(ANSWER_PROMPT)
    client = LLMClient(config, step="teacher")
    answers: list[list[str]] = [[] for _ in questions]
    errors: dict[int, str] = {}
    for k in range(max((len(q["turns"]) for q in questions), default=0)):
        asked = [i for i, q in enumerate(questions) if len(q["turns"]) > k and i not in errors]
        requests = []
        for i in asked:
            messages = [{"role": "system", "content": prompt.system}]
            for turn, earlier in zip(questions[i]["turns"], answers[i]):
                messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": earlier}]
            messages.append({"role": "user", "content": questions[i]["turns"][k]})
            requests.append(LLMRequest(prompt.id, messages))
        for i, result in zip(asked, client.run(requests, desc=f"teacher turn {k + 1} ({config.model})")):
            if result.ok:
                answers[i].append(result.text.strip())
            else:
                errors[i] = f"turn {k + 1}: {result.error}"
    rows = [
        {"question_id": q["question_id"], "answer_id": f"{config.model}-{q['question_id']}", "model_id": config.model,
         "choices": [{"index": 0, "turns": texts}], "tstamp": time.time(), "category": q["category"],
         **({"error": errors[i]} if i in errors else {})}
        for i, (q, texts) in enumerate(zip(questions, answers))
    ]
    usage = client.usage
    usage.records = len(questions)
    usage.failed = len(errors)
    usage.done = usage.records - usage.failed
    return rows, usage

