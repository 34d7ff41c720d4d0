"""Batch mode of the client (`LLMConfig.batch`): the requests missing from the cache go through the
OpenAI Batch API (half price, 24 h window). Write the JSONL (custom_id = cache key), upload it,
create the batch, poll it, collect the output and error files and join them on custom_id. The
batch id is kept in the cache while the batch runs, so a retried step resumes polling that batch
instead of paying for a second one. It works on the client's `LLMSession` (cache, bill, the request
as sent); client.py calls `run_batch` when `LLMConfig.batch` is set."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from selfguided.components.llm.config import BATCH_DISCOUNT
from selfguided.components.llm.request import LLMRequest, LLMResult, cache_key
from selfguided.components.llm.session import LLMSession

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)
_BATCH_DONE = ("completed", "failed", "expired", "cancelled")

async def run_batch(client: LLMSession, requests: list[LLMRequest], desc: str) -> list[LLMResult]:
    too_long = [client.too_long(r) for r in requests]
    results: list[LLMResult | None] = list(await asyncio.gather(
        *(client.from_cache(r) if refused is None else _done(refused) for r, refused in zip(requests, too_long))))
    pending: dict[str, tuple[LLMRequest, list[int]]] = {}  # custom_id (= cache key) -> request, positions
    for index, request in enumerate(requests):
        if results[index] is None:
            request = client.as_sent(request)
            pending.setdefault(cache_key(client.config, request), (request, []))[1].append(index)
    if pending:
        async with client.api(max_retries=5) as api:  # batch management calls: the SDK's retries suffice
            answers = await _batch_roundtrip(client, api, {k: r for k, (r, _) in pending.items()}, desc)
        for key, (_, indices) in pending.items():
            for index in indices:
                results[index] = answers[key]
    return [r if r is not None else LLMResult(error="no result") for r in results]

async def _batch_roundtrip(
    client: LLMSession, api: openai.AsyncOpenAI, requests: dict[str, LLMRequest], desc: str
) -> dict[str, LLMResult]:
    # The batch is named by the set of requests it answers: a retried step finds it again.
    state_key = "batch-" + hashlib.sha256("\n".join(sorted(requests)).encode()).hexdigest()
    state = await asyncio.to_thread(client.cache.get, state_key) if client.cache is not None else None
    if state is None:
        lines = [
            json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                        "body": _batch_body(client, request)}, ensure_ascii=False)
            for key, request in requests.items()
        ]
        upload = await api.files.create(
            file=("selfguided-batch.jsonl", ("\n".join(lines) + "\n").encode("utf-8"), "application/jsonl"),
            purpose="batch",
        )
        batch = await api.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"selfguided_step": client.usage.step},
        )
        state = {"batch_id": batch.id, "input_file_id": upload.id, "created": time.time()}
        if client.cache is not None:
            await asyncio.to_thread(client.cache.put, state_key, state)
        log.info("created batch %s with %d requests", batch.id, len(requests))
    else:
        log.info("resuming batch %s (%d requests)", state["batch_id"], len(requests))
    client.usage.requests_sent += len(requests)

    batch = await api.batches.retrieve(state["batch_id"])
    with tqdm(total=len(requests), desc=f"{desc} batch {batch.id}", unit="req",
              disable=not client.config.progress) as bar:
        while batch.status not in _BATCH_DONE:
            await asyncio.sleep(client.config.poll_interval_s)
            batch = await api.batches.retrieve(batch.id)
            counts = batch.request_counts
            if counts is not None:
                bar.n = counts.completed + counts.failed
                bar.set_postfix(status=batch.status, failed=counts.failed, refresh=False)
                bar.refresh()

    answers: dict[str, LLMResult] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        content = await api.files.content(file_id)
        for line in content.text.splitlines():
            if line.strip():
                row = json.loads(line)
                answers[row["custom_id"]] = await _batch_answer(client, requests[row["custom_id"]], row)
    reason = f"batch {batch.id} ended '{batch.status}' without an answer for this request"
    if batch.errors and batch.errors.data:
        reason += ": " + "; ".join(e.message or e.code or "" for e in batch.errors.data)
    for key in requests:
        answers.setdefault(key, LLMResult(error=reason))
    if client.cache is not None:  # collected: a rerun must send a new batch for what failed
        await asyncio.to_thread(client.cache.delete, state_key)
    return answers

def _batch_body(client: LLMSession, request: LLMRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": client.config.model,
        "messages": request.messages,
        "temperature": client.config.temperature,
        "max_tokens": client.config.max_tokens,
    }
    if request.response_format is not None:
        body["response_format"] = request.response_format
    return body

async def _batch_answer(client: LLMSession, request: LLMRequest, row: dict[str, Any]) -> LLMResult:
    """One line of a batch output or error file as an LLMResult (cached when it is an answer)."""
    response = row.get("response") or {}
    body = response.get("body") or {}
    if response.get("status_code") != 200:
        error = row.get("error") or body.get("error") or {}
        return LLMResult(error=f"batch request failed ({response.get('status_code')}): "
                               f"{error.get('message') or error.get('code') or 'no reason given'}")
    usage = body.get("usage") or {}
    result = LLMResult(
        text=body["choices"][0]["message"].get("content") or "",
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
    )
    client.bill(result.prompt_tokens, result.completion_tokens, discount=BATCH_DISCOUNT)
    await client.store(request, result)
    return result


async def _done(result: LLMResult) -> LLMResult:
    return result

