"""Prompts are data: components/judging/prompts/<name>-v<version>.json (name, version, system,
user_template, output_format, reask, json_schema). A new wording is a new version, so cached
answers of the old one are never reused for it, and every judgment names the version it used.

The prompt sets: `score` rates a seed record; `judge-single` grades turn 1 of an answer and
`judge-single-multi` a later turn (it shows the conversation so far); their `-ref` variants show
the judge a reference answer (questions of the reference-answer categories, see
data.attach_references); `judge-pair` compares two answers (judging.pairwise); `answer` is what
a teacher row is asked (judging.teacher).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from selfguided.components.data.jsonl import DataError
from selfguided.components.llm.request import LLMRequest

SCORE_PROMPT = "score-v1"
SINGLE_PROMPT = "judge-single-v1"
MULTI_TURN_PROMPT = "judge-single-multi-v1"
PAIR_PROMPT = "judge-pair-v1"
# With a reference answer for the turn (FastChat's reference answers).
REFERENCE_ANSWER_PROMPTS = {SINGLE_PROMPT: "judge-single-ref-v1", MULTI_TURN_PROMPT: "judge-single-multi-ref-v1"}
ANSWER_PROMPT = "answer-v1"
_PROMPT_FIELDS = ("name", "version", "system", "user_template")


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt loaded from components/judging/prompts/<name>-v<version>.json."""

    name: str
    version: int
    system: str
    user_template: str
    """str.format template of the user message (the fields differ per prompt)."""
    output_format: str = ""
    """How the verdict must be written in text mode; appended to the user message (judges and scorers)."""
    reask: str = ""
    """Follow-up message when an answer carries no parsable verdict (judges and scorers)."""
    json_schema: dict[str, Any] | None = None
    """OpenAI json_schema response format, used where the endpoint supports structured output."""

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.version}"

    def request(self, **fields: str) -> LLMRequest:
        """The request for one item: JSON-schema variant with its text fallback (or text only)."""
        user = self.user_template.format(**fields)
        text = LLMRequest(self.id, [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{user}\n\n{self.output_format}"},
        ])
        if self.json_schema is None:
            return text
        return LLMRequest(
            self.id,
            [{"role": "system", "content": self.system}, {"role": "user", "content": user}],
            response_format={"type": "json_schema", "json_schema": self.json_schema},
            text_fallback=text,
        )

    def reask_request(self, original: LLMRequest, answer: str) -> LLMRequest:
        """Ask once more for the verdict alone, keeping the unparsable answer in the conversation."""
        follow_up = self.reask if original.response_format is not None else f"{self.reask}\n\n{self.output_format}"
        return LLMRequest(
            self.id,
            [*original.messages, {"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}],
            response_format=original.response_format,
            text_fallback=self.reask_request(original.text_fallback, answer) if original.text_fallback else None,
            repeat=original.repeat,
        )


def load_prompt(prompt_id: str) -> Prompt:
    """Load components/judging/prompts/<prompt_id>.json, e.g. 'judge-single-v1'; errors name the file and field."""
    path = Path(str(resources.files("selfguided.components.judging") / "prompts" / f"{prompt_id}.json"))
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json"))
        raise DataError(f"{path}: no such prompt (known: {', '.join(known)})")
    data = json.loads(path.read_text(encoding="utf-8"))
    missing = [f for f in _PROMPT_FIELDS if not data.get(f)]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    prompt = Prompt(**{f: data[f] for f in _PROMPT_FIELDS}, output_format=data.get("output_format", ""),
                    reask=data.get("reask", ""), json_schema=data.get("json_schema"))
    if prompt.id != prompt_id:
        raise DataError(f"{path}: name {prompt.name!r} and version {prompt.version!r} do not match the file name")
    return prompt

