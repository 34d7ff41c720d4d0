"""Judging rules: one owner for what a judgment is, whoever grades (the offline heuristic or an LLM).

- Criteria: the four Vicuna criteria of `prompting.CRITERIA` plus `overall` (SCORE_NAMES).
- The mean of the four criteria: `mean_of_criteria`, used for seed scores, for an overall rating
  the judge left out, and by the offline judge.
- The Korean rule (as KoMT-Bench does): an answer whose Hangul share of letters (`korean_ratio`)
  is below KOREAN_MIN_RATIO counts as not written in Korean, and every score of it (each
  criterion and overall) becomes its square root: 9 -> 3, 4 -> 2, 1 stays 1. Both judges apply
  it through `apply_korean_rule`, so `korean_penalty: true` means the same thing in every row.
  Hangul syllables and jamo count as Hangul; Hanja and Latin letters count as other letters;
  digits, punctuation and spaces are ignored.
- One row builder, `judgment_row`: a FastChat `model_judgment` row extended with the four
  criteria, the turn, the category and whether it was trained on (`seen`), a harvested question's
  `slice`, the answer's length and the Korean rule's figures.
- Who graded: `JudgeIdentity` (model, prompt name, prompt version, mode), the one shape of a
  judge's identity in judgments, scored records, summaries and the gate.
- Rows of an evaluation have a readable label (`row_label`), for tables only: identity travels
  as separate fields (row_kind, base_model, arm), never parsed back from a label.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from selfguided.components.model.prompting import CRITERIA

SCORE_NAMES: tuple[str, ...] = (*CRITERIA, "overall")
KOREAN_MIN_RATIO = 0.5
ROW_KINDS: tuple[str, ...] = ("trained", "base", "teacher", "champion")


JUDGE_MODES: tuple[str, ...] = ("single", "pair", "score")


@dataclass(frozen=True)
class JudgeIdentity:
    """Who graded: the judge model, the prompt it was given (name and version) and the mode.

    `label` ("gpt-4o/judge-single-v1", "offline-heuristic/heuristic-v1") is what the gate compares:
    two rows are comparable only when graded by the same label. A jury has an identity too (see
    `judging.jury.jury_identity`); a jury of one is its judge.
    """

    model: str
    """The judge model as its endpoint knows it, `offline-heuristic`, or a jury's `jury(...)` name."""
    prompt: str
    """Prompt name, e.g. `judge-single` (components/judging/prompts/<name>-v<version>.json)."""
    prompt_version: str
    """Prompt version, e.g. `1`; a new wording is a new version."""
    mode: str = "single"
    """`single` (grade one answer), `pair` (compare two answers) or `score` (rate a seed record)."""

    def __post_init__(self) -> None:
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"unknown judge mode {self.mode!r} (known: {', '.join(JUDGE_MODES)})")

    @property
    def name(self) -> str:
        return self.model

    @property
    def prompt_id(self) -> str:
        return f"{self.prompt}-v{self.prompt_version}"

    @property
    def label(self) -> str:
        return f"{self.model}/{self.prompt_id}"

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JudgeIdentity:
        """From `to_json`'s dict; a missing or unknown field is a ValueError naming it."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a judge identity is an object with model, prompt, prompt_version, mode; got {data!r}")
        missing = [f for f in ("model", "prompt", "prompt_version") if not data.get(f)]
        if missing:
            raise ValueError(f"judge identity {dict(data)!r} lacks {', '.join(missing)}")
        return cls(str(data["model"]), str(data["prompt"]), str(data["prompt_version"]), str(data.get("mode", "single")))


def mean_of_criteria(scores: Mapping[str, float]) -> float:
    """The mean of the four criteria, rounded to 3 decimals."""
    return round(sum(float(scores[c]) for c in CRITERIA) / len(CRITERIA), 3)


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3  # syllables
        or 0x1100 <= code <= 0x11FF  # jamo
        or 0x3130 <= code <= 0x318F  # compatibility jamo
        or 0xA960 <= code <= 0xA97F  # jamo extended-A
        or 0xD7B0 <= code <= 0xD7FF  # jamo extended-B
    )


def korean_ratio(text: str) -> float:
    """Share of letters that are Hangul (digits, punctuation, spaces ignored); 0.0 without letters."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    return sum(_is_hangul(ch) for ch in letters) / len(letters)


def is_korean(text: str) -> bool:
    return korean_ratio(text) >= KOREAN_MIN_RATIO


def _sqrt_penalty(value: float) -> float:
    return round(math.sqrt(value), 3)


