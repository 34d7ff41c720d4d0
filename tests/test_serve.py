"""`selfguided serve`: the OpenAI-compatible endpoint on a trained model, talked to with the
official `openai` SDK over real HTTP (uvicorn in a thread on 127.0.0.1), and on a version
registered in a real SQLite MLflow store.

The model is the tiny random GPT-NeoX with a LoRA adapter (registry_fixtures): its answers are
gibberish, but they are deterministic, so the server's answer must be exactly the pipeline's own
greedy `generate_texts` answer for the same conversation prompted as the model was trained.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import uvicorn
from openai import OpenAI
from registry_fixtures import category_scores, decided, make_model_dir, make_summary
from servers import free_port

from selfguided.components.model import artifact as tm
from selfguided.components.model import engines
from selfguided.pipelines.serving import app as serving_app
from selfguided.pipelines.serving import protocol
from selfguided.pipelines.serving import resolve
from selfguided.pipelines.serving import server as serve

NAME = "korean-writing-assistant"
MAX_TOKENS = 16
QUESTION = "봄에 대한 시를 써 주세요."


@contextlib.contextmanager
def running(app):
    """Serve `app` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-serve-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def client_for(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("serve"), arm="self_guided")


@pytest.fixture(scope="module")
def reference(model_dir):
    """The pipeline's greedy answers: prompts -> generate_texts on the same model directory."""
    model, tokenizer = tm.load_trained(model_dir)
    manifest = tm.read_manifest(model_dir)

    def answer(turns: list[str], answers: list[str]) -> str:
        return tm.generate_texts(model, tokenizer, [manifest.prompt(turns, answers)], max_new_tokens=MAX_TOKENS,
                                 progress=False)[0]

    def prompt_tokens(turns: list[str], answers: list[str]) -> int:
        return len(tokenizer(manifest.prompt(turns, answers), add_special_tokens=False)["input_ids"])

    return answer, prompt_tokens


@pytest.fixture(scope="module")
def base_url(model_dir):
    with running(serving_app.create_app(model_dir, NAME, max_new_tokens=MAX_TOKENS)) as url:
        yield url


@pytest.fixture
def client(base_url) -> OpenAI:
    return client_for(base_url)


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with urllib.request.urlopen(f"{base_url}/health", timeout=10) as response:
        assert response.status == 200 and b'"ok"' in response.read()


def test_chat_completion_is_the_pipelines_greedy_answer(client, reference):
    answer, prompt_tokens = reference
    expected = answer([QUESTION], [])
    assert expected  # a non-empty answer, so equality below means something
    completion = client.chat.completions.create(
        model=NAME, temperature=0,
        messages=[{"role": "system", "content": "친절하게 답하세요."},  # not part of the trained format: dropped
                  {"role": "user", "content": QUESTION}])
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].message.role == "assistant"
    assert completion.model == NAME
    usage = completion.usage
    assert usage.prompt_tokens == prompt_tokens([QUESTION], [])
    assert 0 < usage.completion_tokens <= MAX_TOKENS and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.choices[0].finish_reason == ("length" if usage.completion_tokens == MAX_TOKENS else "stop")
    # max_tokens is honoured
    short = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTION}], max_tokens=3)
    assert short.usage.completion_tokens <= 3


def test_two_turn_conversation_is_prompted_as_trained(client, reference):
    answer, prompt_tokens = reference
    q1, a1, q2 = "자기소개서를 작성해 주세요.", "저는 성실한 사람입니다.", "더 짧게 써 주세요."
    completion = client.chat.completions.create(
        model=NAME, temperature=0,
        messages=[{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                  {"role": "user", "content": q2}])
    assert completion.choices[0].message.content == answer([q1, q2], [a1])
    assert completion.usage.prompt_tokens == prompt_tokens([q1, q2], [a1])


def test_stream_joins_to_the_answer_and_ends_with_done(client, base_url, reference):
    answer, prompt_tokens = reference
    plain = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTION}])
    chunks = list(client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": QUESTION}], stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.model == NAME for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == answer([QUESTION], [])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()

    request = urllib.request.Request(
        f"{base_url}/v1/chat/completions", method="POST", headers={"Content-Type": "application/json"},
        data=f'{{"model": "{NAME}", "stream": true, "max_tokens": 4, '
             f'"messages": [{{"role": "user", "content": "{QUESTION}"}}]}}'.encode())
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n") if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"


def test_temperature_samples(client):
    messages = [{"role": "user", "content": QUESTION}]
    sampled = client.chat.completions.create(model=NAME, messages=messages, temperature=1.5, max_tokens=8)
    assert isinstance(sampled.choices[0].message.content, str) and sampled.usage.completion_tokens <= 8
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, temperature=1.5, max_tokens=8,
                                                 stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_ends_the_answer_before_the_stop_string(client):
    full = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTION}])
    text = full.choices[0].message.content
    stop = text[len(text) // 2]
    expected = text[: text.find(stop)]
    cut = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTION}], stop=[stop])
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": QUESTION}],
                                                 stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_unknown_model_is_404_in_openais_shape(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.body["code"] == "model_not_found" and "gpt-4o" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize("messages, extra", [
    ([], {}),
    ([{"role": "system", "content": "시스템만"}], {}),
    ([{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "답"}], {}),
    ([{"role": "tool", "content": "x", "tool_call_id": "1"}], {}),
    ([{"role": "user", "content": QUESTION}], {"n": 2}),
    ([{"role": "user", "content": QUESTION}], {"temperature": 3}),
])
def test_bad_requests_are_400_in_openais_shape(client, messages, extra):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=NAME, messages=messages, **extra)
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["message"]


