"""Harvest: production prompts -> candidate seed prompts. Pure functions on text.

`select_prompts` takes the prompts read from production traces (registry/harvest_read.py) and
keeps each one at most once, in this order of checks (the first that applies is the reason it is
left out, counted by reason):

1. `empty`: no text after normalisation;
2. `test-set question`: its normalised text hashes (`question_hash`) to a question of a test set on
   record, so the gate's questions never leak into training;
3. `already in the seed`: the same question is in the seed version it extends;
4. `duplicate`: the same normalised text was kept earlier in this harvest;
5. `near-duplicate`: its character 5-gram Jaccard similarity with a kept prompt, or a question of
   the seed it extends, is at least `near` (0.8): MinHash signatures (64 permutations) banded
   16 x 4 find the candidates, the exact Jaccard of the shingles decides.

Kept prompts whose jury or editors' score is below `hard_below` are returned apart (`hard`): hard
prompts are what the model fails at, worth a look before training, never silently mixed in.
Normalisation: Unicode NFKC, lower case, runs of whitespace to one space, trimmed.

The held-out slice: `held_out(text, fraction)` puts a prompt on the held-out side when its
normalised text's hash, read as a number in [0, 1), is below `fraction`: the same prompt is always
on the same side, whichever harvest reads it. `holdout_questions` writes the held-out prompts
(`"slice": "unseen"`, never trained on) and as many of the prompts that went into the seed version
(`"slice": "seen"`, the first by hash) as FastChat questions, for the gate's seen/unseen comparison.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

SHINGLE = 5
PERMUTATIONS = 64
BANDS = 16
NEAR = 0.8
_PRIME = (1 << 61) - 1


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or "").lower()).strip()


def question_hash(text: str) -> str:
    """The content hash of a question's (first turn's) text after normalisation."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    text = normalize(text)
    return {text[i:i + k] for i in range(max(1, len(text) - k + 1))} if text else set()


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_RNG = np.random.default_rng(20261207)
_A = _RNG.integers(1, _PRIME, PERMUTATIONS, dtype=np.uint64)
_B = _RNG.integers(0, _PRIME, PERMUTATIONS, dtype=np.uint64)


def minhash(grams: set[str]) -> np.ndarray:
    """The MinHash signature of a shingle set (PERMUTATIONS values; universal hashing mod 2^61-1)."""
    if not grams:
        return np.zeros(PERMUTATIONS, dtype=np.uint64)
    x = np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=7).digest(), "big") for g in grams],
                 dtype=object)
    # object arithmetic: exact products of 61-bit numbers (uint64 would overflow)
    values = (np.outer(_A.astype(object), x) + _B.astype(object)[:, None]) % _PRIME
    return values.min(axis=1).astype(np.uint64)


class NearDuplicateIndex:
    """Texts added so far, and which of them a new text is a near-duplicate of (LSH, then exact Jaccard)."""

    def __init__(self, near: float = NEAR) -> None:
        self.near = near
        self.buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        self.grams: list[set[str]] = []

    def _bands(self, signature: np.ndarray) -> list[tuple[int, bytes]]:
        rows = PERMUTATIONS // BANDS
        return [(b, signature[b * rows:(b + 1) * rows].tobytes()) for b in range(BANDS)]

    def match(self, text: str) -> int | None:
        """The index of an added text at least `near` similar to `text`, or None."""
        grams = shingles(text)
        seen = {i for band in self._bands(minhash(grams)) for i in self.buckets.get(band, ())}
        return next((i for i in sorted(seen) if jaccard(grams, self.grams[i]) >= self.near), None)

    def add(self, text: str) -> int:
        grams = shingles(text)
        self.grams.append(grams)
        for band in self._bands(minhash(grams)):
            self.buckets[band].append(len(self.grams) - 1)
        return len(self.grams) - 1


@dataclass
class Prompt:
    """One production prompt as harvest sees it."""

    trace_id: str
    category: str
    text: str
    """The user's request (the first user turn)."""
    score: float | None = None
    """The lowest of its jury score and editors' grades on the served answer, when any."""


@dataclass
class Selection:
    kept: list[Prompt] = field(default_factory=list)
    hard: list[Prompt] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    """reason -> how many prompts were left out for it."""


def select_prompts(prompts: Iterable[Prompt], *, test_hashes: set[str], seed_questions: Iterable[str] = (),
                   hard_below: float = 5.0, near: float = NEAR) -> Selection:
    """See the module docstring. `seed_questions`: the instructions of the seed version extended."""
    seed = list(seed_questions)
    seed_hashes = {question_hash(q) for q in seed}
    index = NearDuplicateIndex(near)
    for question in seed:
        index.add(question)
    kept_hashes: set[str] = set()
    out = Selection()
    for prompt in prompts:
        digest = question_hash(prompt.text)
        reason = ("empty" if not normalize(prompt.text) else "test-set question" if digest in test_hashes
                  else "already in the seed" if digest in seed_hashes else "duplicate" if digest in kept_hashes
                  else "near-duplicate" if index.match(prompt.text) is not None else "")
        if reason:
            out.dropped[reason] += 1
            continue
        kept_hashes.add(digest)
        index.add(prompt.text)
        (out.hard if prompt.score is not None and prompt.score < hard_below else out.kept).append(prompt)
    return out


def held_out(text: str, fraction: float) -> bool:
    """Whether the prompt is held out of training (see the module docstring)."""
    return int(question_hash(text)[:15], 16) / 16 ** 15 < fraction


def holdout_questions(unseen: Iterable[Prompt], seen: Iterable[Prompt]) -> list[dict]:
    """question.jsonl rows: every unseen prompt, then up to as many seen ones (the first by hash);
    `question_id` is `harvest-` + 12 hex digits of the prompt's hash."""
    unseen = list(unseen)
    seen = sorted(seen, key=lambda p: question_hash(p.text))[:len(unseen)]
    return [{"question_id": f"harvest-{question_hash(p.text)[:12]}", "category": p.category, "turns": [p.text],
             "slice": side} for side, prompts in (("unseen", unseen), ("seen", seen)) for p in prompts]
