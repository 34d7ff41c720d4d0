"""The monitor (components/steps/monitor.py) on a SQLite MLflow store: a champion with an offline
evaluation, production traces written in the contract's shape (registry/production.py), replayed
from it as served, or deliberately degraded in one category; the rule's false-alarm rate by
simulation (evaluation/drift.py)."""

from __future__ import annotations

import datetime as dt
import inspect
import json
import random
from dataclasses import dataclass
from types import SimpleNamespace

import kfp
import yaml

import mlflow
import pytest
from mlflow import MlflowClient

from selfguided.components.data.inputs import sample_path
from selfguided.components.data.jsonl import read_jsonl
from selfguided.components.evaluation.drift import DriftSettings, drift_findings, live_estimate, simulate_drift
from selfguided.components.evaluation.statistics import Estimate
from selfguided.components.judging.offline import OFFLINE_JUDGE, OFFLINE_JUDGE_NAME, judge_offline
from selfguided.components.registry import production as contract
from selfguided.components.registry import production_read as prod
from selfguided.components.registry.runs import ensure_experiment
from selfguided.components.steps.monitor import MonitorConfig, jury_of_run, run_monitor
from selfguided.pipelines.cli.main import main
from selfguided.pipelines.cli.monitor import kfp_cron, since_ms
from servers import QuietJsonHandler, free_port, local_http_server, serving

PER_CATEGORY = 8  # evaluation questions per category (the held-out set of the fixture)


def _seed_items():
    """(category, prompt, good answer) from the bundled seed: the champion's 'answers'."""
    records = read_jsonl(sample_path("seed.jsonl"))
    by_category: dict[str, list] = {}
    for r in records:
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        by_category.setdefault(r["category"], []).append((r["category"], prompt, r["output"]))
    return [item for items in by_category.values() for item in items[:PER_CATEGORY]]


def _champion(uri: str, model: str) -> str:
    """An evaluation run of the champion (judgments.jsonl by the offline judge, its tags and param),
    registered as v1 of `model` with the `champion` alias."""
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = ensure_experiment(client, f"evaluation of {model}", uri)  # artifacts beside the database
    items = _seed_items()
    questions = [{"question_id": i, "category": c, "turns": [p]} for i, (c, p, _) in enumerate(items)]
    answers = [{"question_id": i, "model_id": "champion", "choices": [{"index": 0, "turns": [a]}]}
               for i, (_, _, a) in enumerate(items)]
    judgments = judge_offline(questions, answers)
    with mlflow.start_run(experiment_id=experiment, tags={"judge": OFFLINE_JUDGE.label, "row": "tiny/self_guided",
                                                           "row_kind": "trained"}) as run:
        mlflow.log_param("judge_model", OFFLINE_JUDGE_NAME)
        mlflow.log_text("\n".join(json.dumps(j, ensure_ascii=False) for j in judgments) + "\n", "judgments.jsonl")
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(model, "champion", version.version)
    return str(version.version)


def _garble(text: str) -> str:
    """A degraded answer: cut short and broken (what a damaged model writes)."""
    return text[:40] + "\ufffd" * 8


def _serve(store, version: str, *, requests: int, degraded: str = "", seed: int = 0,
           deployment: str = contract.DEPLOYMENT_STABLE) -> None:
    """`requests` served answers replayed from the champion's prompts (each in turn), as the serving side traces
    them (the contract's name, request, response and tags); answers in category `degraded` garbled."""
    mlflow.set_tracking_uri(store.uri)
    client = MlflowClient(store.uri)
    experiment_id = ensure_experiment(client, store.production, store.uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    items = _seed_items()
    rng = random.Random(seed)
    replay: list = []
    for _ in range(requests):  # every prompt in turn, each round shuffled (a replay of the questions)
        if not replay:
            replay = rng.sample(items, len(items))
        category, prompt, answer = replay.pop()
        with mlflow.start_span(contract.SERVED_TRACE_NAME, span_type="CHAT_MODEL") as span:
            span.set_inputs({"messages": [{"role": "user", "content": prompt}]})
            span.set_outputs({"answer": _garble(answer) if category == degraded else answer})
            span.set_attributes({contract.ATTR_LATENCY_MS: 12.0})
            mlflow.update_current_trace(tags={
                contract.TAG_CATEGORY: category, contract.TAG_CATEGORY_SOURCE: "client",
                contract.TAG_REGISTERED_MODEL: store.model, contract.TAG_MODEL_VERSION: version,
                contract.TAG_ALIAS: "champion", contract.TAG_DEPLOYMENT: deployment, contract.TAG_REDACTIONS: "0"})
    mlflow.flush_trace_async_logging()


@dataclass
class Store:
    """One test's corner of the module's store: its own registered model and experiments."""

    uri: str
    model: str
    production: str
    monitor: str
    version: str = ""

    def config(self, **settings) -> MonitorConfig:
        return MonitorConfig(tracking_uri=self.uri, registered_model=self.model, production_experiment=self.production,
                             monitor_experiment=self.monitor, **settings)


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('monitor') / 'mlflow.db'}"


