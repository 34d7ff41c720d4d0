"""Promotion by aliases: the run's best becomes `challenger`, and `champion` only on evidence.

`register_candidates` is the register step's work: every evaluation row logged as a run
(`registry/runs.py`), every trained model a version, then the aliases moved as the compare step's
gate decided (paired against the champion re-evaluated in the same run; the gate's
champion-moved rule refuses if another run moved it since). A new champion remembers the version it
replaced (`previous_champion` tag), so a rollback is one alias move (`registry/aliases.py`, with the
other commands by hand). `RegisterReport` is what the step did.
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

from selfguided.components.data.jsonl import DataError, read_jsonl
from selfguided.components.data.seed_versions import SeedManifest
from selfguided.components.evaluation.compare_result import CompareResult
from selfguided.components.evaluation.decision import GateDecision
from selfguided.components.evaluation.gate_rules import champion_moved_rule
from selfguided.components.evaluation.metrics import OVERALL, categories_from_metrics, judge_metric
from selfguided.components.judging.rules import SCORE_NAMES
from selfguided.components.registry.genai_pages import publish_genai_pages
from selfguided.components.registry.aliases import alias_version
from selfguided.components.registry.logged_model import log_merged
from selfguided.components.registry.seed_lineage import SEED_RECORDS_ARTIFACT, SEED_VERSION_TAG
from selfguided.components.registry.names import (
    CHALLENGER, CHAMPION, EXPERIMENT_NAME, PREVIOUS_CHAMPION_TAG, REGISTERED_MODEL_NAME,
)
from selfguided.components.registry.runs import (
    Candidate, ReferenceRow, RegisteredVersion, ensure_experiment, log_candidate, log_dataset, log_reference,
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
    scored_data: that file, logged as the parent run's input; the seed version its records make
        (data/seed_versions) tags every model version `seed_version`.
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
            if scored_data is not None:  # the records trained on: where a harvest finds the champion's seed
                folder, name = SEED_RECORDS_ARTIFACT.rsplit("/", 1)
                shutil.copyfile(scored_data, Path(staging) / name)
                mlflow.log_artifact(str(Path(staging) / name), artifact_path=folder)
        if scored_data is not None:
            log_dataset(Path(scored_data), "scored.jsonl", context="scored")
    versions = [
        log_candidate(client, c, experiment_id=experiment_id, registered_model_name=registered_model_name,
                       pipeline_run=pipeline_run, parent_run_id=parent.info.run_id,
                       scored_data_sha256=scored_data_sha256, evaluation_metrics=row_metrics.get(c.summary.row))
        for c in tqdm(candidates, desc="register", unit="model")
    ]
    if scored_data is not None:  # every model version names the seed version it was trained on
        seed_version = SeedManifest.of(read_jsonl(scored_data, allow_empty=True)).version
        for registered in versions:
            client.set_model_version_tag(registered_model_name, registered.version, SEED_VERSION_TAG, seed_version)
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
