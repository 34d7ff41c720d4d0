"""`offline-heuristic`: a deterministic stand-in judge for runs without an LLM endpoint.

It is NOT a quality measure. It exists so that a laptop or CI run exercises every step of the
pipeline end to end, reproducibly and for free. Its scores come from surface features a real
judge also notices, so that it ranks a thin, off-topic or garbled text below a full one:

- relevance: how many content words (Hangul/Latin bigram shingles) of the request reappear in
  the text, plus whether the text has the form its category asks for;
- detail: length and number of sentences against what the category usually needs;
- accuracy: share of Korean letters (the judging module's Korean rule), no runs of repeated sentences or words, no broken tokens;
- helpfulness: the mean of the other three, nudged by completeness (text ends a sentence).

"Reference-aware": where a reference text exists (a seed record's own output when scoring a
different candidate, not used here) the same features are compared with it; otherwise the
category's expected length is the reference.
"""

from __future__ import annotations

import re
from typing import Any

from selfguided.components.judging.answers import answer_turns, check_answers
from selfguided.components.judging.judge import Item, Judge
from selfguided.components.judging.rules import (
    JudgeIdentity,
    judgment_row,
    korean_ratio,
    mean_of_criteria,
    reference_for,
)

OFFLINE_JUDGE_NAME = "offline-heuristic"
"""Its name where a run names its judge (a default, a `--judges` entry); `OfflineJudge.of` recognises it."""
OFFLINE_JUDGE = JudgeIdentity(OFFLINE_JUDGE_NAME, "heuristic", "1", "single")
"""The stand-in as a judge of answers (label `offline-heuristic/heuristic-v1`)."""
OFFLINE_SCORER = JudgeIdentity(OFFLINE_JUDGE_NAME, "heuristic", "1", "score")
"""The stand-in as the scorer of seed records."""


class OfflineJudge(Judge):
    """The stand-in as a judge (judge.Judge): no LLM, no cost, no quality measure, and says so."""

    measures_quality = False
    calls_llm = False
    disclaimer = (f"`{OFFLINE_JUDGE_NAME}` is a deterministic stand-in for runs without an LLM endpoint: it "
                  "exercises every step, it does not measure quality.")

    def __init__(self, identity: JudgeIdentity = OFFLINE_JUDGE) -> None:
        self.identity = identity

    @classmethod
    def of(cls, judge: str | JudgeIdentity) -> OfflineJudge | None:
        """The stand-in when `judge` (a model name as a run names its judge, or an identity as rows
        record it) is the stand-in; None otherwise. The one place its name is compared."""
        name = judge.model if isinstance(judge, JudgeIdentity) else judge
        if name != OFFLINE_JUDGE_NAME:
            return None
        return cls(judge) if isinstance(judge, JudgeIdentity) else cls()

    def grade(self, questions: list[dict[str, Any]], answers: list[dict[str, Any]], *, repeat: int = 0,
              items: set[Item] | None = None) -> tuple[list[dict[str, Any]], dict[str, float]]:
        rows = judge_offline(questions, answers)  # deterministic: a repeat grades alike
        return [r for r in rows if items is None or (r["question_id"], r["turn"]) in items], {}

# Typical length (characters) of a good answer per category; other categories get the default.
_TARGET_CHARS = {"cover_letter": 450, "poem": 160, "blog": 450, "novel": 450, "scenario": 400, "news": 400}
_DEFAULT_TARGET = 350

# Surface cues that the text has the form its category asks for.
_FORM_CUES: dict[str, tuple[re.Pattern[str], ...]] = {
    "cover_letter": (re.compile(r"저는|제가|지원"), re.compile(r"경험|역량|성장|배우")),
    "poem": (re.compile(r"\n.+\n"),),
    "blog": (re.compile(r"[!?]|요\.|니다\.|요$"), re.compile(r"\n")),
    "novel": (re.compile(r"[\"“”'‘’]|했다\.|었다\.|였다\."),),
    "scenario": (re.compile(r"S#|씬|INT\.|EXT\.|#\d|장면"), re.compile(r"^\s*\S{1,8}\s*[:：]", re.M)),
    "news": (re.compile(r"\d"), re.compile(r"밝혔다|전했다|말했다|예정이다|했다\.")),
}

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?。])\s+|\n+")
# Broken output: U+FFFD (a token cut inside a UTF-8 character, decoded) and control characters
# other than newline and tab. A model that has not learned the language writes them (an untuned
# random-init base does), and any judge would grade such text at the bottom.
_BROKEN = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
GARBLE_FULL_PENALTY_SHARE = 0.05  # this share of broken characters costs the full GARBLE_PENALTY
GARBLE_PENALTY = 6.0
_WORD = re.compile(r"[가-힣A-Za-z0-9]+")


