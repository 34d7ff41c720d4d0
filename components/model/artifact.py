"""The trained-model artifact: what a fine-tuned model directory holds, and everything done with one.

One owner for the concept. The finetune step writes a model directory through `save_trained`;
the generate step, the registered MLflow model (`model/pyfunc.py`), serving and the tests read,
load and generate through the functions below and never need to know the layout themselves.

Layout of a model directory:

    selfguided.json   the manifest (`ModelManifest`): the base model and where its weights come
                      from (at which revision), arm, prompt strategy, method, fine-tuning
                      config, training metrics, and the hash of the training file
    adapter/          the LoRA adapter (method "lora"), peft save_pretrained
    model/            all weights (method "full"), transformers save_pretrained
    tokenizer/        the tokenizer, with a chat template that prompts as the model was trained
    base/             the base weights, only when no hub serves them (the `tiny` test model)
    train_log.jsonl   one line per optimizer step (loss, learning rate, tokens)

Where the base comes from (`base_model_ref`): "bundled:base" is the base/ folder above; an
absolute path is a local save_pretrained copy; anything else is a hub id, loaded at
`base_revision` (the commit the model was trained on) so that a version is reproducible.

Only the standard library, torch, transformers, peft and `prompting` are imported here, so that
a registered version loads where selfguided is not installed: the registry ships this file, and
the files it imports, with the model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from selfguided.components.model.prompting import ARMS, STRATEGIES, chat_template, conversation_prompt

# Largest safetensors shard of merged weights: one proxied upload stages one shard on the MLflow
# server's /tmp (16Gi, manifests/base/mlflow/deployment.yaml), whatever the model size.
MERGED_MAX_SHARD_SIZE = "2GB"
MANIFEST_FILE = "selfguided.json"
ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
BUNDLED_BASE_DIR = "base"
TRAIN_LOG_FILE = "train_log.jsonl"
BUNDLED_BASE_REF = f"bundled:{BUNDLED_BASE_DIR}"
METHODS = ("lora", "full")


class ArtifactError(ValueError):
    """A model directory cannot be used; the message names the file or folder and what is wrong."""


@dataclass
class ModelManifest:
    """`selfguided.json`: what a trained model is and how to rebuild it."""

    base_model: str
    """The base as the user named it: `tiny`, a hub id (EleutherAI/polyglot-ko-1.3b) or a path."""
    base_model_ref: str
    """Where the base weights are loaded from: BUNDLED_BASE_REF, an absolute path, or a hub id."""
    arm: str
    """The training data: `unscored`, `self_guided` or `control`."""
    strategy: str
    """How scores guided the data (`condition` or `filter`); decides the inference prompt."""
    method: str
    """`lora` (adapter on a frozen base) or `full` (all weights)."""
    base_revision: str | None = None
    """Hub commit of the base the model was trained on (None for bundled and local bases)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The FinetuneConfig used, as a dict."""
    train_metrics: dict[str, Any] = field(default_factory=dict)
    """train_loss, tokens_per_s, seconds, ... as the finetune step measured them."""
    train_data_sha256: str = ""
    """SHA-256 of the training file (`<arm>.jsonl`)."""
    replicate: int = 0
    """Which training-seed replicate of its (base model, arm) this is (0: the first, or the only one)."""

    @property
    def display_name(self) -> str:
        """A readable label for tables and logs ("tiny/self_guided"); never parsed back."""
        return f"{self.base_model}/{self.arm}"

    @property
    def bundled_base(self) -> bool:
        return self.base_model_ref == BUNDLED_BASE_REF

    def prompt(self, turns: list[str], answers: list[str] | None = None) -> str:
        """The prompt for a conversation, formatted as this model was trained (arm and strategy)."""
        return conversation_prompt(turns, answers or [], self.arm, self.strategy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _manifest_error(path: Path, problem: str) -> ArtifactError:
    return ArtifactError(f"{path}: {problem} (a model directory written by the finetune step)")


def read_manifest(model_dir: str | Path) -> ModelManifest:
    """Read and check a model directory's manifest and the folders it promises.

    Errors name the file or folder and what is missing or malformed.
    """
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{model_dir}: not a trained model directory, {MANIFEST_FILE} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _manifest_error(path, f"malformed JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise _manifest_error(path, "expected a JSON object")
    for key in ("base_model", "base_model_ref", "arm", "strategy", "method"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _manifest_error(path, f"field {key!r} is missing or not a non-empty string")
    choices = {"method": METHODS, "arm": ARMS, "strategy": STRATEGIES}
    for key, allowed in choices.items():
        if raw[key] not in allowed:
            raise _manifest_error(path, f"field {key!r} is {raw[key]!r}, expected one of {', '.join(allowed)}")
    for key in ("config", "train_metrics"):
        if not isinstance(raw.get(key, {}), dict):
            raise _manifest_error(path, f"field {key!r} must be a JSON object")
    if not isinstance(raw.get("replicate", 0), int) or raw.get("replicate", 0) < 0:
        raise _manifest_error(path, f"field 'replicate' is {raw['replicate']!r}, expected an integer >= 0")
    known = {f.name for f in fields(ModelManifest)}
    manifest = ModelManifest(**{k: v for k, v in raw.items() if k in known})
    for folder in required_folders(manifest):
        if not (model_dir / folder).is_dir():
            raise ArtifactError(f"{model_dir}: folder {folder}/ is missing (method {manifest.method!r}, "
                                f"base_model_ref {manifest.base_model_ref!r})")
    return manifest


def required_folders(manifest: ModelManifest) -> list[str]:
    """The folders a model directory with this manifest must have."""
    folders = [ADAPTER_DIR if manifest.method == "lora" else FULL_MODEL_DIR, TOKENIZER_DIR]
    if manifest.method == "lora" and manifest.bundled_base:
        folders.append(BUNDLED_BASE_DIR)
    return folders


def write_manifest(model_dir: str | Path, manifest: ModelManifest) -> Path:
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def save_bundled_base(model_dir: str | Path, model, tokenizer) -> None:
    """Keep a base that no hub serves inside the model directory (before training changes it)."""
    model.save_pretrained(Path(model_dir) / BUNDLED_BASE_DIR)
    tokenizer.save_pretrained(Path(model_dir) / BUNDLED_BASE_DIR)


def save_trained(model_dir: str | Path, model, tokenizer, manifest: ModelManifest,
                 train_log: list[dict[str, Any]] | None = None, state_dict: dict[str, Any] | None = None,
                 save_dtype: str = "bf16") -> Path:
    """Write a trained model: weights (adapter or full), tokenizer with its chat template, manifest.

    `model` is the peft model (method lora) or the plain transformers model (method full).
    `state_dict`: the weights to write when the model's own are sharded (FSDP), gathered whole by
    the trainer; by default the model's.
    Full weights are written in `save_dtype` ("bf16" or "fp32") in safetensors shards of at most
    MERGED_MAX_SHARD_SIZE: one fp32 file of a 5.8B model (23 GB) would not fit MLflow's staging
    volume on the way to the registry.
    The manifest is written last, so a directory with a manifest is complete.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    if manifest.method == "lora":
        model.save_pretrained(model_dir / ADAPTER_DIR, state_dict=state_dict)
    else:
        import torch

        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[save_dtype]
        weights = model.state_dict() if state_dict is None else state_dict
        weights = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in weights.items()}
        model.save_pretrained(model_dir / FULL_MODEL_DIR, state_dict=weights, max_shard_size=MERGED_MAX_SHARD_SIZE)
        # save_pretrained writes the live model's dtype; a server loading dtype="auto" (vLLM, KServe)
        # should get the one on disk
        model.config.dtype = dtype
        model.config.save_pretrained(model_dir / FULL_MODEL_DIR)
    tokenizer.chat_template = chat_template(manifest.arm, manifest.strategy)
    tokenizer.save_pretrained(model_dir / TOKENIZER_DIR)
    if train_log is not None:
        with (model_dir / TRAIN_LOG_FILE).open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in train_log)
    write_manifest(model_dir, manifest)
    return model_dir