def apply_korean_rule(scores: Mapping[str, float], overall: float, answer: str
                      ) -> tuple[dict[str, float], float, float, bool]:
    """(scores, overall, korean_ratio, penalised): the square-root penalty on a non-Korean answer."""
    ratio = korean_ratio(answer)
    penalised = ratio < KOREAN_MIN_RATIO
    if penalised:
        return {c: _sqrt_penalty(scores[c]) for c in CRITERIA}, _sqrt_penalty(overall), ratio, True
    return {c: float(scores[c]) for c in CRITERIA}, float(overall), ratio, False


def row_label(row_kind: str, *, base_model: str = "", arm: str = "", model: str = "") -> str:
    """A readable name for a row of the evaluation: "tiny/self_guided", "base/tiny",
    "teacher/gpt-4o-mini", "champion/v3". A label only: never parsed back."""
    if row_kind not in ROW_KINDS:
        raise ValueError(f"unknown row kind {row_kind!r} (known: {', '.join(ROW_KINDS)})")
    if row_kind == "trained":
        return f"{base_model}/{arm}"
    name = model or base_model
    if row_kind == "champion" and name and not name.startswith("v"):
        name = f"v{name}"
    return f"{row_kind}/{name}" if name else row_kind


def judgment_row(
    *,
    question: Mapping[str, Any],
    turn: int,
    answer: str,
    model: str,
    judge: JudgeIdentity,
    user_prompt: str,
    judgment: str,
    ratings: Mapping[str, float] | None,
    error: str | None,
) -> dict[str, Any]:
    """One judgment: the grade of the answer to `turn` (1-based) of `question`. The row carries the
    turn's question and the answer text, so a trace or an editor's review shows what was graded.

    `ratings` holds the judge's four criteria and `overall` (None when the judge failed; then
    `error` says why and `score` is -1, as in FastChat). The Korean rule is applied here.
    """
    ratio = korean_ratio(answer)
    scores, score, penalised = None, -1.0, ratio < KOREAN_MIN_RATIO
    if ratings is not None:
        scores, score, ratio, penalised = apply_korean_rule(ratings, ratings["overall"], answer)
    return {
        "question_id": question["question_id"],
        "model": model,
        "judge": judge.to_json(),
        "user_prompt": user_prompt,
        "judgment": judgment,
        "score": score,
        "scores": scores,
        "category": question["category"],
        "seen": question.get("seen"),
        **({"slice": question["slice"]} if question.get("slice") else {}),  # harvested questions (data/questions.py)
        "turn": turn,
        "question": question["turns"][turn - 1] if turn - 1 < len(question.get("turns", [])) else "",
        "answer": answer,
        "answer_chars": len(answer),
        "korean_ratio": round(ratio, 3),
        "korean_penalty": penalised,
        "tstamp": time.time(),
        "error": error,
    }


def reference_for(question: Mapping[str, Any], turn: int) -> str:
    """The reference answer the judge is shown for `turn` (1-based) of `question`, or ""."""
    reference = question.get("reference") or []
    return reference[turn - 1] if turn - 1 < len(reference) and isinstance(reference[turn - 1], str) else ""


SCORE_MIN, SCORE_MAX = 1.0, 10.0
"""The judge's scale (the Korean rule's square root keeps scores in it)."""


def score_problem(value: Any) -> str | None:
    """Why `value` is not a judge score on the 1-10 scale, or None when it is one."""
    if value is None or isinstance(value, bool):
        return "no score"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"score {value!r} is not a number"
    if not math.isfinite(number):
        return f"score {value!r} is not finite"
    if number == -1:
        return "no score (-1, FastChat's mark of a failed judgment)"
    if not SCORE_MIN <= number <= SCORE_MAX:
        return f"score {number:g} is outside the judge's scale {SCORE_MIN:g}-{SCORE_MAX:g}"
    return None


def judgment_problem(judgment: Mapping[str, Any]) -> str | None:
    """Why a judgment row is not a usable grade (a judge error, an overall or a given criterion off the
    scale), or None when it is one. The one rule of what counts, for compare, the judge step and the jury alike."""
    problem = "judge error" if judgment.get("error") else score_problem(judgment.get("score"))
    if problem is None and isinstance(judgment.get("scores"), Mapping):
        problem = next((f"{c}: {p}" for c in CRITERIA if c in judgment["scores"]
                        and (p := score_problem(judgment["scores"][c]))), None)
    return problem



def judged_ok(row: Mapping[str, Any]) -> bool:
    """Whether a judge's own judgment row is a full grade: valid by `judgment_problem`, with its criteria
    (a failed one is kept and counted, never averaged)."""
    return judgment_problem(row) is None and isinstance(row.get("scores"), Mapping)
