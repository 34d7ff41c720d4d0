"""Scoring seed data: a GPT-4 class model (or the offline stand-in) rates every seed record on the
four Vicuna criteria (helpfulness, relevance, accuracy, detail; 1-10).

A scored record is built in one place, `scored_record`: the seed record plus `scores`, `score`
(their mean) and `judge` (the scorer's JudgeIdentity plus its rationale). A record the scorer
could not score keeps its place with `scores: null, score: null, error: <reason>`.

Incremental: with a cache (the LLM cache's location), a record scored before by the same scorer
model with the same prompt version is not sent again: its scores are read back from an entry keyed
by the record's content (category, instruction, input, output), the model and the prompt version
(`scored_key`). A new prompt version matches no entry, so every record is scored again; a second
entry per content and model (`last_scored_key`) remembers the version that scored it last, so the
step says how many were re-scored because the prompt changed. The counts come back as usage
metrics (`score/scored_now`, `score/reused`, `score/rescored_new_prompt`) and as one line
(`rescoring_line`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from selfguided.components.data.categories import CATEGORY_LABELS_KO
from selfguided.components.data.hashing import record_hash
from selfguided.components.data.seed import LoadResult, Reject
from selfguided.components.judging.offline import OFFLINE_SCORER, OfflineJudge, heuristic_scores
from selfguided.components.judging.prompts import SCORE_PROMPT, load_prompt
from selfguided.components.judging.rules import JudgeIdentity, mean_of_criteria
from selfguided.components.llm.config import DEFAULT_MAX_INPUT_TOKENS
from selfguided.components.model.prompting import CRITERIA


def scored_record(record: dict[str, Any], judge: JudgeIdentity, scores: dict[str, float] | None, *,
                  rationale: str | None = None, error: str | None = None) -> dict[str, Any]:
    """The seed record with its scores (the four criteria), their mean and who scored it; or, when
    `scores` is None, with `scores: null, score: null` and the `error`."""
    block = {**judge.to_json(), "rationale": rationale}
    if scores is None:
        return {**record, "scores": None, "score": None, "judge": block, "error": error}
    scores = {c: scores[c] for c in CRITERIA}
    return {**record, "scores": scores, "score": mean_of_criteria(scores), "judge": block}


def score_offline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score with the deterministic `offline-heuristic` stand-in (no LLM, no network)."""
    scored = []
    for record in records:
        request = f"{record['instruction']}\n{record.get('input', '')}"
        scores, rationale = heuristic_scores(record["category"], request, record["output"])
        scored.append(scored_record(record, OFFLINE_SCORER, scores, rationale=rationale))
    return scored


def _score_request_fields(record: dict[str, Any]) -> dict[str, str]:
    return {
        "category": record["category"],
        "category_label": CATEGORY_LABELS_KO.get(record["category"], record["category"]),
        "instruction": record["instruction"],
        "input": record.get("input") or "(없음)",
        "output": record["output"],
    }


