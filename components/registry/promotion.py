"""Promotion by aliases: the run's best becomes `challenger`, and `champion` only on evidence.

`register_candidates` is the register step's work: every evaluation row logged as a run
(`registry/runs.py`), every trained model a version, then the aliases moved as the compare step's
gate decided (paired against the champion re-evaluated in the same run). A new champion remembers
the version it replaced (`previous_champion` tag), so `rollback_champion` is one alias move. By
hand: `promote_version` (through the same gate unless forced), `rollback_champion`,
`list_versions`; the CLI (`selfguided models|promote|rollback`) calls these.
"""

import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from selfguided.components.data.jsonl import DataError
from selfguided.components.evaluation.compare_result import CompareResult
from selfguided.components.evaluation.gate import GateDecision
from selfguided.components.evaluation.gate_rules import champion_moved_rule
from selfguided.components.evaluation.metrics import OVERALL, categories_from_metrics, judge_metric
from selfguided.components.judging.rules import SCORE_NAMES
from selfguided.components.registry.genai_pages import publish_genai_pages
from selfguided.components.registry.logged_model import ensure_merged_weights, log_merged
from selfguided.components.registry.names import (
    CHALLENGER, CHAMPION, EXPERIMENT_NAME, PREVIOUS_CHAMPION_TAG, REGISTERED_MODEL_NAME, RegistryError,
)
from selfguided.components.registry.runs import (
    Candidate, ReferenceRow, RegisteredVersion, ensure_experiment, log_candidate, log_dataset, log_reference, run_row,
)