def _clip(value: float) -> float:
    return max(1.0, min(10.0, value))


def _shingles(text: str) -> set[str]:
    words = _WORD.findall(text.lower())
    grams: set[str] = set()
    for word in words:
        if len(word) < 2:
            continue
        grams.update(word[i : i + 2] for i in range(len(word) - 1))
    return grams


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if len(s.strip()) > 1]


def repetition(text: str) -> float:
    """Fraction of sentences and words that repeat an earlier one (0 = none)."""
    sentences = _sentences(text)
    words = _WORD.findall(text)
    repeated_sentences = 1 - len(set(sentences)) / len(sentences) if sentences else 0.0
    repeated_words = 1 - len(set(words)) / len(words) if len(words) >= 20 else 0.0
    # Natural Korean prose re-uses ~40-50% of its words (particles, endings); beyond that is filler.
    return max(repeated_sentences, max(0.0, repeated_words - 0.5) * 2)


def heuristic_scores(
    category: str, request: str, text: str, reference: str | None = None
) -> tuple[dict[str, float], str]:
    """Score `text` written for `request` on the four criteria (1-10) with a one-line rationale."""
    text = text or ""
    target = len(reference) if reference else _TARGET_CHARS.get(category, _DEFAULT_TARGET)
    length = len(text.strip())
    sentences = _sentences(text)

    request_grams = _shingles(request)
    overlap = len(request_grams & _shingles(text)) / len(request_grams) if request_grams else 0.0
    cues = _FORM_CUES.get(category, ())
    form = sum(bool(c.search(text)) for c in cues) / len(cues) if cues else 0.5

    length_ratio = min(length / target, 1.6) if target else 0.0
    # Falls off below the target and, gently, for rambling far beyond it.
    length_fit = length_ratio if length_ratio <= 1.0 else 1.0 - (length_ratio - 1.0) * 0.5
    hangul = korean_ratio(text)
    rep = repetition(text)
    complete = text.rstrip().endswith((".", "!", "?", "다", "요", "…", "\"", "”")) or "\n" in text.strip()

    relevance = _clip(1 + 6 * min(overlap * 2.5, 1.0) + 3 * form)
    detail = _clip(1 + 7 * length_fit + 2 * min(len(sentences) / 6, 1.0))
    accuracy = _clip(1 + 7 * hangul * (1 - rep) + 2 * form - (2 if length < 40 else 0))
    helpfulness = _clip((relevance + detail + accuracy) / 3 + (0.5 if complete else -1.0))
    garble = min(1.0, len(_BROKEN.findall(text)) / max(1, len(text)) / GARBLE_FULL_PENALTY_SHARE)
    scores = {
        "helpfulness": round(_clip(helpfulness - GARBLE_PENALTY * garble), 2),
        "relevance": round(_clip(relevance - GARBLE_PENALTY * garble), 2),
        "accuracy": round(_clip(accuracy - GARBLE_PENALTY * garble), 2),
        "detail": round(_clip(detail - GARBLE_PENALTY * garble), 2),
    }
    rationale = (
        f"{OFFLINE_JUDGE_NAME}: {length} chars vs ~{target} expected, {len(sentences)} sentences, "
        f"request overlap {overlap:.2f}, {category} form cues {form:.2f}, Korean {hangul:.2f}, "
        f"repetition {rep:.2f}, {'complete' if complete else 'cut off'}"
        + (f", garbled {garble:.2f}" if garble else "")
    )
    return scores, rationale


def judge_offline(questions: list[dict[str, Any]], answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grade every answer turn with the stand-in (no LLM, no network): one judgment row per turn."""
    by_id = {q["question_id"]: q for q in questions}
    check_answers(answers, by_id)
    judgments = []
    for answer in answers:
        question = by_id[answer["question_id"]]
        for turn, text in enumerate(answer_turns(answer), start=1):
            scores, rationale = heuristic_scores(question["category"], question["turns"][turn - 1], text,
                                                 reference=reference_for(question, turn) or None)
            judgments.append(judgment_row(
                question=question, turn=turn, answer=text, model=answer.get("model_id", "unknown"),
                judge=OFFLINE_JUDGE, user_prompt=question["turns"][turn - 1],
                judgment=rationale, ratings={**scores, "overall": mean_of_criteria(scores)}, error=None,
            ))
    return judgments
