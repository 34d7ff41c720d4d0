"""The monitor: the served champion's live quality against its offline evaluation, per category.

One execution (`run_monitor`, what `selfguided monitor` and the `selfguided-monitor` pipeline run):

1. the served-answer traces since the last finished execution (registry/production_read.py: the
   watermark is a tag of the monitor's runs in the experiment `selfguided-monitor`);
2. those of the watched version (default: the champion) on the stable side, sampled per category
   (`per_category` each, seeded);
3. judged by the same jury as the version's offline evaluation (its run's judge unless `judges` is
   given), every judge's verdict logged on its trace as feedback;
4. per category the live mean with its 95% interval against the offline one, and the finding rule
   (evaluation/drift.py);
5. one MLflow run per execution (metrics `live/<category>/overall` with `_ci_low`/`_ci_high`,
   `offline/<category>/overall`, `drift/<category>` 0/1, `report.md`, `drift.png`, `monitor.json`),
   the same metrics on the history run at step = the execution count (the chart over time), and,
   when a finding is credible, `ALERT ...` lines and a POST of them to `webhook_url` (failures are
   counted, never raised).

Canary answers (tag `deployment` = canary), when there are any, are sampled and judged alike and
handed with the stable sample to the canary decision (evaluation/canary_decision.decide_canary, or
the `canary` callable given): its verdict is logged and returned, acting on it is the canary's.
"""


import json
import math
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kfp.dsl import Markdown, Output
from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)

from selfguided.components.evaluation.drift import DriftSettings
from selfguided.components.images import CPU_IMAGE
from selfguided.components.registry.names import CHAMPION, REGISTERED_MODEL_NAME, RegistryError
from selfguided.components.registry.production import DEPLOYMENT_CANARY, DEPLOYMENT_STABLE, PRODUCTION_EXPERIMENT

DEFAULT_PER_CATEGORY = 50
DEFAULT_TOLERANCE = DriftSettings.tolerance
ALERT_PREFIX = "ALERT"


@dataclass
class MonitorConfig:
    """What one execution watches and how (module docstring)."""

    tracking_uri: str
    registered_model: str = REGISTERED_MODEL_NAME
    production_experiment: str = PRODUCTION_EXPERIMENT
    monitor_experiment: str = "selfguided-monitor"
    model_version: str = ""
    """The version watched; "" = the one behind the `champion` alias."""
    judges: str = ""
    """The jury (`a,b@url`); "" = the judge of the version's offline evaluation."""
    per_category: int = DEFAULT_PER_CATEGORY
    tolerance: float = DEFAULT_TOLERANCE
    alpha: float = 0.05
    random_seed: int = 0
    since_ms: int | None = None
    """Read traces after this time (ms since the epoch); None = after the last execution's watermark."""
    webhook_url: str = ""
    llm_base_url: str = ""
    llm_cache: str = ""
    canary: Callable[[list[Any]], Any] | None = None
    """The canary decision, given every judged score (CanaryScore); None = decide_canary."""
    canary_service: str = ""
    """The InferenceService whose canary the monitor acts on (serving/canary_apply.apply_canary_decision:
    rollback or promote, with the champion alias); "" = decide and log only."""
    canary_namespace: str = ""


@dataclass
class MonitorResult:
    run_id: str
    execution: int
    version: str
    rows: list[Any]
    alerts: list[str]
    report_markdown: str
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    canary: dict[str, Any] | None = None

    @property
    def drifted(self) -> list[str]:
        return [r.category for r in self.rows if r.drift]

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "execution": self.execution, "version": self.version,
                "drifted": self.drifted, "alerts": self.alerts, "counts": self.counts, "notes": self.notes,
                "categories": [r.to_dict() for r in self.rows], "canary": self.canary}


def jury_of_run(judge_model: str) -> tuple[str, str]:
    """(judges, aggregate) of an evaluation run's `judge_model` parameter: a model, or a jury's name
    `jury-<aggregate>(a,b,c)` (judging/jury.jury_identity)."""
    if judge_model.startswith("jury-") and judge_model.endswith(")") and "(" in judge_model:
        aggregate, members = judge_model[len("jury-"):-1].split("(", 1)
        return members, aggregate
    return judge_model, "mean"


