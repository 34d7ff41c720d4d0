"""`selfguided monitor` (one monitor execution on this machine: the champion's production answers
judged and compared with its offline evaluation; exit 1 and ALERT lines on a credible drift) and
`selfguided schedule` (a KFP recurring run of the monitor, training or flywheel pipeline on a cron; `--list`
shows the KFP experiment's recurring runs, `--delete` removes one)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.components.registry.production import PRODUCTION_EXPERIMENT
from selfguided.pipelines.options import UsageError, add_tracking_uri, existing_store

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_ms(value: str | None, now: dt.datetime | None = None) -> int | None:
    """`--since`: None (after the last execution), `all`, a duration back from now (`90m`, `24h`,
    `7d`), or an ISO-8601 time (UTC unless it says otherwise) -> ms since the epoch."""
    if value is None:
        return None
    if value == "all":
        return 0
    now = now or dt.datetime.now(dt.timezone.utc)
    if m := _DURATION.match(value.strip()):
        return int((now.timestamp() - float(m.group(1)) * _SECONDS[m.group(2)]) * 1000)
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise UsageError(f"--since {value!r}: give `all`, a duration like 24h or 7d, or an ISO time like "
                         "2026-12-01T09:00") from None
    when = when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1000)


def cmd_monitor(args: argparse.Namespace) -> int:
    from selfguided.components.steps.monitor import MonitorConfig, run_monitor

    since = since_ms(args.since)
    if args.per_category < 1:
        raise UsageError(f"--per-category {args.per_category}: sample at least 1 answer per category")
    if not args.tolerance >= 0:
        raise UsageError(f"--tolerance {args.tolerance}: give a number of judge points >= 0")
    config = MonitorConfig(
        tracking_uri=existing_store(args.tracking_uri), registered_model=args.registered_model,
        production_experiment=args.experiment, monitor_experiment=args.monitor_experiment,
        model_version=args.model_version, judges=args.judges, per_category=args.per_category,
        tolerance=args.tolerance, random_seed=args.random_seed, since_ms=since, webhook_url=args.webhook_url or "",
        llm_base_url=os.environ.get("OPENAI_BASE_URL", ""), canary_service=args.canary_service or "",
        canary_namespace=args.namespace or "")
    result = run_monitor(config, output_dir=args.output_dir)
    print(result.report_markdown)
    print(f"MLflow run {result.run_id} (experiment {args.monitor_experiment}), execution {result.execution}")
    for line in result.alerts:
        print(line)
    return 1 if result.alerts else 0


# ---------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------

PIPELINES = ("monitor", "train", "flywheel")


def kfp_cron(expression: str) -> str:
    """A cron expression as KFP reads it (6 fields, seconds first; robfig/cron): a standard 5-field
    one gets `0` seconds. Anything else is a UsageError."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6 or not all(re.fullmatch(r"[\d*/,?LW#A-Za-z-]+", f) for f in fields):
        raise UsageError(f"--cron {expression!r}: give 5 fields (minute hour day month weekday, e.g. '0 6 * * *') "
                         "or KFP's 6 (seconds first)")
    return " ".join(fields)


def compile_for_schedule(pipeline: str, folder: str | Path) -> Path:
    """The pipeline compiled now (this install's images) into `folder`, for the recurring run."""
    if pipeline == "monitor":
        from selfguided.pipelines.monitor_pipeline import compile_monitor_pipeline

        return compile_monitor_pipeline(Path(folder) / "selfguided_monitor.yaml")
    if pipeline == "flywheel":
        from selfguided.pipelines.flywheel_pipeline import compile_flywheel_pipeline

        return compile_flywheel_pipeline(Path(folder) / "selfguided_flywheel.yaml")
    from selfguided.pipelines.compile import compile_pipeline

    return compile_pipeline(Path(folder) / "selfguided_pipeline.yaml")


def schedule_recurring_run(client: Any, *, pipeline: str, cron: str, package_path: str | Path, job_name: str,
                           kfp_experiment: str, namespace: str | None, params: dict[str, Any],
                           service_account: str | None) -> Any:
    """Create the recurring run with `client` (a kfp.Client). kfp 2.x's Client.create_recurring_run
    (kfp/client/client.py) takes experiment_id, job_name, cron_expression (6 fields), max_concurrency,
    no_catchup, params, pipeline_package_path (.yaml accepted), enabled, service_account, ...; the
    experiment comes from create_experiment, which returns the existing one of that name."""
    experiment = client.create_experiment(kfp_experiment, namespace=namespace)
    return client.create_recurring_run(
        experiment_id=experiment.experiment_id, job_name=job_name,
        description=f"selfguided {pipeline} on cron {cron}", cron_expression=cron, max_concurrency=1,
        no_catchup=True, params=params, pipeline_package_path=str(package_path), enabled=True,
        service_account=service_account)


def kfp_client(host: str, namespace: str | None) -> Any:
    """kfp.Client for `host` (the bearer token from $KFP_TOKEN when set)."""
    import kfp

    return kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("KFP_TOKEN") or None)


