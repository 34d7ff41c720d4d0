"""The OpenAI chat-completions protocol as `selfguided serve` speaks it: requests parsed and checked,
the conversation in the trained format, answers cut at stop strings, server-sent events.

System (and developer) messages are not part of the trained format and are dropped; consecutive
messages of one role are joined with a blank line; the user/assistant turns must then start and
end with a user message. Request fields: `model` (must be the served name, else 404), `messages`,
`max_tokens` / `max_completion_tokens`, `temperature` (default 0: greedy, as the pipeline
generates; > 0 samples), `stop` (a string or a list; the answer ends before the first one),
`stream`, `stream_options.include_usage`, `n` (1 only), `metadata` (OpenAI's: at most 16 string
values, keys up to 64 and values up to 512 characters; `metadata.category` names the writing
category of the request for the production traces, registry/production.py). Other OpenAI fields (top_p, penalties,
seed, ...) are accepted and ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DROPPED_ROLES = ("system", "developer")


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
    metadata: dict[str, str] = field(default_factory=dict)


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


def parse_metadata(body: dict[str, Any]) -> dict[str, str]:
    """The request's `metadata` as OpenAI defines it: at most 16 string values, keys up to 64 and
    values up to 512 characters; absent or null is {}."""
    metadata = body.get("metadata")
    if metadata is None:
        return {}
    if not (isinstance(metadata, dict) and len(metadata) <= 16
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                    for k, v in metadata.items())):
        raise ApiError(400, "metadata must be an object of at most 16 string values (keys up to 64 characters, "
                       "values up to 512)", param="metadata")
    return dict(metadata)


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
                       include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
                       metadata=parse_metadata(body))


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


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
