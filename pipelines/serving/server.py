"""`selfguided serve [MODEL_URI]`: a model version behind an OpenAI-compatible HTTP endpoint.

MODEL_URI is `models:/NAME@ALIAS` (default: the champion), `models:/NAME/VERSION`, `runs:/RUN/PATH`
(or any other MLflow artifact URI), or a local trained model directory (a finetune output, or a
downloaded pyfunc model folder). A registered version is downloaded and its `artifacts/model_dir`
is the trained model directory (layout: `components/trained_model.py`).

Two backends, both speaking `GET /v1/models`, `POST /v1/chat/completions` (plain and `stream: true`)
and `GET /health`:

- vLLM's OpenAI server, when vLLM is installed and a GPU is present: it serves the merged export
  (`trained_model.export_merged`: adapter folded in, bf16, tokenizer with the chat template that
  prompts as the model was trained) under the served model name. `--max-new-tokens` and greedy
  decoding become vLLM's generation defaults (vLLM also caps requests at that many tokens).
- otherwise a small FastAPI app on the transformers model (`create_app`). `transformers serve`
  (transformers 5.x) does load a local folder on CPU offline and applies its chat template, but it
  names the model by its filesystem path (no served name), answers an unknown model with 400
  `{"detail": ...}` instead of OpenAI's 404 error object, an empty conversation with 500, ends a
  stream without `data: [DONE]`, and does not strip the answer as the pipeline's generation does;
  its in-process entry point is marked for tests only. Adapting all of that would be more code
  than this app, whose generation is the pipeline's own (`trained_model.generate_tokens`), so a
  greedy answer here is the answer the pipeline's evaluation saw.

The app's conversation format: system (and developer) messages are not part of the trained
format and are dropped; consecutive messages of one role are joined with a blank line; the
user/assistant turns must then start and end with a user message and go through
`ModelManifest.prompt(turns, earlier_answers)`, the same string as the tokenizer's chat template.
The answer is stripped of surrounding whitespace. Request fields: `model` (must be the served
name, else 404), `messages`, `max_tokens` / `max_completion_tokens` (default `--max-new-tokens`),
`temperature` (default 0: greedy, as the pipeline generates; > 0 samples), `stop` (a string or a
list; the answer ends before the first one), `stream`, `stream_options.include_usage`, `n` (1
only). Other OpenAI fields (top_p, penalties, seed, ...) are accepted and ignored. Responses
carry `usage` token counts. One generation runs at a time (a lock around the model): requests
queue, which suits a demo or an evaluation on a CPU; use the vLLM backend for throughput.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations, whose
# types (Request) are imported inside create_app.
import argparse
import functools
import json
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfguided.components.model import artifact as tm

# register.REGISTERED_MODEL_NAME and register.CHAMPION, written out: importing register (kfp,
# mlflow, pandas) would make every `selfguided` command slow to start. A test keeps them equal.
DEFAULT_MODEL_URI = "models:/korean-writing-assistant@champion"
DEFAULT_MAX_NEW_TOKENS = 256
DROPPED_ROLES = ("system", "developer")


class ServeError(RuntimeError):
    """The model cannot be served; the message is one line that names what and why."""


# ---------------------------------------------------------------------------------------------
# Resolving MODEL_URI to a trained model directory
# ---------------------------------------------------------------------------------------------


@dataclass
class ResolvedModel:
    model_dir: Path
    """The trained model directory (selfguided.json, adapter/ or model/, tokenizer/)."""
    name: str
    """The default served model name: the registered model's name, else the folder's."""
    source: str
    """What was resolved, for the startup line (`models:/x@champion (version 3)`)."""


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the local run's SQLite store (`.selfguided/mlflow.db`)."""
    from selfguided.pipelines.local import DEFAULT_WORKDIR, default_tracking_uri as local_default

    return local_default(Path(DEFAULT_WORKDIR))