def recurring_runs(client: Any, kfp_experiment: str, namespace: str | None, *, max_pages: int = 50) -> list[Any] | None:
    """The recurring runs of the KFP experiment (kfp.Client.list_recurring_runs, every page), or
    None when the experiment does not exist."""
    try:
        experiment = client.get_experiment(experiment_name=kfp_experiment, namespace=namespace)
    except ValueError:  # kfp: "No experiment is found with name ..."
        return None
    found, token = [], ""
    for _ in range(max_pages):
        page = client.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment.experiment_id)
        found += page.recurring_runs or []
        token = page.next_page_token
        if not token:
            break
    return found


def describe_recurring_run(job: Any) -> dict[str, str]:
    """One recurring run as `schedule --list` shows it (a kfp_server_api.V2beta1RecurringRun)."""
    trigger = job.trigger
    cron = (trigger.cron_schedule.cron if trigger and trigger.cron_schedule
            else f"every {trigger.periodic_schedule.interval_second} s" if trigger and trigger.periodic_schedule else "")
    spec = job.pipeline_spec or {}
    info = (spec.get("pipeline_spec") or spec).get("pipelineInfo") or {}
    reference = job.pipeline_version_reference
    pipeline = info.get("name") or (f"version {reference.pipeline_version_id}" if reference else "")
    params = (job.runtime_config.parameters if job.runtime_config else None) or {}
    return {"name": job.display_name or "", "id": job.recurring_run_id or "", "cron": cron,
            "status": str(job.status or job.mode or ""), "pipeline": pipeline,
            "created": job.created_at.isoformat(timespec="seconds") if job.created_at else "",
            "parameters": ", ".join(f"{k}={v}" for k, v in sorted(params.items()))}


def list_schedules(args: argparse.Namespace) -> int:
    found = recurring_runs(kfp_client(args.kfp_host, args.namespace), args.kfp_experiment, args.namespace)
    if not found:
        print(f"No recurring runs in KFP experiment {args.kfp_experiment} on {args.kfp_host}"
              + (" (the experiment does not exist)" if found is None else ""))
        return 0
    rows = [describe_recurring_run(job) for job in found]
    columns = ("name", "id", "cron", "status", "pipeline", "created", "parameters")
    print(f"{len(rows)} recurring run(s) in KFP experiment {args.kfp_experiment} on {args.kfp_host} (cron: KFP's "
          "6 fields, seconds first; the runs each one started are listed under the experiment)")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")
    return 0


def delete_schedule(args: argparse.Namespace) -> int:
    client = kfp_client(args.kfp_host, args.namespace)
    found = recurring_runs(client, args.kfp_experiment, args.namespace) or []
    matches = [j for j in found if args.delete in (j.recurring_run_id, j.display_name)]
    if len(matches) != 1:
        raise UsageError(f"--delete {args.delete}: {'no' if not matches else len(matches)} recurring run(s) of that "
                         f"name or id in KFP experiment {args.kfp_experiment}; see `selfguided schedule --list`"
                         + (" and give the id" if matches else ""))
    client.delete_recurring_run(matches[0].recurring_run_id)
    print(f"deleted recurring run {matches[0].display_name} ({matches[0].recurring_run_id})")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    if args.list:
        return list_schedules(args)
    if args.delete:
        return delete_schedule(args)
    if not args.cron:
        raise UsageError("schedule: give --cron (a new recurring run), --list or --delete NAME_OR_ID")
    cron = kfp_cron(args.cron)
    params = dict(pipeline_param(p) for p in args.param)
    from selfguided.pipelines.platform import CACHE_MOUNT_PATH, PIPELINE_SERVICE_ACCOUNT

    store = str(params.get("seed_store", f"{CACHE_MOUNT_PATH}/"))
    if args.pipeline == "flywheel" and not store.startswith(("s3://", f"{CACHE_MOUNT_PATH}/")):
        raise UsageError(f"--param seed_store={store}: the flywheel's steps cannot read it; give s3://bucket/prefix "
                         f"or a folder on the cache volume ({CACHE_MOUNT_PATH}/..., the default)")

    client = kfp_client(args.kfp_host, args.namespace)
    with tempfile.TemporaryDirectory(prefix="selfguided-schedule-") as folder:
        package = compile_for_schedule(args.pipeline, folder)
        job = schedule_recurring_run(
            client, pipeline=args.pipeline, cron=cron, package_path=package,
            job_name=args.job_name or f"selfguided-{args.pipeline}", kfp_experiment=args.kfp_experiment,
            namespace=args.namespace, params=params, service_account=args.service_account or PIPELINE_SERVICE_ACCOUNT)
    job_id = getattr(job, "recurring_run_id", "") or getattr(job, "id", "")
    print(f"scheduled {args.pipeline} on cron '{cron}' (KFP recurring run {job_id}, experiment {args.kfp_experiment})")
    return 0


