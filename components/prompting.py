"""The text format a small model is trained on and asked with, for both arms.

`unscored` is the Alpaca/Self-Instruct baseline: instruction (and input) -> response.
`self_guided` with the `condition` strategy (SteerLM-style) writes the judge's four scores into
the prompt; at inference the model is asked for top scores. With the `filter` strategy
(AlpaGasus-style) the prompt is the plain one, only the data differs.
"""

from __future__ import annotations

from typing import Mapping

CRITERIA: tuple[str, ...] = ("helpfulness", "relevance", "accuracy", "detail")
CRITERIA_KO = {"helpfulness": "유용성", "relevance": "관련성", "accuracy": "정확성", "detail": "상세함"}
TOP_SCORES: dict[str, int] = {c: 10 for c in CRITERIA}
ARMS: tuple[str, ...] = ("unscored", "self_guided")
STRATEGIES: tuple[str, ...] = ("condition", "filter")

# Kept short: every token of template is paid for in every training sample.
_HEADER = "### 지시:\n"
_INPUT = "\n\n### 입력:\n"
_SCORES = "\n\n### 목표 평가:\n"
_RESPONSE = "\n\n### 응답:\n"


def format_scores(scores: Mapping[str, float]) -> str:
    return ", ".join(f"{CRITERIA_KO[c]} {int(round(float(scores[c])))}" for c in CRITERIA)


def format_prompt(instruction: str, input_text: str = "", scores: Mapping[str, float] | None = None) -> str:
    """The prompt up to and including the response header; the model continues with the answer."""
    text = _HEADER + instruction.strip()
    if input_text and input_text.strip():
        text += _INPUT + input_text.strip()
    if scores is not None:
        text += _SCORES + format_scores(scores)
    return text + _RESPONSE


def conditions_on_scores(arm: str, strategy: str) -> bool:
    """Whether this arm's prompts carry the target scores (self_guided + condition)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    return arm == "self_guided" and strategy == "condition"


def inference_prompt(question: str, arm: str, strategy: str) -> str:
    """Prompt for an eval question: the self_guided/condition arm asks for top scores."""
    return format_prompt(question, scores=TOP_SCORES if conditions_on_scores(arm, strategy) else None)