@pytest.mark.parametrize("text, stops", [
    ("  \n 벚꽃이 피고\n\n바람이 분다.  \n", []),
    ("벚꽃이 피고 ### 지시: 다음", ["###"]),
    ("abc  STOP def", ["STOP", "de"]),
    ("\n\n", ["x"]),
])
def test_answer_text_streamed_piece_by_piece_is_the_whole_answer(text, stops):
    whole = protocol.AnswerText(stops)
    expected = whole.feed(text) + whole.finish()
    pieces = protocol.AnswerText(stops)
    streamed = "".join(pieces.feed(ch) for ch in text) + pieces.finish()
    assert streamed == expected and pieces.stopped == whole.stopped
    cuts = [i for i in (text.strip().find(s) for s in stops) if i >= 0]
    assert expected == (text.strip()[: min(cuts)] if cuts else text.strip()) and whole.stopped == bool(cuts)


def test_conversation_drops_system_messages_and_joins_repeated_roles():
    turns, answers = protocol.conversation([
        {"role": "system", "content": "s"}, {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]}, {"role": "assistant", "content": "c"},
        {"role": "developer", "content": "d"}, {"role": "user", "content": "e"}])
    assert (turns, answers) == (["a\n\nb", "e"], ["c"])


def test_default_model_uri_is_the_registered_champion():
    from selfguided.components.registry import names

    assert resolve.DEFAULT_MODEL_URI == f"models:/{names.REGISTERED_MODEL_NAME}@{names.CHAMPION}"


def test_vllm_command_serves_the_merged_export_with_its_chat_template(tmp_path):
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    command = engines.vllm_command(tmp_path, NAME, host="127.0.0.1", port=8001, max_new_tokens=64)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    options = dict(zip(command[3::2], command[4::2]))
    assert options["--model"] == str(tmp_path) and options["--served-model-name"] == NAME
    assert options["--chat-template"] == str(tmp_path / "chat_template.jinja")
    assert options["--port"] == "8001" and '"temperature": 0.0' in options["--override-generation-config"]


# --- a registered version, through the command ------------------------------------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory, model_dir):
    """A SQLite MLflow store in which `model_dir` is version 1 and the champion."""
    from selfguided.components.registry.promotion import register_candidates
    from selfguided.components.registry.runs import Candidate

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    candidate = Candidate(model_dir, make_summary("tiny", "self_guided", category_scores(6.0)))
    evaluation = decided(True, ("test",))
    register_candidates([candidate], evaluation=evaluation, tracking_uri=uri, pipeline_run="r",
                        scored_data_sha256="0" * 64)
    return uri


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="selfguided")
    serve.add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_command_serves_the_registered_champion(registered, reference, monkeypatch, capsys):
    answer, _ = reference
    seen = {}

    def fake_uvicorn(app, host, port):  # what `selfguided serve` would run, served here for the test
        seen["where"] = (host, port)
        with running(app) as url:
            client = client_for(url)
            seen["models"] = [m.id for m in client.models.list().data]
            seen["answer"] = client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": QUESTION}]).choices[0].message.content
        return 0

    monkeypatch.setattr(serve, "_run_uvicorn", fake_uvicorn)
    args = serve_args("--tracking-uri", registered, "--max-new-tokens", str(MAX_TOKENS))
    assert args.model_uri == resolve.DEFAULT_MODEL_URI
    assert args.func(args) == 0
    assert seen == {"where": ("127.0.0.1", 8000), "models": [NAME], "answer": answer([QUESTION], [])}
    out = capsys.readouterr().out
    assert f"models:/{NAME}@champion (version 1)" in out and "tiny/self_guided" in out


def test_a_version_a_run_and_a_local_directory_resolve_too(registered, model_dir, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow falls back to ./mlflow.db when it is not pointed at the store
    version = resolve.resolve_model(f"models:/{NAME}/1", registered, tmp_path / "v1")
    assert version.name == NAME and tm.read_manifest(version.model_dir) == tm.read_manifest(model_dir)
    run_id = MlflowClient(registered).get_model_version(NAME, "1").run_id
    run = resolve.resolve_model(f"runs:/{run_id}/model", registered, tmp_path / "run")
    assert run.name == f"run-{run_id}" and (run.model_dir / "adapter").is_dir()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    local = resolve.resolve_model(str(model_dir), None, tmp_path / "unused")
    assert local.model_dir == model_dir and local.name == model_dir.name


def test_a_model_uri_that_does_not_resolve_is_one_line_naming_it(registered, tmp_path, capsys):
    def error(*argv: str) -> str:
        args = serve_args(*argv)
        assert args.func(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("selfguided serve: error: ")
        return err

    missing_store = f"sqlite:///{tmp_path}/none/mlflow.db"
    err = error("--tracking-uri", missing_store)
    assert resolve.DEFAULT_MODEL_URI in err and "`make run`" in err
    assert not (tmp_path / "none").exists()  # no empty store created
    err = error("models:/no-such-model@champion", "--tracking-uri", registered)
    assert "models:/no-such-model@champion" in err and "`make run`" in err
    err = error(f"models:/{NAME}/7", "--tracking-uri", registered)
    assert f"models:/{NAME}/7" in err and "make run" not in err
    err = error(str(tmp_path))
    assert str(tmp_path) in err and "selfguided.json" in err