def _is_uri(text: str) -> bool:
    scheme = text.split(":", 1)[0]
    return ":" in text and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def resolve_model(model_uri: str, tracking_uri: str | None, download_dir: str | Path) -> ResolvedModel:
    """The trained model directory behind MODEL_URI (registered versions are downloaded into
    `download_dir`). Raises ServeError with a one-line reason. For an MLflow URI this points the
    process's MLflow at `tracking_uri` (`mlflow.set_tracking_uri`), as register_candidates does."""
    if not _is_uri(model_uri) or model_uri.startswith("file:"):
        path = Path(model_uri.removeprefix("file://")).expanduser().resolve()
        if not path.is_dir():
            raise ServeError(f"{model_uri}: no such directory (MODEL_URI is models:/NAME@ALIAS, "
                             "models:/NAME/VERSION, runs:/RUN_ID/PATH or a trained model directory)")
        from selfguided.components.registry.logged_model import model_dir_in

        model_dir = model_dir_in(path)
        name = path.name
        source = str(path)
    else:
        model_dir, name, source = _download(model_uri, tracking_uri, Path(download_dir))
    try:
        tm.read_manifest(model_dir)
    except tm.ArtifactError as exc:
        raise ServeError(f"{model_uri}: {_one_line(exc)}") from None
    return ResolvedModel(model_dir=model_dir, name=name, source=source)


def _download(model_uri: str, tracking_uri: str | None, download_dir: Path) -> tuple[Path, str, str]:
    hint = ""
    if model_uri.startswith("models:/") and model_uri.endswith("@champion"):
        hint = ("; no champion yet? `make run` trains, registers and promotes one "
                "(or name a version: models:/NAME/VERSION)")
    registry = model_uri.startswith(("models:/", "runs:/"))
    if registry and not tracking_uri:
        raise ServeError(f"cannot resolve {model_uri}: no MLflow tracking store (give --tracking-uri or set "
                         f"MLFLOW_TRACKING_URI){hint}")
    if registry and tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.is_file():  # MLflow would create an empty store there
            raise ServeError(f"cannot resolve {model_uri}: the MLflow store {tracking_uri} does not exist{hint}")

    from selfguided.components.registry.logged_model import download_model_dir

    try:
        model_dir = download_model_dir(model_uri, tracking_uri, download_dir)
    except Exception as exc:  # MlflowException, OSError, sqlalchemy errors: one line for the user
        raise ServeError(f"cannot resolve {model_uri} in {tracking_uri}: {_one_line(exc)}{hint}") from None

    source, name = model_uri, model_dir.name
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/")
        name = ref.split("@", 1)[0] if "@" in ref else ref.rsplit("/", 1)[0]
        if "@" in ref:
            try:
                from mlflow import MlflowClient

                version = MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(
                    *ref.split("@", 1)).version
                source = f"{model_uri} (version {version})"
            except Exception:  # only for the startup line
                pass
    elif model_uri.startswith("runs:/"):
        name = "run-" + model_uri.removeprefix("runs:/").split("/", 1)[0]
    return model_dir, name, source


# ---------------------------------------------------------------------------------------------
# The transformers backend: model, generation, and the OpenAI-compatible app
# ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    turns: list[str]
    answers: list[str]
    max_tokens: int
    temperature: float
    stops: list[str]
    stream: bool
    include_usage: bool


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"messages[{index}].content: only text parts are supported",
                               param=f"messages[{index}].content")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts",
                   param=f"messages[{index}].content")


