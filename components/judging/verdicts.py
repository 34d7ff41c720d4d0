"""Reading a verdict out of a judge's answer, and asking once more when there is none.

Parsing rules (checked in this order):
1. JSON: with structured output the answer is an object with the fields of the prompt's
   json_schema (a ```json fenced block, or the outermost {...} of the text, also counts).
2. Text, single answers and seed scores: labelled Vicuna ratings, one per criterion,
   "Helpfulness: [[7]]" (English or Korean label: 유용성, 관련성, 정확성, 상세함, 종합). Failing
   that, exactly as many bare "[[n]]" as expected ratings, taken in the prompt's order. Every
   rating must lie in 1-10. A missing overall rating is the mean of the four criteria.
3. Text, pairs: the last "[[A]]", "[[B]]" or "[[C]]" (tie); failing that, a score pair
   "[[8, 6]]" (the higher one wins, equal is a tie).
An answer that does not parse is asked once more for the verdict alone (the prompt's `reask`
message, with the first answer kept in the conversation). If that fails too, the item fails
with "unparsable verdict". parse_success_rate is the share of first answers that parsed;
`reasked` counts the re-asks, and `failed` what was still missing after them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from selfguided.components.judging.prompts import Prompt
from selfguided.components.judging.rules import mean_of_criteria
from selfguided.components.llm.request import LLMRequest
from selfguided.components.model.prompting import CRITERIA, CRITERIA_KO

if TYPE_CHECKING:
    from selfguided.components.llm.client import LLMClient

_RATING = r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"
_LABELS = {
    "helpfulness": ("helpfulness", CRITERIA_KO["helpfulness"]),
    "relevance": ("relevance", CRITERIA_KO["relevance"]),
    "accuracy": ("accuracy", CRITERIA_KO["accuracy"]),
    "detail": ("level of detail", "detail", CRITERIA_KO["detail"], "상세성"),
    "overall": ("overall", "종합", "총점"),
}


def _json_object(text: str) -> dict[str, Any] | None:
    if "{" not in text:
        return None
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, re.DOTALL)
    candidate = fenced[1] if fenced else text[text.find("{"): text.rfind("}") + 1]
    try:
        obj = json.loads(candidate)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _rating(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 1 <= number <= 10 else None


def parse_ratings(text: str, with_overall: bool = False) -> tuple[dict[str, float], str] | None:
    """(ratings, rationale) from a judge's answer, or None; see the module docstring for the rules.

    The ratings hold the four CRITERIA, plus "overall" when `with_overall`.
    """
    obj = _json_object(text)
    if obj is not None and all(c in obj for c in CRITERIA):
        ratings = {c: _rating(obj[c]) for c in CRITERIA}
        if with_overall and "overall" in obj:
            ratings["overall"] = _rating(obj["overall"])
        rationale = str(obj.get("rationale", "")).strip()
    else:
        names = (*CRITERIA, "overall") if with_overall else CRITERIA
        ratings = {}
        for name in names:
            labels = "|".join(re.escape(label) for label in _LABELS[name])
            match = re.search(rf"(?:{labels})[^\[\n]{{0,30}}{_RATING}", text, re.IGNORECASE)
            if match:
                ratings[name] = _rating(match[1])
        if not all(c in ratings for c in CRITERIA):
            bare = re.findall(_RATING, text)
            if len(bare) not in (len(CRITERIA), len(names)):
                return None
            ratings = {name: _rating(value) for name, value in zip(names, bare)}
        first = re.search(rf"^.*{_RATING}", text, re.MULTILINE)
        rationale = text[: first.start()].strip() if first else ""
    if any(value is None for value in ratings.values()):
        return None
    if with_overall and "overall" not in ratings:
        ratings["overall"] = mean_of_criteria(ratings)
    return ratings, rationale


def parse_pair_verdict(text: str) -> tuple[str, str] | None:
    """("A" | "B" | "tie", rationale) from a pairwise judgment, or None."""
    obj = _json_object(text)
    if obj is not None and str(obj.get("winner", "")).strip().lower() in ("a", "b", "tie", "c"):
        winner = str(obj["winner"]).strip().upper()
        return ("tie" if winner in ("TIE", "C") else winner), str(obj.get("rationale", "")).strip()
    verdicts = list(re.finditer(r"\[\[([ABC])\]\]", text))
    if verdicts:
        last = verdicts[-1]
        return {"A": "A", "B": "B", "C": "tie"}[last[1]], text[: last.start()].strip()
    pair = re.search(r"\[\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]\]", text)
    if pair:
        a, b = float(pair[1]), float(pair[2])
        return ("A" if a > b else "B" if b > a else "tie"), text[: pair.start()].strip()
    return None


@dataclass
class Verdict:
    parsed: Any | None
    """What the parser returned, None when there is no verdict."""
    text: str
    """The judge's raw answer (and the re-asked one after it)."""
    error: str | None


def ask(client: LLMClient, prompts: Prompt | list[Prompt], requests: list[LLMRequest],
         parse: Callable[[str], Any]) -> list[Verdict]:
    """Run the requests, parse every answer, re-ask once (with the request's own prompt's
    re-ask message) where it did not parse."""
    by_id = {p.id: p for p in (prompts if isinstance(prompts, list) else [prompts])}
    results = client.run(requests)
    verdicts = []
    for result in results:
        parsed = parse(result.text) if result.ok else None
        verdicts.append(Verdict(parsed, result.text or "", result.error))
    unparsed = [i for i, v in enumerate(verdicts) if v.error is None and v.parsed is None]
    answered = sum(1 for r in results if r.ok)
    client.usage.parse_success_rate = (answered - len(unparsed)) / answered if answered else None
    client.usage.reasked += len(unparsed)
    if unparsed:
        followups = client.run(
            [by_id[requests[i].prompt].reask_request(requests[i], verdicts[i].text) for i in unparsed],
            desc=f"{client.usage.step} re-ask ({client.config.model})",
        )
        for i, result in zip(unparsed, followups):
            verdict = verdicts[i]
            if result.ok:
                verdict.text += f"\n\n[re-asked for the verdict]\n{result.text}"
                verdict.parsed = parse(result.text)
            if verdict.parsed is None:
                verdict.error = result.error or f"unparsable verdict after one re-ask: {result.text[:200]!r}"
    return verdicts

