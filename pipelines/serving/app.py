"""The transformers backend of `selfguided serve`: the model loaded once, a FastAPI app speaking
`GET /v1/models`, `POST /v1/chat/completions` (plain and `stream: true`) and `GET /health`.

Why not `transformers serve`: (transformers 5.x) it does load a local folder on CPU offline and
applies its chat template, but it names the model by its filesystem path (no served name), answers
an unknown model with 400 `{"detail": ...}` instead of OpenAI's 404 error object, an empty
conversation with 500, ends a stream without `data: [DONE]`, and does not strip the answer as the
pipeline's generation does; its in-process entry point is marked for tests only. This app's
generation is the pipeline's own (`artifact.generate_tokens`, decoding settings from
`artifact.generation_config`), so a greedy answer here is the answer the evaluation saw. The
conversation goes through `ModelManifest.prompt(turns, earlier_answers)`, the same string as the
tokenizer's chat template. Responses carry `usage` token counts. One generation runs at a time (a
lock around the model): requests queue, which suits a demo or an evaluation on a CPU; use the vLLM
backend for throughput.

With a `ProductionLogger` (serving/tracing.py), every answer, plain or streamed (once the stream
ended), is offered to it for a production trace; `GET /v1/trace-stats` shows its counters.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations, whose
# types (Request) are imported inside create_app.
import functools
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from selfguided.components.model import artifact as tm
from selfguided.pipelines.serving.protocol import ApiError, AnswerText, parse_chat_request, sse
from selfguided.pipelines.serving.tracing import offer_answer, trace_stats

DEFAULT_MAX_NEW_TOKENS = 256


class Generator:
    """A trained model loaded for serving: prompt, generate (one at a time), stream."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        import torch

        self.manifest = tm.read_manifest(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tokenizer = tm.load_trained(model_dir, device=self.device)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.lock = threading.Lock()  # one generation at a time; requests queue on it

    def prompt_ids(self, turns: list[str], answers: list[str]) -> list[int]:
        """The conversation prompted as the model was trained, tokenized as in training."""
        prompt = self.manifest.prompt(turns, answers)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float) -> list[int]:
        """The new token ids (EOS removed): the pipeline's own generation, `generate_tokens`."""
        with self.lock:
            return tm.generate_tokens(self.model, [prompt_ids], max_new_tokens=max_new_tokens, batch_size=1,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id, temperature=temperature,
                                      progress=False)[0]

    def stream(self, prompt_ids: list[int], max_new_tokens: int, temperature: float,
               cancel: threading.Event):
        """Start generating in a thread; iterate the returned streamer for decoded text pieces.
        Setting `cancel` stops the generation at its next token (and frees the lock)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        # The same settings as generate_tokens, so that a greedy stream is the plain answer.
        config = tm.generation_config(max_new_tokens=max_new_tokens, temperature=temperature,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id)
        streamer = _streamer_class()(self.tokenizer)
        input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.model.device)

        def run() -> None:
            ended = False
            try:
                with self.lock:
                    if not cancel.is_set():
                        self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                            generation_config=config, streamer=streamer,
                                            stopping_criteria=StoppingCriteriaList([Cancelled()]))
                        ended = True
            except Exception as exc:  # reported to the client as a stream error
                streamer.error = exc
            finally:
                if not ended:
                    streamer.end()

        threading.Thread(target=run, name="selfguided-serve-generate", daemon=True).start()
        return streamer


@functools.cache
def _streamer_class():
    """TextIteratorStreamer that also counts the generated tokens (EOS not counted); built on first
    use, as transformers is imported lazily."""
    from transformers import TextIteratorStreamer

    class Streamer(TextIteratorStreamer):
        def __init__(self, tokenizer):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.generated = 0
            self.error: Exception | None = None
            self._eos = tokenizer.eos_token_id

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.generated += int((value != self._eos).sum())
            super().put(value)

    return Streamer


def create_app(model_dir: str | Path, served_model_name: str, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               device: str | None = None, generator: Generator | None = None, logger=None):
    """The OpenAI-compatible FastAPI app on a trained model directory (loaded now); `logger`, a
    started ProductionLogger, traces its answers."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    gen = generator or Generator(model_dir, device=device)
    created = int(time.time())
    model_card = {"id": served_model_name, "object": "model", "created": created, "owned_by": "selfguided",
                  "max_model_len": gen.max_positions}
    app = FastAPI(title="selfguided serve", description=__doc__.split("\n\n", 1)[0])
    app.state.generator = gen
    app.state.served_model_name = served_model_name
    app.state.logger = logger

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, exc: Exception):
        return JSONResponse(ApiError(500, f"{type(exc).__name__}: {exc}", kind="server_error").body(),
                            status_code=500)

    def check_model(name: Any) -> None:
        if name != served_model_name:
            raise ApiError(404, f"The model `{name}` does not exist: this server serves `{served_model_name}`",
                           param="model", code="model_not_found")

    @app.get("/health")
    def health():
        return {"status": "ok", "model": served_model_name}

    @app.get("/v1/trace-stats")
    def get_trace_stats():
        return trace_stats(logger)

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str):
        check_model(model_id)
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started_ns, started = time.time_ns(), time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if isinstance(body, dict):
            if not isinstance(body.get("model"), str):
                raise ApiError(400, "model is required", param="model")
            check_model(body["model"])
        req = parse_chat_request(body, max_new_tokens)
        prompt_ids = gen.prompt_ids(req.turns, req.answers)
        if gen.max_positions and len(prompt_ids) >= gen.max_positions:
            raise ApiError(400, f"the conversation is {len(prompt_ids)} tokens; this model reads at most "
                           f"{gen.max_positions}", param="messages", code="context_length_exceeded")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())

        def usage(completion_tokens: int) -> dict[str, int]:
            return {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                    "total_tokens": len(prompt_ids) + completion_tokens}

        def finish_reason(answer: AnswerText, generated: int) -> str:
            return "stop" if answer.stopped or generated < req.max_tokens else "length"

        if not req.stream:
            new_ids = await run_in_threadpool(gen.generate, prompt_ids, req.max_tokens, req.temperature)
            answer = AnswerText(req.stops)
            content = answer.feed(gen.decode(new_ids)) + answer.finish()
            offer_answer(logger, body, req.metadata, content, started_ns, started, prompt_tokens=len(prompt_ids),
                         completion_tokens=len(new_ids), finish_reason=finish_reason(answer, len(new_ids)))
            return {
                "id": completion_id, "object": "chat.completion", "created": now, "model": served_model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": None, "finish_reason": finish_reason(answer, len(new_ids))}],
                "usage": usage(len(new_ids)),
            }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return sse({"id": completion_id, "object": "chat.completion.chunk", "created": now,
                         "model": served_model_name,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        async def events():
            cancel = threading.Event()
            streamer = gen.stream(prompt_ids, req.max_tokens, req.temperature, cancel)
            answer = AnswerText(req.stops)
            sent: list[str] = []
            finish = "cancelled"  # until the stream ends as it should
            try:
                yield chunk({"role": "assistant", "content": ""})
                pieces = iter(streamer)
                while (piece := await run_in_threadpool(next, pieces, None)) is not None:
                    if delta := answer.feed(piece):
                        sent.append(delta)
                        yield chunk({"content": delta})
                    if answer.stopped:
                        break
                cancel.set()
                if streamer.error is not None:
                    finish = "error"
                    yield sse(ApiError(500, f"generation failed: {type(streamer.error).__name__}: "
                                             f"{streamer.error}", kind="server_error").body())
                else:
                    if rest := answer.finish():
                        sent.append(rest)
                        yield chunk({"content": rest})
                    finish = finish_reason(answer, streamer.generated)
                    yield chunk({}, finish)
                    if req.include_usage:
                        yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": now,
                                    "model": served_model_name, "choices": [], "usage": usage(streamer.generated)})
                yield "data: [DONE]\n\n"
            finally:  # also when the client goes away: stop generating
                cancel.set()
                if finish != "error":
                    offer_answer(logger, body, req.metadata, "".join(sent), started_ns, started, stream=True,
                                 prompt_tokens=len(prompt_ids), completion_tokens=streamer.generated,
                                 finish_reason=finish)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