@pytest.fixture
def store(database, request):
    name = request.node.name[5:45]
    s = Store(database, f"model-{name}", f"production-{name}", f"monitor-{name}")
    s.version = _champion(database, s.model)
    return s


def test_degraded_category_is_named_with_an_interval_and_the_others_are_not(store, tmp_path):
    _serve(store, store.version, requests=96, degraded="poem")
    result = run_monitor(store.config(per_category=16, random_seed=3), output_dir=tmp_path / "out")
    assert result.drifted == ["poem"], result.report_markdown
    (poem,) = [r for r in result.rows if r.category == "poem"]
    assert poem.difference.has_interval and poem.difference.ci_high < -DriftSettings().tolerance
    assert poem.live.has_interval and poem.live.ci_high < poem.offline.mean
    assert {r.category for r in result.rows if r.tested} == {"cover_letter", "poem", "blog", "novel", "scenario", "news"}
    assert len(result.alerts) == 1 and result.alerts[0].startswith(f"ALERT drift in {store.model} v1: poem:")
    assert "95% CI" in result.alerts[0]
    assert "**Drift found** in poem" in result.report_markdown
    assert (tmp_path / "out" / "drift.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(store.uri)
    run = client.get_run(result.run_id)
    assert run.data.metrics["drift/poem"] == 1.0 and run.data.metrics["drift/news"] == 0.0
    assert run.data.metrics["live/poem/overall_ci_high"] < run.data.metrics["offline/poem/overall"]
    assert {a.path for a in client.list_artifacts(result.run_id)} >= {"report.md", "drift.png", "monitor.json"}
    # every judge's verdict is on its sampled trace, tagged with the run that judged it
    judged = client.search_traces([run.info.experiment_id], max_results=5) or []
    production = client.get_experiment_by_name(store.production).experiment_id
    tagged = [t for t in client.search_traces([production], max_results=200)
              if t.info.tags.get(prod.TAG_MONITOR_RUN) == result.run_id]
    assert len(tagged) == result.counts["sampled"] and not judged
    feedback = [a for a in tagged[0].info.assessments if a.name == "overall"]
    assert feedback and feedback[0].source.source_id == OFFLINE_JUDGE_NAME


def test_undegraded_traffic_names_no_category_and_the_watermark_moves_on(store):
    _serve(store, store.version, requests=48)
    first = run_monitor(store.config(per_category=8))
    assert first.drifted == [] and first.alerts == [] and first.execution == 1
    assert first.counts["traces_read"] == 48 and "No drift" in first.report_markdown
    again = run_monitor(store.config(per_category=8))  # nothing new since the watermark
    assert again.execution == 2 and again.counts["traces_read"] == 0 and again.drifted == []
    _serve(store, store.version, requests=12, seed=1)
    third = run_monitor(store.config(per_category=8))
    assert third.counts["traces_read"] == 12
    client = MlflowClient(store.uri)
    history = prod.history_run_id(client, client.get_experiment_by_name(store.monitor).experiment_id, store.model)
    steps = [m.step for m in client.get_metric_history(history, "monitor/traces_read")]
    assert steps == [1, 2, 3]  # one point per execution: the line over time


def test_other_versions_and_canary_answers_are_kept_apart(store, monkeypatch):
    _serve(store, store.version, requests=48)
    _serve(store, "7", requests=12, seed=2, degraded="news")  # another version: not the champion's traffic
    _serve(store, store.version, requests=24, seed=3, deployment=contract.DEPLOYMENT_CANARY, degraded="blog")
    calls = []
    result = run_monitor(store.config(per_category=8,
                                      canary=lambda scores: calls.append(scores) or {"action": "wait", "reasons": []}))
    assert result.counts["watched"] == 48 and result.counts["canary"] == 24 and result.drifted == []
    (scores,) = calls
    assert {s.deployment for s in scores} == {"stable", "canary"}
    assert min(s.score for s in scores if s.category == "blog" and s.deployment == "canary") < 4
    assert result.canary == {"action": "wait", "reasons": []}
    # with a service to act on, a rollback is carried out by the canary's own apply_canary_decision;
    # a cluster that refuses it is an ALERT, not a crash
    import selfguided.components.serving.canary_apply as canary_apply

    applied = []

    def refuse(decision, **where):
        applied.append((decision, where))
        raise RuntimeError("403 forbidden")

    monkeypatch.setattr(canary_apply, "apply_canary_decision", refuse)
    again = run_monitor(store.config(per_category=8, since_ms=0, canary_service="assistant",
                                     canary=lambda scores: {"action": "rollback", "reasons": ["blog worse"]}))
    ((decision, where),) = applied
    assert decision["action"] == "rollback" and where["name"] == "assistant" and where["registered_model"] == store.model
    assert again.canary["applied"] == "failed: RuntimeError: 403 forbidden"
    assert again.alerts == ["ALERT canary rollback of assistant failed: RuntimeError: 403 forbidden"]


def test_drift_rule_on_estimates():
    offline = {"poem": Estimate(7.0, 6.5, 7.5, 14, 14, 0.23, 13.0), "news": Estimate(7.0, 6.5, 7.5, 14, 14, 0.23, 13.0)}
    live = {"poem": live_estimate([(str(i), 5.0 + (i % 3) * 0.5) for i in range(30)]),
            "news": live_estimate([(str(i), 6.5 + (i % 3) * 0.5) for i in range(30)])}
    rows = {r.category: r for r in drift_findings(live, offline, DriftSettings(tolerance=0.25))}
    assert rows["poem"].drift and not rows["news"].drift
    assert rows["news"].difference.ci_low < 0 < rows["news"].difference.ci_high  # 7.0 vs ~7.0
    few = drift_findings({"poem": live_estimate([("a", 1.0), ("b", 1.5)])}, offline)
    assert not few[0].tested and "2 live prompts" in few[0].note


def test_false_alarm_rate_by_simulation_is_at_most_five_percent():
    """The shipped rule on undegraded traffic (the bundled sample's offline layout, 20 live prompts
    per category): the per-execution false-alarm rate stays under 5% (400 executions; the full
    table is benchmarks/monitor_simulation.py's), and a -1.5 drop is seen more often than not."""
    layout = (14, 14, 4, 4, 3, 3)
    null = simulate_drift(layout, 20, reps=400, seed=11)
    assert null["any"] <= 0.05, null
    drop = simulate_drift(layout, 50, shift=-1.5, reps=150, seed=12, settings=DriftSettings(tolerance=0.0))
    assert drop["shifted"] >= 0.5, drop


def test_jury_of_run_reads_a_jury_name():
    assert jury_of_run("jury-median(a,b)") == ("a,b", "median")
    assert jury_of_run("gpt-4o") == ("gpt-4o", "mean")


# ---------------------------------------------------------------------------------------------
# `selfguided monitor` and `selfguided schedule`
# ---------------------------------------------------------------------------------------------


class _Webhook(QuietJsonHandler):
    received: list = []

    def do_POST(self):
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self._send(200, {"ok": True})


def _monitor_cli(store, *extra):
    return main(["monitor", "--tracking-uri", store.uri, "--registered-model", store.model, "--experiment",
                 store.production, "--monitor-experiment", store.monitor, *extra])


def test_cli_exits_1_with_an_alert_line_and_posts_the_webhook(store, capsys, tmp_path):
    _serve(store, store.version, requests=60, degraded="news")
    server, url = local_http_server(_Webhook)
    _Webhook.received = []
    with serving(server):
        code = _monitor_cli(store, "--per-category", "12", "--random-seed", "5", "--webhook-url", url + "/hook",
                            "-o", str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert code == 1
    alerts = [line for line in out.splitlines() if line.startswith("ALERT ")]
    assert len(alerts) == 1 and ": news: live " in alerts[0] and "95% CI" in alerts[0]
    (body,) = _Webhook.received
    assert body["drifted"] == ["news"] and body["text"] == alerts[0] and body["version"] == store.version
    assert json.loads((tmp_path / "out" / "monitor.json").read_text())["drifted"] == ["news"]
    # the webhook down: counted, never fatal; nothing new since the watermark, so no alert and exit 0
    _serve(store, store.version, requests=48, seed=4, degraded="news")
    dead = f"http://127.0.0.1:{free_port()}/hook"
    assert _monitor_cli(store, "--per-category", "12", "--webhook-url", dead) == 1
    client = MlflowClient(store.uri)
    runs = client.search_runs([client.get_experiment_by_name(store.monitor).experiment_id],
                              filter_string="tags.`monitor.execution` = '2'")
    assert runs[0].data.metrics["monitor/webhook_failures"] == 2.0
    capsys.readouterr()
    assert _monitor_cli(store) == 0 and "traces since" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_and_exit_2(capsys):
    assert main(["monitor", "--since", "last tuesday"]) == 2
    assert main(["monitor", "--per-category", "0"]) == 2
    assert main(["schedule", "--kfp-host", "http://127.0.0.1:1", "--cron", "every day"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("selfguided ") for line in err)
    assert since_ms("24h", dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc)) == \
        int(dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert since_ms("2026-12-01T09:00") == int(dt.datetime(2026, 12, 1, 9, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert kfp_cron("0 6 * * *") == "0 0 6 * * *" and kfp_cron("0 0 6 * * 1-5") == "0 0 6 * * 1-5"


class _FakeKfpClient:
    """What `selfguided schedule` asks of kfp.Client, recorded; signatures checked against the real one."""

    calls: list = []

    def __init__(self, **kwargs):
        inspect.signature(kfp.Client.__init__).bind(None, **kwargs)
        self.calls.append(("init", kwargs))

    def create_experiment(self, name, **kwargs):
        inspect.signature(kfp.Client.create_experiment).bind(self, name, **kwargs)
        self.calls.append(("experiment", name))
        return SimpleNamespace(experiment_id="exp-1")

    def create_recurring_run(self, **kwargs):
        inspect.signature(kfp.Client.create_recurring_run).bind(self, **kwargs)
        package = yaml.safe_load_all(open(kwargs["pipeline_package_path"], encoding="utf-8"))
        self.calls.append(("recurring", {**kwargs, "pipeline_name": next(package)["pipelineInfo"]["name"]}))
        return SimpleNamespace(recurring_run_id="rr-1")


def test_schedule_creates_a_recurring_run_with_the_compiled_monitor(monkeypatch, capsys):
    monkeypatch.setattr(kfp, "Client", _FakeKfpClient)
    _FakeKfpClient.calls = []
    code = main(["schedule", "--kfp-host", "http://127.0.0.1:8888", "--cron", "30 6 * * 1-5", "--namespace", "team",
                 "--param", "per_category=30", "--param", "judges=gpt-4o"])
    assert code == 0, capsys.readouterr().err
    init, experiment, (kind, recurring) = _FakeKfpClient.calls
    assert init[1]["host"] == "http://127.0.0.1:8888" and init[1]["namespace"] == "team"
    assert experiment == ("experiment", "selfguided") and kind == "recurring"
    assert recurring["cron_expression"] == "0 30 6 * * 1-5" and recurring["experiment_id"] == "exp-1"
    assert recurring["pipeline_name"] == "selfguided-monitor" and recurring["job_name"] == "selfguided-monitor"
    assert recurring["params"] == {"per_category": 30, "judges": "gpt-4o"}
    assert recurring["max_concurrency"] == 1 and recurring["no_catchup"] is True
    assert "rr-1" in capsys.readouterr().out


def test_traces_of_the_serving_writer_read_back(database):
    """The serving side's writer (registry/production_log.py) and this reader agree on the contract."""
    import time

    from selfguided.components.data.redact import Redactor
    from selfguided.components.registry.production_log import MlflowTraceSink, ServedAnswer, ServingLabels, prepare

    class Poems:
        source = "classifier:test"

        def predict(self, text):
            return "poem"

    labels = ServingLabels("writer-model", "3", "champion")
    answers = [ServedAnswer([{"role": "user", "content": f"가을 시를 써 줘 {i}"}, {"role": "assistant", "content": "앞"},
                             {"role": "user", "content": "더 짧게"}], f"답 {i}", time.time_ns(), 5.0,
                            client_category="news" if i % 2 else None) for i in range(4)]
    ensure_experiment(MlflowClient(database), "writer-production", database)
    MlflowTraceSink(database, "writer-production").write([prepare(a, labels, Redactor(), Poems()) for a in answers])
    client = MlflowClient(database)
    listing = prod.list_served(client, prod.production_experiment_id(client, "writer-production"), 0)
    assert len(listing.infos) == 4 and listing.newest_ms > 0
    served = [prod.read_served(client, info) for info in listing.infos]
    assert sorted(s.category for s in served) == ["news", "news", "poem", "poem"]
    assert {s.model_version for s in served} == {"3"} and all(s.answer.startswith("답 ") for s in served)
    questions, replies = prod.judge_inputs(served)
    assert questions[0]["turns"][1] == "더 짧게" and replies[0]["choices"][0]["turns"][0] == "앞"
    assert len({s.prompt_key for s in served}) == 4
