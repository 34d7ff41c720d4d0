"""The trained-model artifact: layout, manifest validation, prompts, copies without leftovers."""

import json
import shutil

import pytest
from registry_fixtures import make_model_dir
from transformers import AutoTokenizer

from selfguided.components.model import artifact as tm
from selfguided.components.model.prompting import conversation_prompt


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models"), arm="self_guided", strategy="condition")


def test_save_and_read_round_trip(model_dir):
    manifest = tm.read_manifest(model_dir)
    assert (manifest.base_model, manifest.arm, manifest.strategy, manifest.method) == \
        ("tiny", "self_guided", "condition", "lora")
    assert manifest.bundled_base and manifest.display_name == "tiny/self_guided"
    assert manifest.train_data_sha256 == "ab" * 32
    assert tm.read_train_log(model_dir) == [{"step": 1, "loss": 2.5}]
    assert sorted(tm.required_folders(manifest)) == ["adapter", "base", "tokenizer"]


def test_the_saved_tokenizer_prompts_a_conversation_as_the_model_was_trained(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir / tm.TOKENIZER_DIR)
    messages = [{"role": "user", "content": "봄에 대한 시를 써 주세요."}, {"role": "assistant", "content": "봄이 왔다."},
                {"role": "user", "content": "ㄱ으로 시작하게 고쳐 주세요."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    manifest = tm.read_manifest(model_dir)
    assert rendered == manifest.prompt(["봄에 대한 시를 써 주세요.", "ㄱ으로 시작하게 고쳐 주세요."], ["봄이 왔다."])
    assert rendered == conversation_prompt(["봄에 대한 시를 써 주세요.", "ㄱ으로 시작하게 고쳐 주세요."], ["봄이 왔다."],
                                           "self_guided", "condition")
    assert "유용성 10" in rendered  # self_guided + condition asks for top scores


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "selfguided.json").unlink(), "selfguided.json is missing"),
    (lambda d: (d / "selfguided.json").write_text("{", encoding="utf-8"), "malformed JSON"),
    (lambda d: _edit(d, arm=None), "field 'arm' is missing"),
    (lambda d: _edit(d, method="qlora"), "field 'method' is 'qlora'"),
    (lambda d: _edit(d, strategy="random"), "field 'strategy' is 'random'"),
    (lambda d: _edit(d, config=[1]), "field 'config' must be a JSON object"),
    (lambda d: shutil.rmtree(d / "adapter"), "folder adapter/ is missing"),
    (lambda d: shutil.rmtree(d / "base"), "folder base/ is missing"),
])
def test_a_damaged_model_directory_is_refused_with_the_file_and_the_problem(tmp_path, model_dir, damage, message):
    broken = shutil.copytree(model_dir, tmp_path / "broken")
    damage(broken)
    with pytest.raises(tm.ArtifactError, match=message) as info:
        tm.read_manifest(broken)
    assert str(broken) in str(info.value)


def _edit(model_dir, **changes):
    path = model_dir / tm.MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest), encoding="utf-8")


def test_copy_artifact_takes_the_artifact_and_leaves_checkpoints_behind(tmp_path, model_dir):
    assert (model_dir / "checkpoints").is_dir()
    copy = tm.copy_artifact(model_dir, tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == ["adapter", "base", "selfguided.json", "tokenizer",
                                                       "train_log.jsonl"]
    assert tm.read_manifest(copy) == tm.read_manifest(model_dir)


def test_a_full_model_loads_without_a_base(tmp_path):
    full = make_model_dir(tmp_path, arm="unscored", method="full")
    model, tokenizer = tm.load_trained(full)
    assert not (full / "base").exists() and model.config.use_cache
    assert tm.generate_texts(model, tokenizer, ["### 지시:\n시를 써 주세요\n\n### 응답:\n"], max_new_tokens=4,
                             progress=False)[0] is not None


def test_a_hub_base_is_loaded_at_its_recorded_revision(tmp_path, monkeypatch):
    hub = make_model_dir(tmp_path, base_model="EleutherAI/polyglot-ko-1.3b", arm="unscored")
    calls = []

    def fake_from_pretrained(source, **kwargs):
        calls.append((source, kwargs.get("revision")))
        raise OSError("offline")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", fake_from_pretrained)
    with pytest.raises(OSError, match="cannot load its base model 'EleutherAI/polyglot-ko-1.3b' at revision 0123abcd"):
        tm.load_trained(hub)
    assert calls == [("EleutherAI/polyglot-ko-1.3b", "0123abcd")]