def post_webhook(url: str, body: dict[str, Any], *, attempts: int = 2, timeout_s: float = 10.0) -> int:
    """POST `body` as JSON; returns the failed attempts (0 = delivered at once). Never raises."""
    failures = 0
    for attempt in range(attempts):
        try:
            request = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if 200 <= response.status < 300:
                    return failures
            failures += 1
        except Exception:  # noqa: BLE001 - a webhook that is down must not stop the monitor
            failures += 1
        if attempt + 1 < attempts:
            time.sleep(0.5)
    return failures


def _judge(served: list[Any], config: MonitorConfig, judges: str, aggregate: str):
    """The jury's verdicts on the served answers' last turns (one judgment row each) and its usage."""
    from selfguided.components.judging.jury import JuryConfig, judge_with_jury, parse_judges
    from selfguided.components.registry.production_read import judge_inputs

    questions, answers = judge_inputs(served)
    if not questions:
        return [], None
    jury = JuryConfig(parse_judges(judges), aggregate=aggregate, base_url=config.llm_base_url, cache=config.llm_cache)
    judgments, usage = judge_with_jury(questions, answers, jury)
    last = {q["question_id"]: len(q["turns"]) for q in questions}
    return [j for j in judgments if int(j["turn"]) == last[j["question_id"]]], usage


