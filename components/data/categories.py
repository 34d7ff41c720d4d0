"""The writing categories: the paper's six keys and their order, the held-out ones, the Korean labels,
and the names people use for them (Korean or English), normalised to the keys."""

from __future__ import annotations

from typing import Iterable

# The six writing categories of the paper, keyed in English. Cover letter and poem are held
# out from training ("unseen" categories), the other four are trained on.
CATEGORIES: tuple[str, ...] = ("cover_letter", "poem", "blog", "novel", "scenario", "news")
HELD_OUT_CATEGORIES: tuple[str, ...] = ("cover_letter", "poem")
CATEGORY_LABELS_KO = {
    "cover_letter": "자기소개서",
    "poem": "시",
    "blog": "블로그",
    "novel": "소설",
    "scenario": "시나리오",
    "news": "뉴스",
}

_CATEGORY_ALIASES = {
    **{ko: en for en, ko in CATEGORY_LABELS_KO.items()},
    "자소서": "cover_letter",
    "자기 소개서": "cover_letter",
    "coverletter": "cover_letter",
    "cover letter": "cover_letter",
    "cover-letter": "cover_letter",
    "poetry": "poem",
    "poems": "poem",
    "블로그 글": "blog",
    "blog post": "blog",
    "blogpost": "blog",
    "소설 쓰기": "novel",
    "fiction": "novel",
    "story": "novel",
    "시나리오 작성": "scenario",
    "screenplay": "scenario",
    "script": "scenario",
    "뉴스 기사": "news",
    "기사": "news",
    "news article": "news",
}


def normalize_category(name: str) -> str:
    """Map Korean or English category names to the six keys; unknown names pass through as a key."""
    key = " ".join(str(name).strip().lower().replace("_", " ").split())
    if key.replace(" ", "_") in CATEGORIES:
        return key.replace(" ", "_")
    if key in _CATEGORY_ALIASES:
        return _CATEGORY_ALIASES[key]
    if key.replace(" ", "") in _CATEGORY_ALIASES:
        return _CATEGORY_ALIASES[key.replace(" ", "")]
    return key.replace(" ", "_")


def category_order(categories: Iterable[str]) -> list[str]:
    """The order categories are shown and logged in: the paper's six first, then the rest sorted."""
    unique = set(categories)
    return [c for c in CATEGORIES if c in unique] + sorted(unique - set(CATEGORIES))


# Categories whose questions show the judge a reference answer (FastChat's NEED_REF_CATS).
REFERENCE_CATEGORIES: tuple[str, ...] = ("math", "reasoning", "coding")
