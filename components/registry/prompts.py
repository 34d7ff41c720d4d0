"""The scoring and judging prompts in MLflow's prompt registry, so a changed prompt is a new version.

Prompts are data in components/judging/prompts/<name>-v<version>.json. Each file is registered
as a version of the prompt `selfguided-<name>` (a chat template: the system message, then the user
template with its output format; `{field}` becomes MLflow's `{{field}}`; the JSON schema as the
response format), tagged with the file it came from, its own version and its SHA-256. A file is
registered again only when its content differs from the prompt's latest registered version: an
edit without a new file version still shows up as a new registry version, never as a silent edit.

`register_prompts` returns, for every prompt id the rows name (`judge-single-v1`), the registry
name and version it is (`selfguided-judge-single`, 3): runs and traces quote it
(`prompt_run_tags`, the traces' `mlflow.linkedPrompts`), so every judgment names the registry
version of the prompt it used. The prompts are also linked to the experiment, so its Prompts page
lists them.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

PROMPT_PREFIX = "selfguided-"
_FIELD = re.compile(r"(?<!\{)\{(\w+)\}(?!\})")


def prompts_dir() -> Path:
    return Path(str(resources.files("selfguided.components.judging") / "prompts"))


def mlflow_template(data: Mapping) -> list[dict[str, str]]:
    """The prompt file as an MLflow chat template: `{field}` (str.format) becomes `{{field}}`."""
    user = data["user_template"] + (f"\n\n{data['output_format']}" if data.get("output_format") else "")
    return [{"role": "system", "content": _FIELD.sub(r"{{\1}}", data["system"])},
            {"role": "user", "content": _FIELD.sub(r"{{\1}}", user)}]


def _latest(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = list(client.search_prompt_versions(name))
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.version), default=None)


def _link_to_experiment(client, name: str, experiment_id: str) -> None:
    """List the prompt on the experiment's Prompts page (MLflow keeps the ids in a prompt tag)."""
    from mlflow.prompt.constants import PROMPT_EXPERIMENT_IDS_TAG_KEY

    ids = [i for i in client.get_prompt(name).tags.get(PROMPT_EXPERIMENT_IDS_TAG_KEY, "").split(",") if i]
    if experiment_id not in ids:
        client.set_prompt_tag(name, PROMPT_EXPERIMENT_IDS_TAG_KEY, "," + ",".join([*ids, experiment_id]) + ",")


def register_prompts(tracking_uri: str, *, experiment_id: str = "", files: Iterable[Path] | None = None
                     ) -> dict[str, tuple[str, int]]:
    """Register every prompt file that is new or changed; returns prompt id -> (registry name, version).

    tracking_uri: the MLflow server (or SQLite file) whose registry holds the prompts.
    experiment_id: the experiment whose Prompts page lists them ("" = none).
    files: the prompt files (default: every components/judging/prompts/*.json).
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if experiment_id:
        # MLflow links a newly registered version to the process's current experiment itself (in a
        # thread of its own): make that the experiment, and link only the unchanged prompts here.
        # Like register_candidates, this points the process's fluent API at tracking_uri.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment_id=experiment_id)
    registered = {}
    for path in sorted(files if files is not None else prompts_dir().glob("*.json")):
        raw = Path(path).read_bytes()
        data = json.loads(raw)
        digest = hashlib.sha256(raw).hexdigest()
        prompt_id, name = f"{data['name']}-v{data['version']}", registry_name(data["name"])
        latest = _latest(client, name)
        if latest is not None and latest.tags.get("sha256") == digest:
            if experiment_id:
                _link_to_experiment(client, name, experiment_id)
        else:
            changed = latest is not None
            latest = client.register_prompt(
                name, mlflow_template(data),
                commit_message=(f"{path.name} changed (sha256 {digest[:12]})" if changed
                                else data.get("description") or path.name),
                tags={"file": path.name, "file_version": str(data["version"]), "prompt_id": prompt_id,
                      "sha256": digest},
                response_format=(data.get("json_schema") or {}).get("schema"),
            )
        registered[prompt_id] = (name, int(latest.version))
    return registered


def registry_name(name: str) -> str:
    """The registry name of a prompt file's `name`: `judge-single` -> `selfguided-judge-single`."""
    return f"{PROMPT_PREFIX}{name}"


def prompt_uri(version: tuple[str, int]) -> str:
    return f"prompts:/{version[0]}/{version[1]}"


def prompt_run_tags(registered: Mapping[str, tuple[str, int]], prompt_ids: Iterable[str]) -> dict[str, str]:
    """Run tags naming the registry version of each prompt a row's judgments used:
    `prompt/<prompt id>` -> `prompts:/<name>/<version>` (ids not in the registry are left out,
    e.g. the offline stand-in's `heuristic-v1`, which is code, not a prompt)."""
    return {f"prompt/{pid}": prompt_uri(registered[pid]) for pid in sorted(set(prompt_ids)) if pid in registered}