def _key(**payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def scored_key(record: dict[str, Any], model: str, prompt_id: str) -> str:
    """The cache key of a record's scores: its content (data.hashing.record_hash), the scorer model
    and the prompt version."""
    return _key(kind="scored-record", content=record_hash(record), model=model, prompt=prompt_id)


def last_scored_key(record: dict[str, Any], model: str) -> str:
    """The cache key of the prompt version that last scored this content with this model."""
    return _key(kind="last-scored-prompt", content=record_hash(record), model=model)


def score_with_llm(records: list[dict[str, Any]], config: Any) -> tuple[list[dict[str, Any]], Any]:
    """Score seed records with the LLM of `config` (an LLMConfig); returns the scored records (same
    order, none dropped) and the client's UsageSummary (`score_incrementally` without its counts)."""
    scored, usage, _ = score_incrementally(records, config)
    return scored, usage


def score_incrementally(records: list[dict[str, Any]], config: Any
                        ) -> tuple[list[dict[str, Any]], Any, dict[str, float]]:
    """`score_with_llm` plus the incremental counts (module docstring): only records without scores
    of the same content, model and prompt version are sent; reused ones count as `cached` in the usage."""
    from selfguided.components.judging.verdicts import ask, parse_ratings
    from selfguided.components.llm.cache import open_cache
    from selfguided.components.llm.client import LLMClient

    prompt = load_prompt(SCORE_PROMPT)
    judge = JudgeIdentity(config.model, prompt.name, str(prompt.version), "score")
    cache = open_cache(config.cache)
    keys = [scored_key(r, config.model, prompt.id) for r in records]
    scored: list[dict[str, Any] | None] = [None] * len(records)
    for i, key in enumerate(keys):
        if cache is not None and (hit := cache.get(key)) is not None:
            scored[i] = scored_record(records[i], judge, hit["scores"], rationale=hit.get("rationale"))
    todo = [i for i, r in enumerate(scored) if r is None]
    earlier = [cache.get(last_scored_key(records[i], config.model)) if cache is not None else None for i in todo]
    client = LLMClient(config, step="score")
    verdicts = ask(client, prompt, [prompt.request(**_score_request_fields(records[i])) for i in todo],
                   parse_ratings) if todo else []
    for i, verdict in zip(todo, verdicts):
        if verdict.parsed is None:
            scored[i] = scored_record(records[i], judge, None, error=verdict.error)
            continue
        ratings, rationale = verdict.parsed
        scored[i] = scored_record(records[i], judge, ratings, rationale=rationale)
        if cache is not None:
            cache.put(keys[i], {"scores": scored[i]["scores"], "rationale": rationale})
            cache.put(last_scored_key(records[i], config.model), {"prompt": prompt.id})
    done = [r for r in scored if r is not None]
    usage = client.usage
    usage.records = len(records)
    usage.failed = sum(1 for r in done if r["scores"] is None)
    usage.done = usage.records - usage.failed
    usage.cached += len(records) - len(todo)
    counts = {"score/scored_now": float(len(todo)), "score/reused": float(len(records) - len(todo)),
              "score/rescored_new_prompt": float(sum(1 for e in earlier if e and e.get("prompt") != prompt.id))}
    return done, usage, counts


def rescoring_line(counts: dict[str, float], model: str) -> str:
    """`score: 12 scored now, 88 reused (...)`, and why a record scored before was scored again."""
    prompt = load_prompt(SCORE_PROMPT).id
    line = (f"score: {counts.get('score/scored_now', 0):.0f} scored now, {counts.get('score/reused', 0):.0f} reused "
            f"(scored before with {model} and prompt {prompt})")
    if counts.get("score/rescored_new_prompt"):
        line += (f"; {counts['score/rescored_new_prompt']:.0f} of those scored now had been scored with an earlier "
                 f"prompt version: prompt {prompt} is new, so they were scored again")
    return line


def score_records(
    records: list[dict[str, Any]], model: str, *, concurrency: int = 8, cache: str = "", base_url: str = ""
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Score with `model` through the LLM client layer, or offline when model is `offline-heuristic`.

    Returns the scored records (same order) and usage metrics (tokens, cost, parse rate).
    """
    if OfflineJudge.of(model) is not None:
        return score_offline(records), {"score/scored_now": float(len(records)), "score/reused": 0.0}
    from selfguided.components.llm.config import llm_step_config

    config = llm_step_config("score", model, base_url=base_url, concurrency=concurrency, cache=cache)
    scored, usage, counts = score_incrementally(records, config)
    return scored, {**usage.to_metrics("score"), **counts}


def scoring_prompt_tokens(record: dict[str, Any]) -> int:
    """Estimated prompt tokens of the request that scores `record` (`llm.request.estimate_request_tokens`)."""
    from selfguided.components.llm.request import estimate_request_tokens

    return estimate_request_tokens(load_prompt(SCORE_PROMPT).request(**_score_request_fields(record)))


def set_aside_too_long(
    loaded: LoadResult, path: str | Path, max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Split loaded seed records into those whose scoring prompt fits `max_input_tokens` and
    rejects for the others (reason, `estimated_tokens`, `max_input_tokens`, `chars`); no request."""
    kept: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    lines = loaded.lines or [0] * len(loaded.records)
    for record, line in zip(loaded.records, lines):
        tokens = scoring_prompt_tokens(record)
        if tokens <= max_input_tokens:
            kept.append(record)
            continue
        chars = sum(len(record.get(name) or "") for name in ("instruction", "input", "output"))
        raw = json.dumps(record, ensure_ascii=False)
        rejects.append(Reject(
            str(path), line,
            f"input too long to score: ~{tokens:,} tokens > max_input_tokens {max_input_tokens:,} "
            f"({chars:,} characters of instruction, input and output; estimated, nothing sent)",
            raw if len(raw) <= 2000 else raw[:2000],
            {"estimated_tokens": tokens, "max_input_tokens": max_input_tokens, "chars": chars,
             **({"raw_truncated": True} if len(raw) > 2000 else {})},
        ))
    return kept, rejects