def _scores(judgments: list[dict[str, Any]], served: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """category -> (prompt key, jury score) of the scored judgments."""
    from selfguided.components.judging.rules import judged_ok

    out: dict[str, list[tuple[str, float]]] = {}
    for j in judgments:
        if judged_ok(j):
            s = served[j["question_id"]]
            out.setdefault(s.category, []).append((s.prompt_key, float(j["score"])))
    return out


def _metrics(rows: list[Any]) -> dict[str, float]:
    from selfguided.components.evaluation.metrics import metric_names

    names = metric_names([r.category for r in rows])
    metrics: dict[str, float] = {}
    for r in rows:
        key = names[r.category]
        for prefix, est in ((f"live/{key}/overall", r.live), (f"offline/{key}/overall", r.offline),
                            (f"difference/{key}/overall", r.difference)):
            for suffix, value in (("", est.mean), ("_ci_low", est.ci_low), ("_ci_high", est.ci_high)):
                if math.isfinite(value):
                    metrics[prefix + suffix] = float(value)
        metrics[f"live/{key}/n"] = float(r.live.n_questions)
        if r.tested:
            metrics[f"drift/{key}"] = float(r.drift)
    return metrics


def run_monitor(config: MonitorConfig, *, output_dir: str | Path | None = None) -> MonitorResult:
    """One execution (module docstring). Raises RegistryError when there is nothing to watch."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from selfguided.components.evaluation.drift import DriftSettings, drift_findings, live_estimate
    from selfguided.components.evaluation.drift_report import drift_markdown, drift_png
    from selfguided.components.registry import production_read as prod
    from selfguided.components.registry.aliases import alias_version

    settings = DriftSettings(tolerance=config.tolerance, alpha=config.alpha)
    if config.per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {config.per_category}")
    mlflow.set_tracking_uri(config.tracking_uri)
    client = MlflowClient(config.tracking_uri, registry_uri=config.tracking_uri)
    version = config.model_version
    if not version:
        champion = alias_version(client, config.registered_model, CHAMPION)
        if champion is None:
            raise RegistryError(f"{config.registered_model!r} has no champion to monitor (pass a model version)")
        version = str(champion.version)
    reference = prod.offline_reference(client, config.registered_model, version)
    judges, aggregate = (config.judges, "mean") if config.judges else jury_of_run(reference.judge_model)
    if not judges:
        raise RegistryError(f"v{version}'s evaluation run names no judge (param judge_model): pass the judges")
    state = prod.monitor_state(client, config.tracking_uri, config.registered_model, config.monitor_experiment)
    since = state.watermark_ms if config.since_ms is None else int(config.since_ms)
    experiment_id = prod.production_experiment_id(client, config.production_experiment)
    listing = prod.list_served(client, experiment_id, since) if experiment_id else prod.TraceListing(newest_ms=since)
    watched = [i for i in listing.infos if i.tags.get("deployment", DEPLOYMENT_STABLE) == DEPLOYMENT_STABLE
               and i.tags.get("model_version", "") == version]
    canary_infos = [i for i in listing.infos if i.tags.get("deployment") == DEPLOYMENT_CANARY]
    notes = [] if experiment_id else [f"no production experiment {config.production_experiment!r} yet: nothing served"]
    if listing.truncated:
        notes.append(f"more than {len(listing.infos)} traces since the watermark: the rest are read next time")
    sides = {"stable": prod.stratified_sample(watched, config.per_category, config.random_seed)}
    if canary_infos:
        sides["canary"] = prod.stratified_sample(canary_infos, config.per_category, config.random_seed)
    served = {side: [s for infos in sample.values() for s in map(lambda i: prod.read_served(client, i), infos) if s]
              for side, sample in sides.items()}
    judged = {side: _judge(items, config, judges, aggregate) for side, items in served.items()}
    usage = next((u for _, u in judged.values() if u is not None), None)
    by_trace = {s.trace_id: s for items in served.values() for s in items}
    live_scores = _scores(judged["stable"][0], by_trace)
    live = {c: live_estimate(items) for c, items in live_scores.items()}
    comparable = not (usage and reference.judge and usage.identity.label != reference.judge)
    if not comparable:
        notes.append(f"judged by {usage.identity.label}, the offline evaluation by {reference.judge}: not comparable, "
                     "no finding is raised (pass --judges to use the evaluation's judge)")
    offline = prod.for_categories(reference.estimates, live)
    rows = drift_findings(live, offline, settings)
    if not comparable:
        for r in rows:
            r.drift = False
    execution = state.executions + 1
    counts = {"traces_read": len(listing.infos), "watched": len(watched), "canary": len(canary_infos),
              "sampled": len(served["stable"]), "judged": sum(len(v) for v in live_scores.values())}
    canary = None
    if "canary" in judged:
        canary = _canary(config, judged, by_trace)
    alerts = [f"{ALERT_PREFIX} drift in {config.registered_model} v{version}: {r.line(settings.tolerance)}"
              for r in rows if r.drift]
    if canary and str(canary.get("applied", "")).startswith("failed"):
        alerts.append(f"{ALERT_PREFIX} canary {canary.get('action')} of {config.canary_service} {canary['applied']}")
    facts = [f"execution {execution}, {config.registered_model} v{version} (offline: run {reference.run_id}, "
             f"from its {reference.source})", f"traces since {since} ms: {counts['traces_read']} read, "
             f"{counts['watched']} of v{version} on the stable side, {counts['sampled']} sampled "
             f"(up to {config.per_category} per category, seed {config.random_seed}), {counts['judged']} judged",
             f"judge: {usage.identity.label if usage else judges}"]
    if canary is not None:
        facts.append(f"canary: {canary.get('action')}: {'; '.join(canary.get('reasons', []))[:500]}"
                     + (f" -> {canary['applied']}" if canary.get("applied") else ""))
    markdown = drift_markdown(rows, settings, title=f"Monitor: {config.registered_model} v{version}", facts=facts,
                              notes=notes)
    webhook_failures = 0
    if alerts and config.webhook_url:
        webhook_failures = post_webhook(config.webhook_url, {
            "text": "\n".join(alerts), "registered_model": config.registered_model, "version": version,
            "drifted": [r.category for r in rows if r.drift], "execution": execution,
            "categories": [r.to_dict() for r in rows if r.drift]})
    tags = {prod.TAG_MODEL: config.registered_model, prod.TAG_WATERMARK: str(listing.newest_ms),
            prod.TAG_EXECUTION: str(execution), "model_version": version, "judge": usage.identity.label if usage else "",
            **({"canary.action": str(canary.get("action"))} if canary else {})}
    metrics = {**_metrics(rows), **{f"monitor/{k}": float(v) for k, v in counts.items()},
               "monitor/findings": float(len(alerts)), "monitor/webhook_failures": float(webhook_failures)}
    with mlflow.start_run(experiment_id=state.experiment_id, run_name=f"monitor {execution}", tags=tags) as run:
        prod.log_verdicts([row for judgments, _ in judged.values() for row in judgments], run.info.run_id)
        mlflow.log_metrics(metrics, step=execution)
        result = MonitorResult(run.info.run_id, execution, version, rows, alerts, markdown, counts, notes, canary)
        with tempfile.TemporaryDirectory(prefix="selfguided-monitor-") as staging:
            folder = Path(output_dir or staging)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "report.md").write_text(markdown, encoding="utf-8")
            (folder / "monitor.json").write_text(json.dumps(result.to_json(), ensure_ascii=False, indent=1))
            png = drift_png(rows, settings)
            if png:
                (folder / "drift.png").write_bytes(png)
            for name in ("report.md", "monitor.json", "drift.png"):
                if (folder / name).is_file():
                    mlflow.log_artifact(str(folder / name))
    now = int(time.time() * 1000)
    history = prod.history_run_id(client, state.experiment_id, config.registered_model)
    client.log_batch(history, metrics=[Metric(k, v, now, execution) for k, v in metrics.items()])
    return result


def _canary(config: MonitorConfig, judged: dict[str, Any], by_trace: dict[str, Any]) -> dict[str, Any]:
    """The canary decision on every judged stable and canary answer (its own verdict, logged by the caller)."""
    from selfguided.components.evaluation.canary_decision import CanaryScore, decide_canary
    from selfguided.components.judging.rules import judged_ok

    scores = [CanaryScore(side, by_trace[j["question_id"]].category, float(j["score"]), by_trace[j["question_id"]].prompt_key)
              for side, (judgments, _) in judged.items() for j in judgments if judged_ok(j)]
    decision = (config.canary or decide_canary)(scores)
    out = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
    if config.canary_service and out.get("action") in ("rollback", "promote"):
        from selfguided.components.serving.canary_apply import apply_canary_decision

        try:
            out["applied"] = apply_canary_decision(
                decision, name=config.canary_service, namespace=config.canary_namespace or None,
                tracking_uri=config.tracking_uri, registered_model=config.registered_model, by="selfguided monitor")
        except Exception as exc:  # noqa: BLE001 - said in the result and as an ALERT by the caller
            out["applied"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return out


def raise_on_findings(result_json: str) -> str:
    """Print the ALERT lines of a monitor result and fail (non-zero exit) when there are any."""
    result = json.loads(result_json)
    for line in result.get("alerts", []):
        print(line, flush=True)
    if result.get("alerts"):
        raise SystemExit(f"{len(result['alerts'])} drift finding(s): {', '.join(result.get('drifted', []))}")
    return f"no drift in execution {result.get('execution')}"


@component(base_image=CPU_IMAGE, install_kfp_package=False)
def monitor_production(tracking_uri: str, registered_model_name: str, production_experiment: str,
                       monitor_experiment: str, model_version: str, judges: str, per_category: int, tolerance: float,
                       random_seed: int, webhook_url: str, llm_cache: str, canary_service: str,
                       report: Output[Markdown]) -> str:
    """One monitor execution: sample the production traces since the last one, judge them, compare each
    category with the offline evaluation (components/steps/monitor.py).

    Args:
        tracking_uri: MLflow tracking server.
        registered_model_name: the registered model whose champion is watched.
        production_experiment: the MLflow experiment the served answers are traced in.
        monitor_experiment: the MLflow experiment of the monitor's runs (watermark, history).
        model_version: the version watched; "" = the champion.
        judges: the jury; "" = the judge of the version's offline evaluation.
        per_category: answers sampled per category.
        tolerance: judge points a category may score below its offline mean before it is a finding.
        random_seed: the sample's seed.
        webhook_url: POST the alert here ("" = none).
        llm_cache: the LLM answer cache ("" = none).
        canary_service: the InferenceService whose canary is rolled back or promoted on the monitor's
            decision ("" = decide and log only).

    Returns:
        The execution's result as JSON (run id, drifted categories, alert lines, per-category figures).
    """
    import json

    from selfguided.components.steps.monitor import MonitorConfig, run_monitor

    result = run_monitor(MonitorConfig(
        tracking_uri=tracking_uri, registered_model=registered_model_name, production_experiment=production_experiment,
        monitor_experiment=monitor_experiment, model_version=model_version, judges=judges, per_category=per_category,
        tolerance=tolerance, random_seed=random_seed, webhook_url=webhook_url, llm_cache=llm_cache,
        canary_service=canary_service))
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(result.report_markdown)
    print(f"[selfguided] monitor: execution {result.execution}, run {result.run_id}: "
          + (", ".join(result.drifted) + " drifted" if result.drifted else "no drift"), flush=True)
    return json.dumps(result.to_json(), ensure_ascii=False)


@component(base_image=CPU_IMAGE, install_kfp_package=False)
def monitor_alert(result: str) -> str:
    """Fail the run (non-zero exit, an ALERT line per finding in the log) when the monitor found drift.

    Args:
        result: the monitor step's JSON result.

    Returns:
        One line when there is no finding.
    """
    from selfguided.components.steps.monitor import raise_on_findings

    return raise_on_findings(result)