@dataclass
class RegisterReport:
    """What one register step did: versions, scores, and the promotion decision."""

    registered_model_name: str
    pipeline_run: str
    versions: list[RegisteredVersion]
    challenger: RegisteredVersion
    decision: GateDecision
    champion_before: str | None  # version that held `champion` before this step
    champion_after: str | None
    parent_run_id: str = ""
    report_markdown: str = ""  # the compare step's report, for `selfguided run` to print
    champion_storage_uri: str = ""  # merged weights of a newly promoted champion, for serving engines

    def decision_line(self) -> str:
        """The outcome in one line of text (the KFP step's return value)."""
        if self.decision.promote:
            return (f"promoted {self.registered_model_name} v{self.challenger.version} ({self.challenger.label}) "
                    f"to champion" + (f", replacing v{self.champion_before}" if self.champion_before else ""))
        kept = f"kept champion v{self.champion_before}" if self.champion_before else "no champion"
        return (f"{kept}; challenger v{self.challenger.version} ({self.challenger.label}) "
                f"not promoted: {self.decision.reasons[0]}")

    def to_dict(self) -> dict[str, Any]:
        """What the step did, as JSON-ready data: the step's output, read by `selfguided run`."""
        return {
            "decision": self.decision_line(),
            "promoted": self.decision.promote,
            "reasons": list(self.decision.reasons),
            "registered_model_name": self.registered_model_name,
            "pipeline_run": self.pipeline_run,
            "challenger": self.challenger.version,
            "champion_before": self.champion_before,
            "champion_after": self.champion_after,
            "parent_run_id": self.parent_run_id,
            "champion_storage_uri": self.champion_storage_uri,
            "versions": [asdict(v) for v in self.versions],
            "report_markdown": self.report_markdown,
        }

    def to_markdown(self) -> str:
        rows = [(f"{v.label} (v{v.version})", v.metrics) for v in self.versions]
        categories = categories_from_metrics({name for _, metrics in rows for name in metrics})
        lines = [
            f"# Register: {self.registered_model_name}",
            "",
            f"Pipeline run `{self.pipeline_run}`; {len(self.versions)} version(s) registered; "
            f"challenger v{self.challenger.version} ({self.challenger.label}).",
            "",
            "## Judge score per category (overall, 1-10)",
            "",
            "| model | " + " | ".join(categories) + " | overall |",
            "|---" * (len(categories) + 2) + "|",
        ]
        for label, metrics in rows:
            cells = [_fmt(metrics.get(judge_metric(c, "overall"))) for c in categories]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(metrics.get(OVERALL))} |")
        lines += ["", "## By criterion", "", "| model | category | " + " | ".join(SCORE_NAMES) + " |",
                  "|---" * (len(SCORE_NAMES) + 2) + "|"]
        for version in self.versions:
            for category in categories:
                cells = [_fmt(version.metrics.get(judge_metric(category, f))) for f in SCORE_NAMES]
                lines.append(f"| {version.label} | {category} | " + " | ".join(cells) + " |")
        verdict = "promoted to `champion`" if self.decision.promote else "not promoted"
        lines += ["", f"## Promotion: {verdict}", ""]
        lines += [f"- {reason}" for reason in self.decision.reasons]
        lines += ["", f"`champion` is now v{self.champion_after}." if self.champion_after else "No `champion` yet.", ""]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(
            name, description="Korean writing assistants distilled from a GPT-4 class judge (selfguided)."
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def alias_version(client: MlflowClient, name: str, alias: str = CHAMPION):
    """The ModelVersion behind `alias` (default: the champion), or None when the alias (or the
    model) does not exist: the one look-up of an alias (register, promote, rollback, the champion
    reference row)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def register_candidates(
    candidates: Iterable[Candidate],
    *,
    evaluation: CompareResult,
    tracking_uri: str,
    registered_model_name: str = REGISTERED_MODEL_NAME,
    experiment_name: str = EXPERIMENT_NAME,
    pipeline_run: str,
    scored_data_sha256: str,
    references: Iterable[ReferenceRow] = (),
    scored_data: str | Path | None = None,
    reports: Mapping[str, str | Path] | None = None,
    questions: str | Path | None = None,
) -> RegisterReport:
    """Log every row of the evaluation, register every candidate, and move the aliases as the
    compare step decided.

    evaluation: the compare step's result: the challenger's identity, the gate's decision, every row's
        metrics, and the champion version it evaluated (the gate's champion-moved rule checks it
        against the champion when the aliases move).
    tracking_uri: `http(s)://` MLflow server, or `sqlite:////abs/path/mlflow.db` (artifacts of a
        new experiment then go to `artifacts/` beside the database file). Like
        `mlflow.set_tracking_uri`, this also points the process's fluent MLflow API at it.
    pipeline_run: id of the pipeline run that produced the candidates (tag on runs and versions).
    scored_data_sha256: hash of the scored seed data the models were trained from (run tag).
    scored_data: that file, logged as the parent run's input.
    reports: files logged on the parent run under the given names: `report.md` and `report.html`
        (the compare step's reports).
    questions: the test questions the rows were judged on (the split's questions.jsonl): the
        experiment's evaluation dataset, each row run's input (registry/genai_pages.py).
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("register_candidates needs at least one candidate")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
    _ensure_registered_model(client, registered_model_name)
    # mlflow's fluent API (start_run, log_model) follows the process-wide tracking URI.
    mlflow.set_tracking_uri(tracking_uri)
    decision = evaluation.decision
    row_metrics = evaluation.metrics
    with mlflow.start_run(experiment_id=experiment_id, run_name=pipeline_run,
                         tags={"pipeline_run": pipeline_run, "row_kind": "pipeline"}) as parent:
        mlflow.log_dict(evaluation.to_json(), "comparison.json")
        mlflow.log_metric("promote", float(decision.promote))
        with tempfile.TemporaryDirectory(prefix="selfguided-reports-") as staging:
            for name, path in (reports or {}).items():  # under readable names: report.md, report.html
                shutil.copyfile(path, Path(staging) / name)
                mlflow.log_artifact(str(Path(staging) / name))
        if scored_data is not None:
            log_dataset(Path(scored_data), "scored.jsonl", context="scored")
    versions = [
        log_candidate(client, c, experiment_id=experiment_id, registered_model_name=registered_model_name,
                       pipeline_run=pipeline_run, parent_run_id=parent.info.run_id,
                       scored_data_sha256=scored_data_sha256, evaluation_metrics=row_metrics.get(c.summary.row))
        for c in tqdm(candidates, desc="register", unit="model")
    ]
    references = list(references)
    reference_runs = [
        log_reference(reference, experiment_id=experiment_id, pipeline_run=pipeline_run,
                      parent_run_id=parent.info.run_id, evaluation_metrics=row_metrics.get(reference.summary.row))
        for reference in references
    ]
    # The experiment's Datasets and Judges pages: the questions and the run's judges (never fails the step).
    publish_genai_pages(tracking_uri, experiment_id, summaries=[r.summary for r in (*candidates, *references)],
                        run_ids=[v.run_id for v in versions] + reference_runs, questions_file=questions)

    # The compare step names its challenger by row (with --replicates, `<base>/<arm>#r`: several
    # candidates share a base model and arm); versions were made in the candidates' order.
    wanted = evaluation.challenger
    index = next((i for i, c in enumerate(candidates) if c.summary.row == wanted.row), None)
    if index is None:
        raise DataError(f"the compare step's challenger {wanted.row!r} is not among the registered candidates "
                        f"({', '.join(c.summary.row for c in candidates)})")
    challenger, winner = versions[index], candidates[index]
    client.set_registered_model_alias(registered_model_name, CHALLENGER, challenger.version)
    champion = alias_version(client, registered_model_name)
    # The evidence is about the champion this run evaluated; the gate's rule refuses if another run moved it since.
    decision = champion_moved_rule(decision, evaluation.champion_version,
                                   str(champion.version) if champion is not None else None)
    storage_uri = ""
    if decision.promote:  # the servable weights first: a failure here leaves nothing half-promoted
        storage_uri = log_merged(client, winner.model_dir, challenger.run_id)
        client.set_model_version_tag(registered_model_name, challenger.version, "merged_weights", storage_uri)
    client.set_model_version_tag(registered_model_name, challenger.version, "promotion",
                                 (("promoted: " if decision.promote else "rejected: ") + "; ".join(decision.reasons))[:5000])
    if decision.promote:
        client.set_registered_model_alias(registered_model_name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_model_version_tag(registered_model_name, challenger.version, PREVIOUS_CHAMPION_TAG,
                                         str(champion.version))
    markdown = Path(reports["report.md"]).read_text(encoding="utf-8") if reports and "report.md" in reports else ""
    return RegisterReport(
        registered_model_name=registered_model_name,
        pipeline_run=pipeline_run,
        versions=versions,
        challenger=challenger,
        decision=decision,
        champion_before=str(champion.version) if champion is not None else None,
        champion_after=challenger.version if decision.promote else (str(champion.version) if champion else None),
        parent_run_id=parent.info.run_id,
        report_markdown=markdown,
        champion_storage_uri=storage_uri,
    )


def rollback_champion(
    tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME, version: str | int | None = None,
    *, by: str = "", reason: str = "",
) -> str:
    """Move `champion` back and return the version it now points at.

    version: the version to make champion; None means the one the current champion replaced
        (its `previous_champion` tag). Rolling back twice walks two promotions back.
    by, reason: who rolled back and why, recorded on the version that loses the alias.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    current = alias_version(client, registered_model_name)
    if version is None:
        if current is None:
            raise RegistryError(f"{registered_model_name!r} has no champion to roll back")
        version = current.tags.get(PREVIOUS_CHAMPION_TAG)
        if not version:
            raise RegistryError(f"{registered_model_name!r} champion v{current.version} replaced no earlier "
                                "champion (no previous_champion tag); pass version= explicitly")
    version = str(version)
    client.get_model_version(registered_model_name, version)  # fails clearly on an unknown version
    client.set_registered_model_alias(registered_model_name, CHAMPION, version)
    if current is not None and str(current.version) != version:
        note = f"champion moved to v{version}" + (f" by {by}" if by else "") + (f": {reason}" if reason else "")
        client.set_model_version_tag(registered_model_name, current.version, "rolled_back", note[:5000])
    return version


def version_row(client: MlflowClient, registered_model_name: str, version: str, row_kind: str = "trained"):
    """A registered version as a compare row: its run's judged row (runs.run_row), named `v<version> <row>`."""
    model_version = client.get_model_version(registered_model_name, str(version))
    row = run_row(client, client.get_run(model_version.run_id), row_kind=row_kind)
    if row is None:
        raise RegistryError(f"v{version} has no judgments.jsonl on its run {model_version.run_id}: it cannot be "
                            "compared on evidence (promote with --force to skip the gate)")
    row.row = f"v{version} {row.row}".strip()
    return row


def base_row(client: MlflowClient, registered_model_name: str, version: str):
    """The untuned base row that was judged beside `version` in its pipeline run (same base model),
    as a compare row, or None when that run logged none: the bar a first champion must beat."""
    model_version = client.get_model_version(registered_model_name, str(version))
    run = client.get_run(model_version.run_id)
    tags = run.data.tags
    found = client.search_runs(
        [run.info.experiment_id], max_results=1,
        filter_string=(f"tags.pipeline_run = '{tags.get('pipeline_run', '')}' and tags.row_kind = 'base' "
                       f"and tags.base_model = '{tags.get('base_model', '')}'"))
    return run_row(client, found[0]) if found else None


def promote_version(
    tracking_uri: str, version: str | int, registered_model_name: str = REGISTERED_MODEL_NAME, *,
    force: bool = False, by: str = "", reason: str = "", gate=None,
) -> GateDecision:
    """Make `version` the champion by hand: through gate v2 (its judgments paired with the current
    champion's, same judge required) unless `force`. Who and why are recorded in tags either way.
    Returns the decision; the alias moves only when it promotes."""
    from selfguided.components.evaluation.gate import PromotionGate, decide_promotion

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)  # models:/ downloads resolve through the process's registry
    mlflow.set_registry_uri(tracking_uri)
    version = str(version)
    client.get_model_version(registered_model_name, version)  # fails clearly on an unknown version
    current = alias_version(client, registered_model_name)
    if current is not None and str(current.version) == version:
        return GateDecision(False, [f"v{version} is already the champion"])
    if force:
        decision = GateDecision(True, ["forced: the gate was not consulted"])
    else:
        champion = version_row(client, registered_model_name, str(current.version), "champion") if current else None
        base = None if current else base_row(client, registered_model_name, version)
        decision = decide_promotion(version_row(client, registered_model_name, version), champion,
                                    gate or PromotionGate(), base=base)
    record = ("promoted" if decision.promote else "rejected") + (f" by {by}" if by else "") + \
        (f" ({reason})" if reason else "") + ": " + "; ".join(decision.reasons)
    client.set_model_version_tag(registered_model_name, version, "promotion", record[:5000])
    if decision.promote:
        ensure_merged_weights(client, registered_model_name, version)
        client.set_registered_model_alias(registered_model_name, CHAMPION, version)
        if current is not None:
            client.set_model_version_tag(registered_model_name, version, PREVIOUS_CHAMPION_TAG, str(current.version))
    return decision


def list_versions(tracking_uri: str, registered_model_name: str = REGISTERED_MODEL_NAME) -> list[dict[str, Any]]:
    """Every version, newest first: aliases, identity, overall score with its CI, the gate's record."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        aliases = client.get_registered_model(registered_model_name).aliases
    except MlflowException as exc:
        raise RegistryError(f"no registered model {registered_model_name!r} at {tracking_uri} "
                            "(`selfguided run` creates it)") from exc
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(str(number), []).append(alias)
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{registered_model_name}'"), key=lambda v: -int(v.version)):
        metrics = client.get_run(v.run_id).data.metrics if v.run_id else {}
        rows.append({
            "version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
            "base_model": v.tags.get("base_model", ""), "arm": v.tags.get("arm", ""),
            "pipeline_run": v.tags.get("pipeline_run", ""), "overall": metrics.get(OVERALL),
            "overall_ci": (metrics.get(f"{OVERALL}_ci_low"), metrics.get(f"{OVERALL}_ci_high")),
            "promotion": v.tags.get("promotion", ""), "rolled_back": v.tags.get("rolled_back", ""),
        })
    return rows

