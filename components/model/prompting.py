"""The text format a small model is trained on and asked with, for both arms.

`unscored` is the Alpaca/Self-Instruct baseline: instruction (and input) -> response.
`self_guided` with the `condition` strategy (SteerLM-style) writes the judge's four scores into
the prompt; at inference the model is asked for top scores. With the `filter` strategy
(AlpaGasus-style) the prompt is the plain one, only the data differs. `control` is trained like
`self_guided` on data whose scores carry no information (see split.py), so it is prompted the
same way.

A conversation (several turns) is the turns' prompts one after the other, each followed by the
model's answer; the last prompt ends with the response header. `chat_template` writes the same
format as a Jinja chat template, so any OpenAI-compatible server prompts a model as it was
trained.
"""

from __future__ import annotations

from typing import Mapping

CRITERIA: tuple[str, ...] = ("helpfulness", "relevance", "accuracy", "detail")
CRITERIA_KO = {"helpfulness": "유용성", "relevance": "관련성", "accuracy": "정확성", "detail": "상세함"}
TOP_SCORES: dict[str, int] = {c: 10 for c in CRITERIA}
ARMS: tuple[str, ...] = ("unscored", "self_guided", "control")
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
    """Whether this arm's prompts carry the target scores (self_guided or control, with condition)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    return arm in ("self_guided", "control") and strategy == "condition"


def inference_prompt(question: str, arm: str, strategy: str) -> str:
    """Prompt for an eval question: the arms that trained on scores (condition strategy) ask for top scores."""
    return format_prompt(question, scores=TOP_SCORES if conditions_on_scores(arm, strategy) else None)


_TURN_SEPARATOR = "\n\n"


def conversation_prompt(turns: list[str], answers: list[str], arm: str, strategy: str) -> str:
    """Prompt for the last of `turns`, with the earlier turns and the model's `answers` to them.

    `answers` holds one answer per earlier turn (len(turns) - 1 of them).
    """
    if not turns or len(answers) != len(turns) - 1:
        raise ValueError(f"a conversation needs N turns and N-1 earlier answers, got {len(turns)} and {len(answers)}")
    parts = []
    for i, turn in enumerate(turns):
        parts.append(inference_prompt(turn, arm, strategy))
        if i < len(answers):
            parts.append(answers[i].strip() + _TURN_SEPARATOR)
    return "".join(parts)


def chat_template(arm: str, strategy: str) -> str:
    """A Jinja chat template equal to `conversation_prompt` for [user, assistant, ..., user]
    messages (system messages are not part of the trained format and are left out)."""
    scores = (_SCORES + format_scores(TOP_SCORES)) if conditions_on_scores(arm, strategy) else ""

    def literal(text: str) -> str:
        return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")

    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{ '{literal(_HEADER)}' + message['content'] | trim + '{literal(scores + _RESPONSE)}' }}}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{ message['content'] | trim + '{literal(_TURN_SEPARATOR)}' }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )
