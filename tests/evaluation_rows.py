"""Builders of evaluation rows for the tests: judgments with a shared question difficulty, so pairing pays."""

from __future__ import annotations

import math

import numpy as np

from selfguided.components.evaluation.rows import RowJudgments
from selfguided.components.model.prompting import CRITERIA

CATS = ("cover_letter", "poem", "blog", "novel", "scenario", "news")
UNSEEN = {"cover_letter", "poem"}
JUDGE = "gpt-4o/v2"


def judgment(qid, category, score, *, turn=1, chars=500, seen=None, error=None, criteria=None):
    return {"question_id": qid, "turn": turn, "category": category, "seen": seen,
            "scores": None if score is None else (criteria or {c: score for c in CRITERIA}),
            "score": score, "answer_chars": chars, "error": error}


def quality(category: str, q: int) -> float:
    """A question's difficulty, shared by every model: what makes pairing pay."""
    return float(np.random.default_rng([CATS.index(category) if category in CATS else 99, q]).normal(0, 1.2))


def make_row(name, kind="trained", *, shift=0.0, noise=0.6, seed=0, cats=CATS, questions=10, turns=1, arm="",
             base="tiny", judge=JUDGE, shifts=None, length_effect=0.0, length_scale=1.0, **meta) -> RowJudgments:
    """Scores = question difficulty + row shift (+ per-category shift) + judge noise, clipped to 1-10."""
    rng = np.random.default_rng(seed)
    rows = []
    for category in cats:
        for q in range(questions):
            for turn in range(1, turns + 1):
                base_chars = 300 + 1000 * np.random.default_rng([CATS.index(category) if category in CATS else 99,
                                                                 q, turn, 7]).random()
                chars = base_chars * length_scale * rng.lognormal(0, 0.3)
                x = math.log(chars + 1) - math.log(base_chars + 1)
                score = 5.5 + quality(category, q) + shift + (shifts or {}).get(category, 0.0) \
                    + length_effect * x + rng.normal(0, noise)
                rows.append(judgment(f"{category}-{q}", category, float(np.clip(score, 1, 10)), turn=turn,
                                     chars=int(chars), seen=category not in UNSEEN))
    return RowJudgments(name, kind, rows, base_model=base, arm=arm, judge=judge, answers=len(rows), **meta)


def shared_diffs(a: RowJudgments, b: RowJudgments, category: str) -> np.ndarray:
    bs = {(j["question_id"], j["turn"]): j["score"] for j in b.judgments}
    return np.array([j["score"] - bs[(j["question_id"], j["turn"])] for j in a.judgments
                     if j["category"] == category and j["score"] is not None])


def shared_diffs(a: RowJudgments, b: RowJudgments, category: str) -> np.ndarray:
    bs = {(j["question_id"], j["turn"]): j["score"] for j in b.judgments}
    return np.array([j["score"] - bs[(j["question_id"], j["turn"])] for j in a.judgments
                     if j["category"] == category and j["score"] is not None])