def conversation(messages: Any) -> tuple[list[str], list[str]]:
    """(user turns, assistant answers) from OpenAI chat messages, as `ModelManifest.prompt` takes
    them. System and developer messages are dropped; consecutive messages of one role are joined
    with a blank line; the rest must start and end with a user message."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array", param="messages")
    kept: list[list[str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a role", param=f"messages[{i}]")
        role = message["role"]
        if role in DROPPED_ROLES:
            continue
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}]: role {role!r} is not supported (user and assistant; system "
                           "messages are dropped)", param=f"messages[{i}].role")
        text = _content_text(message.get("content"), i)
        if kept and kept[-1][0] == role:
            kept[-1][1] += "\n\n" + text
        else:
            kept.append([role, text])
    if not kept or kept[0][0] != "user":
        raise ApiError(400, "the conversation must start with a user message (system messages are dropped)",
                       param="messages")
    if kept[-1][0] != "user":
        raise ApiError(400, "the last message must be a user message: the model answers it", param="messages")
    return [t for r, t in kept if r == "user"], [t for r, t in kept if r == "assistant"]


def _number(body: dict, key: str, kind: type, low: float, high: float | None = None):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ApiError(400, f"{key} must be {'an integer' if kind is int else 'a number'}", param=key)
    if value < low or (high is not None and value > high):
        raise ApiError(400, f"{key} must be between {low} and {high}" if high is not None
                       else f"{key} must be at least {low}", param=key)
    return kind(value)


def parse_chat_request(body: Any, default_max_tokens: int) -> ChatRequest:
    """Check a chat completion request body (the model name is checked by the caller)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    turns, answers = conversation(body.get("messages"))
    max_tokens = _number(body, "max_completion_tokens", int, 1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", int, 1)
    temperature = _number(body, "temperature", float, 0.0, 2.0)
    n = _number(body, "n", int, 1)
    if n not in (None, 1):
        raise ApiError(400, "n must be 1: one answer per request", param="n")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise ApiError(400, "stop must be a string or a list of at most 4 strings", param="stop")
    options = body.get("stream_options") or {}
    return ChatRequest(turns=turns, answers=answers, max_tokens=max_tokens or default_max_tokens,
                       temperature=temperature or 0.0, stops=[s for s in stops if s],
                       stream=bool(body.get("stream")),
                       include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


class AnswerText:
    """Turns decoded pieces of an answer into what the client gets: surrounding whitespace removed
    (as `trained_model.generate_texts` strips) and cut before the first stop string. Fed the whole
    text at once or piece by piece, the result is the same, so a stream joins to the plain answer."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1  # a stop string may still be completing
        self.text = ""  # the answer so far, without its trailing whitespace
        self.space = ""  # that trailing whitespace: sent only when more text follows
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """What of the answer can be sent now that `piece` follows."""
        if self.stopped:
            return ""
        if not self.text:
            piece = piece.lstrip()
        body = piece.rstrip()
        if not body:
            self.space += piece if self.text else ""
            return ""
        self.text += self.space + body
        self.space = piece[len(body):]
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the answer, once generation ended."""
        return "" if self.stopped else self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stops:
            start = max(0, self.sent - self.hold)
            found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if found:
                self.stopped = True
                self.text = self.text[: min(found)]
                out, self.sent = self.text[self.sent:], len(self.text)
                return out
        end = len(self.text) if final else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent:end], end
        return out


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


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(model_dir: str | Path, served_model_name: str, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               device: str | None = None, generator: Generator | None = None):
    """The OpenAI-compatible FastAPI app on a trained model directory (loaded now)."""
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

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str):
        check_model(model_id)
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
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
            return {
                "id": completion_id, "object": "chat.completion", "created": now, "model": served_model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": None, "finish_reason": finish_reason(answer, len(new_ids))}],
                "usage": usage(len(new_ids)),
            }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": now,
                         "model": served_model_name,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        async def events():
            cancel = threading.Event()
            streamer = gen.stream(prompt_ids, req.max_tokens, req.temperature, cancel)
            answer = AnswerText(req.stops)
            try:
                yield chunk({"role": "assistant", "content": ""})
                pieces = iter(streamer)
                while (piece := await run_in_threadpool(next, pieces, None)) is not None:
                    if delta := answer.feed(piece):
                        yield chunk({"content": delta})
                    if answer.stopped:
                        break
                cancel.set()
                if streamer.error is not None:
                    yield _sse(ApiError(500, f"generation failed: {type(streamer.error).__name__}: "
                                             f"{streamer.error}", kind="server_error").body())
                else:
                    if rest := answer.finish():
                        yield chunk({"content": rest})
                    yield chunk({}, finish_reason(answer, streamer.generated))
                    if req.include_usage:
                        yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": now,
                                    "model": served_model_name, "choices": [], "usage": usage(streamer.generated)})
                yield "data: [DONE]\n\n"
            finally:  # also when the client goes away: stop generating
                cancel.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


