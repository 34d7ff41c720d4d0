"""A local OpenAI-compatible server for tests and benchmarks, with fault injection.

It runs on 127.0.0.1 on a free port in a background thread and implements what the client layer
uses: POST /v1/chat/completions, GET /v1/models (one model, `MODEL_ID`), the Files endpoints
(upload, retrieve, content) and the Batches
endpoints (create, retrieve) of the OpenAI Batch API.

Its "model" is deterministic and reads the prompt the way a judge would: the answers to grade sit
between "[The Start of ...]" and "[The End of ...]" markers (the judge and score prompts use them).
One answer -> four criterion ratings and an overall one, growing with the answer's length; two
answers -> the longer one wins ("[[A]]" / "[[B]]", "[[C]]" for a tie). With a JSON schema in
`response_format` it answers a JSON object with the schema's properties instead. A conversation
that already has an assistant turn is a re-ask and gets the bare verdict.

Fault knobs (all thread-safe; change them between runs):
- `script(*faults)`: the next chat requests, in arrival order, get these faults: "429" (a spent
  request quota, as OpenAI answers it: Retry-After `retry_after_s` and
  x-ratelimit-remaining-requests: 0), "busy" (429 with Retry-After `retry_after_s` and nothing
  else, as a gateway limiting requests in flight answers), "quota" (429 insufficient_quota),
  "500", "500-noretry" (500 with x-should-retry: false), "409-retry" (409 with x-should-retry:
  true), "slow" (answers after `slow_s`, beyond a short client timeout) or "garbage" (an answer
  with no parsable rating).
- `fail_rate`: share of chat requests answered 500, drawn from a seeded RNG.
- `rpm` (+ `burst`) and `max_concurrent`: a token-bucket rate limit and a cap on requests in
  flight; over either, 429 with Retry-After. Over `rpm` the 429 carries the x-ratelimit headers
  (remaining 0), like OpenAI; over `max_concurrent` it carries only retry-after-ms and Retry-After
  (`concurrency_retry_after_s`; `concurrency_retry_after_ms=False` leaves out retry-after-ms, so
  that only the whole seconds of Retry-After are left, as many gateways send). Every answer
  carries the x-ratelimit-{limit,remaining,reset}-requests headers when `rpm` is set.
- `latency_s`: simulated generation time of every chat answer.
- `json_schema`: False makes the server refuse `response_format` with a 400, like endpoints
  without structured output.
- `position_bias`: pairwise verdicts always pick the first answer ("[[A]]").
- `batch_delay_s`: how long a batch stays "in_progress" before it completes.
- `judge`: how the fake judge grades one answer (a jury test starts one server per behaviour):
  "length" (default: `ratings_for`, longer answers score higher), "fair" (every rating is the
  answer's hidden true quality, written in it as "(품질 N)"; see `true_quality`) or "noisy" (that true
  quality plus Gaussian noise, sd `noise_sd`, rounded and clipped to 1-10, drawn anew per request).

Counters: `chat_requests` (every chat request, refused ones included), `api_keys` (their bearer keys), `status_counts`,
`peak_in_flight` (most chat requests admitted at once),
`asked` (first user message of every chat request, in arrival order),
`arrivals` (monotonic arrival time and status of every chat request), `batches_created`,
`files_uploaded`.

Standalone, to try the CLI by hand: `python tests/llm_server.py --fail-rate 0.3` prints the
OPENAI_BASE_URL to export and serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import math
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_BLOCK = re.compile(r"\[The Start of ([^\]]+)\]\n(.*?)\n\[The End of \1\]", re.DOTALL)
CRITERIA = ("helpfulness", "relevance", "accuracy", "detail")


_TRUTH = re.compile(r"\(품질 (\d+)\)")
JUDGE_BEHAVIOURS = ("length", "fair", "noisy")
MODEL_ID = "fake-openai"  # what GET /v1/models lists (chat requests may name any model)


def true_quality(answer: str) -> int:
    """The hidden true quality a test wrote into an answer as "(품질 N)"; without one (a real
    model's answer), a content judge's guess that ignores length: the share of Hangul among the
    letters times the share of distinct words (a model repeating itself scores low)."""
    match = _TRUTH.search(answer)
    if match:
        return int(match[1])
    letters = [ch for ch in answer if ch.isalpha()]
    words = answer.split()
    if not letters or not words:
        return 1
    hangul = sum("\uac00" <= ch <= "\ud7a3" for ch in letters) / len(letters)
    return round(1 + 9 * hangul * len(set(words)) / len(words))


def ratings_for(answer: str) -> dict[str, int]:
    """The fake judge's ratings of one answer: longer answers score higher (plausible, deterministic)."""
    base = 1 + min(9, len(answer) // 12)
    ratings = {
        "helpfulness": base,
        "relevance": min(10, base + 1),
        "accuracy": max(1, base - len(answer) % 2),
        "detail": 1 + min(9, len(answer) // 20),
    }
    ratings["overall"] = round(sum(ratings[c] for c in CRITERIA) / len(CRITERIA))
    return ratings


class FakeOpenAI:
    """Threaded OpenAI-compatible HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        rpm: float | None = None,
        burst: float | None = None,
        max_concurrent: int | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
        json_schema: bool = True,
        position_bias: bool = False,
        retry_after_s: float = 0.2,
        slow_s: float = 1.5,
        batch_delay_s: float = 0.0,
        concurrency_retry_after_s: float = 0.1,
        concurrency_retry_after_ms: bool = True,
        judge: str = "length",
        noise_sd: float = 2.0,
    ) -> None:
        if judge not in JUDGE_BEHAVIOURS:
            raise ValueError(f"judge must be one of {JUDGE_BEHAVIOURS}, got {judge!r}")
        self.judge = judge
        self.noise_sd = noise_sd
        self.latency_s = latency_s
        self.rpm = rpm
        self.burst = burst
        self.max_concurrent = max_concurrent
        self.fail_rate = fail_rate
        self.json_schema = json_schema
        self.position_bias = position_bias
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.batch_delay_s = batch_delay_s
        self.concurrency_retry_after_s = concurrency_retry_after_s
        self.concurrency_retry_after_ms = concurrency_retry_after_ms
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._script: list[str] = []
        self._in_flight = 0
        self._tokens = 0.0
        self._refilled_at = time.monotonic()
        self._files: dict[str, dict[str, Any]] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self.reset_counters()
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._tokens = self._capacity()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def reset_counters(self) -> None:
        with self._lock:
            self.chat_requests = 0
            self.peak_in_flight = 0
            self.status_counts: Counter[int] = Counter()
            self.asked: list[str] = []
            self.arrivals: list[tuple[float, int]] = []
            self.batches_created = 0
            self.files_uploaded = 0
            self.api_keys: set[str] = set()  # the bearer keys of the chat requests

    def script(self, *faults: str) -> None:
        unknown = set(faults) - {"429", "busy", "quota", "500", "500-noretry", "409-retry", "slow", "garbage"}
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}")
        with self._lock:
            self._script.extend(faults)

    # -- rate limit ------------------------------------------------------------------------

    def _capacity(self) -> float:
        if self.rpm is None:
            return 0.0
        return self.burst if self.burst is not None else max(1.0, self.rpm / 60)

    def _refill(self, now: float) -> None:
        rate = self.rpm / 60
        self._tokens = min(self._capacity(), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now

    def _rate_headers(self) -> dict[str, str]:
        if self.rpm is None:
            return {}
        rate = self.rpm / 60
        to_full = (self._capacity() - self._tokens) / rate
        return {
            "x-ratelimit-limit-requests": str(int(self.rpm)),
            "x-ratelimit-remaining-requests": str(int(self._tokens)),
            "x-ratelimit-reset-requests": f"{max(to_full, 0.0) * 1000:.0f}ms",
        }

    def _admit(self) -> tuple[str | None, dict[str, str]]:
        """Gatekeeping of one chat request under the lock: returns (fault, headers)."""
        now = time.monotonic()
        self.chat_requests += 1
        if self.max_concurrent is not None and self._in_flight >= self.max_concurrent:
            return "429-concurrency", self._retry_headers(self.concurrency_retry_after_s, self.concurrency_retry_after_ms)
        if self.rpm is not None:
            self._refill(now)
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / (self.rpm / 60)
                headers = {"retry-after-ms": f"{wait * 1000:.0f}", "retry-after": str(math.ceil(wait))}
                return "429-rpm", {**headers, **self._rate_headers()}
            self._tokens -= 1.0
        fault = self._script.pop(0) if self._script else None
        if fault is None and self.fail_rate and self._rng.random() < self.fail_rate:
            fault = "500"
        if fault == "429":
            return "429-scripted", {**self._retry_headers(self.retry_after_s), "x-ratelimit-remaining-requests": "0"}
        if fault == "busy":
            return "429-busy", self._retry_headers(self.retry_after_s)
        if fault == "quota":
            return "429-quota", {}
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        if fault == "500-noretry":
            return "500", {**self._rate_headers(), "x-should-retry": "false"}
        if fault == "409-retry":
            return "409", {**self._rate_headers(), "x-should-retry": "true"}
        return fault, self._rate_headers()

    @staticmethod
    def _retry_headers(seconds: float, with_ms: bool = True) -> dict[str, str]:
        headers = {"retry-after": str(math.ceil(seconds))}
        if with_ms:
            headers["retry-after-ms"] = f"{seconds * 1000:.0f}"
        return headers

    # -- the fake model --------------------------------------------------------------------

    def answer(self, body: dict[str, Any], garbage: bool = False) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of a chat completion request that passed the gate."""
        messages = body.get("messages") or []
        response_format = body.get("response_format")
        if response_format is not None and not self.json_schema:
            return 400, _error(
                "response_format 'json_schema' is not supported by this server",
                "invalid_request_error",
                param="response_format",
            )
        first_user = next((m["content"] for m in messages if m.get("role") == "user"), "")
        reask = any(m.get("role") == "assistant" for m in messages)
        blocks = [text for _, text in _BLOCK.findall(first_user)]
        if garbage:
            text = "이 답변은 흥미롭지만 평가를 내리기 어렵습니다."
        elif response_format is not None:
            text = json.dumps(self._json_verdict(blocks, response_format), ensure_ascii=False)
        else:
            text = self._text_verdict(blocks, bare=reask)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        usage = {"prompt_tokens": prompt_chars // 2 + 1, "completion_tokens": len(text) // 2 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {
            "id": f"chatcmpl-{self._rng.randrange(1 << 30):x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }

    def ratings(self, answer: str) -> dict[str, int]:
        """This server's judge behaviour (`judge`) grading one answer."""
        if self.judge == "length":
            return ratings_for(answer)
        quality = true_quality(answer)
        if self.judge == "noisy":
            with self._lock:
                quality = round(quality + self._rng.gauss(0, self.noise_sd))
        quality = max(1, min(10, quality))
        return {**{c: quality for c in CRITERIA}, "overall": quality}

    def _pair_winner(self, blocks: list[str]) -> str:
        if self.position_bias or len(blocks[0]) > len(blocks[1]):
            return "A"
        return "B" if len(blocks[1]) > len(blocks[0]) else "tie"

    def _text_verdict(self, blocks: list[str], bare: bool) -> str:
        if len(blocks) >= 2:
            verdict = {"A": "[[A]]", "B": "[[B]]", "tie": "[[C]]"}[self._pair_winner(blocks)]
            return verdict if bare else f"두 답변을 비교했습니다. 더 충실한 쪽을 고릅니다.\n\n{verdict}"
        ratings = self.ratings(blocks[0] if blocks else "")
        lines = "\n".join(f"{name.capitalize()}: [[{value}]]" for name, value in ratings.items())
        return lines if bare else f"답변의 길이와 충실도를 기준으로 평가했습니다.\n\n{lines}"

    def _json_verdict(self, blocks: list[str], response_format: dict[str, Any]) -> dict[str, Any]:
        schema = response_format.get("json_schema", {}).get("schema", {})
        properties = schema.get("properties", {})
        verdict: dict[str, Any] = {}
        if "rationale" in properties:
            verdict["rationale"] = "답변의 길이와 충실도를 기준으로 평가했습니다."
        if "winner" in properties and len(blocks) >= 2:
            verdict["winner"] = self._pair_winner(blocks)
        ratings = self.ratings(blocks[0] if blocks else "")
        verdict.update({k: v for k, v in ratings.items() if k in properties})
        return verdict

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        first_user = next((m["content"] for m in body.get("messages", []) if m.get("role") == "user"), "")
        with self._lock:
            fault, headers = self._admit()
            arrival = time.monotonic()
            self.asked.append(first_user)
        status = 200
        try:
            if fault == "429-quota":
                status = 429
                message = "You exceeded your current quota, please check your plan and billing details."
                return status, _error(message, "insufficient_quota", code="insufficient_quota"), headers
            if fault is not None and fault.startswith("429"):
                status = 429
                reason = {"429-concurrency": "concurrent requests", "429-busy": "server busy"}.get(
                    fault, "requests per minute")
                return status, _error(f"Rate limit reached ({reason})", "requests", code="rate_limit_exceeded"), headers
            if fault == "500":
                status = 500
                return status, _error("The server had an error while processing your request.", "server_error"), headers
            if fault == "409":
                status = 409
                return status, _error("Another request is updating this resource.", "conflict"), headers
            time.sleep(self.slow_s if fault == "slow" else self.latency_s)
            status, payload = self.answer(body, garbage=fault == "garbage")
            return status, payload, headers
        finally:
            with self._lock:
                if fault is None or not fault.startswith("429"):
                    self._in_flight -= 1
                self.status_counts[status] += 1
                self.arrivals.append((arrival, status))

    # -- files and batches -----------------------------------------------------------------

    def upload(self, filename: str, content: bytes, purpose: str) -> dict[str, Any]:
        with self._lock:
            self.files_uploaded += 1
            file_id = f"file-{len(self._files) + 1}"
            obj = {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
            }
            self._files[file_id] = {"meta": obj, "content": content}
        return obj

    def create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        input_id = body.get("input_file_id")
        if input_id not in self._files:
            return 404, _error(f"No such file: {input_id}", "invalid_request_error")
        with self._lock:
            self.batches_created += 1
            batch_id = f"batch_{len(self._batches) + 1}"
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body.get("endpoint"),
                "input_file_id": input_id,
                "completion_window": body.get("completion_window"),
                "status": "validating",
                "created_at": int(time.time()),
                "metadata": body.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
            }
            self._batches[batch_id] = batch
        threading.Thread(target=self._process_batch, args=(batch_id,), daemon=True).start()
        return 200, dict(batch)

    def _process_batch(self, batch_id: str) -> None:
        batch = self._batches[batch_id]
        lines = self._files[batch["input_file_id"]]["content"].decode("utf-8").splitlines()
        with self._lock:
            batch["status"] = "in_progress"
            batch["request_counts"]["total"] = len(lines)
        time.sleep(self.batch_delay_s)
        outputs, errors = [], []
        for number, line in enumerate(lines, start=1):
            request = json.loads(line)
            with self._lock:
                failed = bool(self.fail_rate) and self._rng.random() < self.fail_rate
            row = {"id": f"batch_req_{number}", "custom_id": request["custom_id"]}
            if failed:
                error = _error("The server had an error while processing your request.", "server_error")
                errors.append({**row, "response": {"status_code": 500, "request_id": "", "body": error}, "error": None})
                continue
            status, payload = self.answer(request["body"])
            response = {"status_code": status, "request_id": f"req_{number}", "body": payload}
            (outputs if status == 200 else errors).append({**row, "response": response, "error": None})
        with self._lock:
            for rows, field in ((outputs, "output_file_id"), (errors, "error_file_id")):
                if rows:
                    content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
                    file_id = f"file-{len(self._files) + 1}"
                    meta = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                            "filename": f"{batch_id}_{field}.jsonl", "purpose": "batch_output", "status": "processed"}
                    self._files[file_id] = {"meta": meta, "content": content}
                    batch[field] = file_id
            batch["request_counts"].update(completed=len(outputs), failed=len(errors))
            batch["status"] = "completed"
            batch["completed_at"] = int(time.time())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections when a client opens many at once


def _error(message: str, kind: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart/form-data body: name -> (filename, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True))
    return fields


def _make_handler(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode("utf-8")
            try:
                self.send_response(status)
                kind = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout) before the answer was ready

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/v1/chat/completions":
                with server._lock:
                    server.api_keys.add(self.headers.get("Authorization", "").removeprefix("Bearer "))
                status, payload, headers = server.chat(json.loads(body))
                self._send(status, payload, headers)
            elif self.path == "/v1/files":
                fields = _parse_multipart(self.headers["Content-Type"], body)
                filename, content = fields["file"]
                purpose = fields["purpose"][1].decode()
                self._send(200, server.upload(filename or "upload.jsonl", content, purpose))
            elif self.path == "/v1/batches":
                self._send(*server.create_batch(json.loads(body)))
            else:
                self._send(404, _error(f"unknown path {self.path}", "invalid_request_error"))

        def do_GET(self) -> None:
            match = re.fullmatch(r"/v1/(files|batches)/([^/]+)(/content)?", self.path)
            with server._lock:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "fake"}]})
                elif match and match[1] == "batches" and match[2] in server._batches:
                    self._send(200, dict(server._batches[match[2]]))
                elif match and match[1] == "files" and match[2] in server._files:
                    entry = server._files[match[2]]
                    self._send(200, entry["content"] if match[3] else entry["meta"])
                else:
                    self._send(404, _error(f"not found: {self.path}", "invalid_request_error"))

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible endpoint until Ctrl-C.")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of chat requests answered 500")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument("--rpm", type=float, default=None, help="requests-per-minute limit")
    parser.add_argument("--max-concurrent", type=int, default=None, help="limit on requests in flight")
    parser.add_argument("--concurrency-retry-after", type=float, default=1.0,
                        help="Retry-After seconds of a 429 over --max-concurrent (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the failure draws")
    parser.add_argument("--judge", choices=JUDGE_BEHAVIOURS, default="length", help="how it grades (default: %(default)s)")
    args = parser.parse_args()
    with FakeOpenAI(fail_rate=args.fail_rate, latency_s=args.latency, rpm=args.rpm, judge=args.judge,
                    max_concurrent=args.max_concurrent, seed=args.seed,
                    concurrency_retry_after_s=args.concurrency_retry_after, concurrency_retry_after_ms=False) as server:
        print(f"export OPENAI_BASE_URL={server.base_url} OPENAI_API_KEY=fake", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