def pipeline_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"--param {text!r}: give NAME=VALUE (a pipeline parameter)")
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    return name, value


def add_monitor_parsers(sub) -> None:
    monitor = sub.add_parser("monitor", help="judge a sample of the champion's production answers against its "
                             "offline evaluation; exit 1 with ALERT lines on a credible drift",
                             description="One monitor execution on this machine: the production traces since the "
                             "last execution, sampled per category, judged by the champion evaluation's jury, each "
                             "category's live mean and 95% interval against the offline one. Exit 1 when a category "
                             "drifted (an ALERT line each), 0 otherwise.")
    add_tracking_uri(monitor)
    monitor.add_argument("--registered-model", default=REGISTERED_MODEL_NAME, help="registered model (default: %(default)s)")
    monitor.add_argument("--experiment", default=PRODUCTION_EXPERIMENT,
                         help="MLflow experiment of the production traces (default: %(default)s)")
    monitor.add_argument("--monitor-experiment", default="selfguided-monitor",
                         help="MLflow experiment of the monitor's runs (default: %(default)s)")
    monitor.add_argument("--model-version", default="", help="version to watch (default: the champion)")
    monitor.add_argument("--judges", default="", help="the jury, `a,b@url` (default: the judge of the version's "
                         "offline evaluation)")
    monitor.add_argument("--since", help="read traces after this: `all`, a duration (24h, 7d) or an ISO time "
                         "(default: after the last execution)")
    monitor.add_argument("--per-category", type=int, default=50, help="answers sampled per category (default: %(default)s)")
    monitor.add_argument("--tolerance", type=float, default=0.25, help="judge points a category may score below its "
                         "offline mean before it is a finding (default: %(default)s)")
    monitor.add_argument("--random-seed", type=int, default=0, help="the sample's seed (default: %(default)s)")
    monitor.add_argument("--webhook-url", help="POST the alert as JSON here (failures are counted, never fatal)")
    monitor.add_argument("--canary-service", help="the InferenceService whose canary the monitor rolls back or promotes "
                         "on its decision, with the champion alias (default: decide and log only)")
    monitor.add_argument("--namespace", help="its namespace (default: the kubeconfig's)")
    monitor.add_argument("-o", "--output-dir", help="also write report.md, drift.png and monitor.json here")
    monitor.set_defaults(func=cmd_monitor)

    schedule = sub.add_parser("schedule", help="create a KFP recurring run of the monitor (or training, or "
                              "flywheel) pipeline on a cron", description="Compile the pipeline and create a KFP recurring run "
                              "(kfp.Client.create_recurring_run) on a cron schedule; one run at a time, no catch-up. "
                              "--list shows the experiment's recurring runs, --delete removes one.")
    schedule.add_argument("--kfp-host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
    schedule.add_argument("--cron", help="cron expression, 5 fields ('0 6 * * *': daily 06:00) or KFP's 6")
    schedule.add_argument("--list", action="store_true", help="list the recurring runs of --kfp-experiment instead")
    schedule.add_argument("--delete", metavar="NAME_OR_ID", help="delete that recurring run instead")
    schedule.add_argument("--pipeline", choices=PIPELINES, default="monitor", help="which pipeline (default: %(default)s)")
    schedule.add_argument("--namespace", help="Kubeflow profile namespace")
    schedule.add_argument("--kfp-experiment", default=EXPERIMENT_NAME, help="KFP experiment (default: %(default)s)")
    schedule.add_argument("--job-name", help="name of the recurring run (default: selfguided-<pipeline>)")
    schedule.add_argument("--service-account", help="service account of the runs' pods (default: the pipeline's)")
    schedule.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                          help="a pipeline parameter (repeatable), e.g. --param per_category=30")
    schedule.set_defaults(func=cmd_schedule)