# ---------------------------------------------------------------------------------------------
# The vLLM backend
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _choose_backend(wanted: str) -> str:
    from selfguided.components.model.engines import EngineError, pick_backend

    try:
        return pick_backend(wanted)
    except EngineError as exc:
        raise ServeError(f"--{exc}") from None


def _run_uvicorn(app, host: str, port: int) -> int:
    """Serve `app` until interrupted (tests replace this)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def _exit_on_sigterm(signum, _frame):
    raise SystemExit(128 + signum)


def run_serve(args: argparse.Namespace) -> int:
    """`selfguided serve`: resolve MODEL_URI, then serve it until interrupted; 2 when it cannot."""
    tracking_uri = args.tracking_uri or default_tracking_uri()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a pod stopping) exits through Python, so the downloaded version is removed and a
        # vLLM child is stopped; uvicorn re-raises it after its graceful shutdown.
        import signal

        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="selfguided-serve-") as scratch:
            resolved = resolve_model(args.model_uri, tracking_uri, Path(scratch) / "download")
            name = args.served_model_name or resolved.name
            manifest = tm.read_manifest(resolved.model_dir)
            backend = _choose_backend(args.backend)
            where = (f"{resolved.source} ({manifest.display_name}, arm {manifest.arm}, strategy "
                     f"{manifest.strategy}) as `{name}` on http://{args.host}:{args.port}/v1")
            try:
                if backend == "vllm":
                    merged = tm.export_merged(resolved.model_dir, Path(scratch) / "merged")
                else:
                    app = create_app(resolved.model_dir, name, max_new_tokens=args.max_new_tokens)
            except (OSError, ValueError) as exc:  # e.g. a hub base model that cannot be fetched
                raise ServeError(f"cannot load {resolved.source}: {_one_line(exc)}") from None
            if backend == "vllm":
                print(f"selfguided serve: {where} (vLLM)", flush=True)
                import subprocess

                from selfguided.components.model.engines import vllm_command

                return subprocess.call(vllm_command(merged, name, host=args.host, port=args.port,
                                                    max_new_tokens=args.max_new_tokens))
            print(f"selfguided serve: {where} (transformers on {app.state.generator.device}, one generation "
                  "at a time)", flush=True)
            return _run_uvicorn(app, args.host, args.port)
    except ServeError as exc:
        print(f"selfguided serve: error: {exc}", file=sys.stderr)
        return 2


DESCRIPTION = (
    "Serve a registered model version or a trained model directory with an OpenAI-compatible API: "
    "GET /v1/models, POST /v1/chat/completions (streaming too), GET /health. vLLM when it is installed and a "
    "GPU is present, else a small transformers server (one generation at a time). Conversations are prompted "
    "as the model was trained; system messages are dropped."
)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_uri", nargs="?", default=DEFAULT_MODEL_URI, metavar="MODEL_URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a trained model "
                        "directory (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--served-model-name", help="the model name clients send (default: the registered "
                        "model's name, else the folder's)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="answer length when a request sets no max_tokens (default: %(default)s; with vLLM "
                        "also the most a request gets)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                        "local run's .selfguided/mlflow.db)")
    parser.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto",
                        help="auto: vLLM when installed and a GPU is present, else transformers (default: auto)")
    parser.set_defaults(func=run_serve)


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register `serve` on the `selfguided` command's subparsers."""
    parser = subparsers.add_parser(
        "serve", help="serve a model version (default: the champion) behind an OpenAI-compatible endpoint",
        description=DESCRIPTION)
    add_serve_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m selfguided.pipelines.serving.server [MODEL_URI] [options]`, the same as `selfguided serve`."""
    parser = argparse.ArgumentParser(prog="selfguided serve", description=DESCRIPTION)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