def read_train_log(model_dir: str | Path) -> list[dict[str, Any]]:
    """The per-step training log (empty when the model directory has none)."""
    path = Path(model_dir) / TRAIN_LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def copy_artifact(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy only the artifact's own parts (no checkpoints or other leftovers) to `out_dir`."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    manifest = read_manifest(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in required_folders(manifest):
        shutil.copytree(model_dir / folder, out_dir / folder)
    for name in (MANIFEST_FILE, TRAIN_LOG_FILE):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def generation_attn_implementation(device) -> str:
    """Attention for generation and padded batches: FlashAttention-2 on a GPU when installed, else SDPA."""
    import importlib.util

    import torch

    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_trained(model_dir: str | Path, device="cpu", dtype=None, merge: bool = True,
                 attn_implementation: str | None = None):
    """(model, tokenizer) from a model directory, in eval mode with the KV cache on.

    LoRA models load their base (bundled, local path, or hub id at the recorded revision) and
    the adapter; `merge=True` folds the adapter into the base weights (plain GPT-NeoX again, no
    LoRA overhead per token). dtype defaults to bf16 on a GPU and fp32 on a CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    attn = attn_implementation or generation_attn_implementation(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir / TOKENIZER_DIR)
    if tokenizer.pad_token is None:  # batches need one; EOS never reaches the answer text
        tokenizer.pad_token = tokenizer.eos_token
    if manifest.method == "full":
        model = AutoModelForCausalLM.from_pretrained(model_dir / FULL_MODEL_DIR, dtype=dtype, attn_implementation=attn)
    else:
        from peft import PeftModel

        if manifest.bundled_base:
            source, revision = str(model_dir / BUNDLED_BASE_DIR), None
        else:
            source, revision = manifest.base_model_ref, manifest.base_revision
        try:
            model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=dtype,
                                                         attn_implementation=attn)
        except OSError as exc:
            raise OSError(f"{model_dir}: cannot load its base model {source!r}"
                          + (f" at revision {revision}" if revision else "") + f": {exc}") from exc
        model = PeftModel.from_pretrained(model, model_dir / ADAPTER_DIR)
        if merge:
            model = model.merge_and_unload()
    model.config.use_cache = True
    return model.to(device).eval(), tokenizer


def export_merged(model_dir: str | Path, out_dir: str | Path, dtype=None, device=None,
                  max_shard_size: str = MERGED_MAX_SHARD_SIZE) -> Path:
    """Write a standalone model (adapter merged, bf16 by default) that plain
    `AutoModelForCausalLM.from_pretrained` and engines without LoRA support for GPT-NeoX (vLLM,
    TGI, llama.cpp converters) can load, with the tokenizer and its chat template.

    The model is loaded once, in `dtype`, and the adapter merged in place (no second copy: about 2
    bytes a parameter in bf16, 12 GiB for Polyglot-ko 5.8B, so the register step fits a CPU-pool
    node); the weights are written in safetensors shards of at most `max_shard_size` (transformers'
    default is 50GB: one file per model), so a proxied upload through the MLflow server stages one
    bounded file at a time (manifests/base/mlflow/deployment.yaml, its /tmp volume)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or torch.bfloat16
    model, tokenizer = load_trained(model_dir, device=device, dtype=dtype, merge=True)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def generation_config(*, max_new_tokens: int, temperature: float, eos_token_id: int, pad_token_id: int):
    """The decoding settings of every generation of a trained model (eval answers, the pyfunc model,
    `selfguided serve`, streamed or not): greedy at temperature 0, plain sampling otherwise."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
        eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True,
    )


def generate_tokens(model, prompt_ids: list[list[int]], *, max_new_tokens: int, batch_size: int,
                    eos_token_id: int, pad_token_id: int, temperature: float = 0.0,
                    progress: bool = True) -> list[list[int]]:
    """New token ids for each prompt (EOS and what follows removed), in the prompts' order.

    Batched with left padding (every row's next token sits in the last column) and the KV cache.
    Longest prompts go first, so every batch holds prompts of similar length (little padding) and
    an out-of-memory error shows up in the first batch rather than the last.
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    config = generation_config(max_new_tokens=max_new_tokens, temperature=temperature, eos_token_id=eos_token_id,
                               pad_token_id=pad_token_id)
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: list[list[int]] = [[] for _ in prompt_ids]
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", disable=not progress):
            rows = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for row, i in enumerate(rows):  # left padding
                n = len(prompt_ids[i])
                input_ids[row, width - n :] = torch.tensor(prompt_ids[i])
                attention_mask[row, width - n :] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    generation_config=config)
            for row, i in enumerate(rows):
                new = output[row, width:].tolist()
                results[i] = new[: new.index(eos_token_id)] if eos_token_id in new else new
    return results


def generate_texts(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, batch_size: int = 16,
                   temperature: float = 0.0, progress: bool = True) -> list[str]:
    """Answers to fully formatted prompts, in order (the prompt is tokenized as in training:
    no special tokens added)."""
    if not prompts:
        return []
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    new_ids = generate_tokens(model, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              temperature=temperature, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, progress=progress)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]


def converse(conversations: list[list[str]], engine: Callable[[list[str]], list[str]],
             prompt: Callable[[list[str], list[str]], str]) -> list[list[str]]:
    """The answers to every turn of every conversation: turn k is asked with the earlier turns and
    the model's own earlier answers (`prompt(turns, earlier_answers)`), all conversations' turn k
    in one call of `engine` (prompts -> answers), then turn k + 1."""
    answers: list[list[str]] = [[] for _ in conversations]
    for k in range(max((len(c) for c in conversations), default=0)):
        asked = [i for i, c in enumerate(conversations) if len(c) > k]
        prompts = [prompt(conversations[i][: k + 1], answers[i]) for i in asked]
        for i, text in zip(asked, engine(prompts)):
            answers[i].append(text)
    return answers
