"""`selfguided serve --proxy-to URL`: a tracing proxy in front of an OpenAI-compatible server we do
not own (vLLM, KServe's predictor), so that its answers become production traces too. On a cluster
it runs as the InferenceService's transformer (manifests/serving/transformer.yaml); anywhere else,
in front of any `/v1/chat/completions`.

`POST /v1/chat/completions` is forwarded as sent, less its `metadata` (read here: the category);
the upstream's answer, plain or streamed, goes back unchanged and is offered to the ProductionLogger
once complete. For a stream whose client did not ask for usage, the proxy asks the upstream for it
(`stream_options.include_usage`) to record tokens, and leaves that last usage-only chunk out of
what the client gets. `GET /v1/models[...]` is forwarded; `GET /health` answers for the proxy;
`GET /v1/trace-stats` shows the counters. An unreachable upstream is a 502 in OpenAI's error shape.
Every route also answers under `/openai` (`/openai/v1/chat/completions`), the path KServe's Hugging
Face runtime serves, so clients keep their URL whether or not the proxy stands in front.
The HTTP client is the standard library's, in the server's thread pool (one thread per request in
flight; Starlette's pool holds 40 by default).
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations.
import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any

from selfguided.pipelines.serving.protocol import ApiError, parse_metadata
from selfguided.components.registry.production_log import ServingLabels
from selfguided.pipelines.options import missing_sqlite_store
from selfguided.pipelines.serving.tracing import offer_answer, start_logger, trace_stats

UPSTREAM_TIMEOUT_S = 600.0


def upstream_base(url: str) -> str:
    """`http://host:port` from what people write (`http://host:port/v1/`, ...)."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error_from(exc: Exception) -> ApiError:
    return ApiError(502, f"the upstream server cannot be reached: {type(exc).__name__}: {exc}", kind="server_error",
                    code="upstream_unreachable")


def create_proxy_app(upstream: str, logger=None, *, timeout: float = UPSTREAM_TIMEOUT_S):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    base = upstream_base(upstream)
    app = FastAPI(title="selfguided serve --proxy-to", description=__doc__.split("\n\n", 1)[0])
    app.state.logger = logger

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    def call(method: str, path: str, body: bytes | None = None):
        request = urllib.request.Request(f"{base}{path}", data=body, method=method,
                                         headers={"Content-Type": "application/json"} if body else {})
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:  # the upstream's own error answer: passed on
            return exc
        except (urllib.error.URLError, OSError) as exc:
            raise _error_from(exc) from None

    async def relay(method: str, path: str):
        response = await run_in_threadpool(call, method, path)
        with response:
            content = await run_in_threadpool(response.read)
        return Response(content, status_code=response.status,
                        media_type=response.headers.get("Content-Type", "application/json"))

    def health():
        return {"status": "ok", "upstream": base}

    def get_trace_stats():
        return trace_stats(logger)

    async def list_models():
        return await relay("GET", "/v1/models")

    async def get_model(model_id: str):
        return await relay("GET", f"/v1/models/{model_id}")

    async def chat_completions(request: Request):
        started_ns, started = time.time_ns(), time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        metadata = parse_metadata(body)
        forwarded: dict[str, Any] = {k: v for k, v in body.items() if k != "metadata"}
        stream = bool(body.get("stream"))
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        hide_usage = stream and not options.get("include_usage")
        if hide_usage:
            forwarded["stream_options"] = {**options, "include_usage": True}
        response = await run_in_threadpool(call, "POST", "/v1/chat/completions", json.dumps(forwarded).encode())
        if not stream or response.status != 200:
            with response:
                content = await run_in_threadpool(response.read)
            if response.status == 200:
                _offer_plain(logger, body, metadata, content, started_ns, started)
            return Response(content, status_code=response.status,
                            media_type=response.headers.get("Content-Type", "application/json"))

        async def events():
            pieces: list[str] = []
            usage: dict[str, Any] = {}
            finish = "cancelled"
            try:
                while line := await run_in_threadpool(response.readline):
                    text = line.decode("utf-8", "replace")
                    event = _event(text)
                    if event is not None:
                        usage = event.get("usage") or usage
                        for choice in event.get("choices") or []:
                            pieces.append((choice.get("delta") or {}).get("content") or "")
                            finish = choice.get("finish_reason") or finish
                        if hide_usage and not event.get("choices") and event.get("usage"):
                            continue  # asked for by the proxy, not by the client
                    yield line
            finally:
                response.close()
                offer_answer(logger, body, metadata, "".join(pieces), started_ns, started, stream=True,
                             prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                             finish_reason=finish)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    app.add_api_route("/health", health, methods=["GET"])
    for prefix in ("", "/openai"):
        app.add_api_route(f"{prefix}/v1/trace-stats", get_trace_stats, methods=["GET"])
        app.add_api_route(f"{prefix}/v1/models", list_models, methods=["GET"])
        app.add_api_route(f"{prefix}/v1/models/{{model_id:path}}", get_model, methods=["GET"])
        app.add_api_route(f"{prefix}/v1/chat/completions", chat_completions, methods=["POST"])
    return app


def _event(line: str) -> dict[str, Any] | None:
    """The JSON object of a server-sent `data: {...}` line, else None."""
    if not line.startswith("data: {"):
        return None
    try:
        event = json.loads(line[len("data: "):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _offer_plain(logger, body: dict[str, Any], metadata: dict[str, str], content: bytes, started_ns: int,
                 started: float) -> None:
    try:
        answer = json.loads(content)
        choice = answer["choices"][0]
        usage = answer.get("usage") or {}
    except (ValueError, KeyError, IndexError, TypeError):
        return  # not an answer we can read: nothing to trace
    offer_answer(logger, body, metadata, str((choice.get("message") or {}).get("content") or ""), started_ns, started,
                 prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                 finish_reason=choice.get("finish_reason"))


def run_proxy(args: argparse.Namespace, tracking_uri: str, run_uvicorn) -> int:
    """`selfguided serve MODEL_URI --proxy-to URL`: the tracing proxy until interrupted. MODEL_URI
    (`models:/NAME@ALIAS` or `models:/NAME/VERSION`) only labels the traces: the alias's version is
    looked up once, at start."""
    from selfguided.pipelines.serving.resolve import registry_labels

    registered, version, alias = ("", "", "") if missing_sqlite_store(tracking_uri) is not None else \
        registry_labels(args.model_uri, tracking_uri)
    labels = ServingLabels(registered_model=registered, model_version=version, alias=alias,
                           deployment=args.deployment, served_model=args.served_model_name or registered)
    host = getattr(args, "listen_host", None) or getattr(args, "host", "127.0.0.1")
    logger = start_logger(args, labels, tracking_uri)
    try:
        print(f"selfguided serve: tracing proxy to {upstream_base(args.proxy_to)} for {args.model_uri}"
              f"{f' (version {version})' if version else ''} on http://{host}:{args.port}/v1", flush=True)
        return run_uvicorn(create_proxy_app(args.proxy_to, logger), host, args.port)
    finally:
        if logger is not None:
            logger.close()
