"""`selfguided bench-serve`: the open-loop load generator (components/serving/loadtest.py), its cost
and break-even (serving_cost.py), the CLI, and the record on the model version that the compare
report's cost table reads. Driven against the local OpenAI-compatible stand-in (llm_server.py)."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import pytest
from llm_server import MODEL_ID, FakeOpenAI
from registry_fixtures import empty_store  # noqa: F401  (fixture)
from servers import free_port

from selfguided.components.serving import loadtest, serving_cost
from selfguided.components.serving.loadtest import Outcome, RateResult
from selfguided.pipelines.cli.main import main


def result(rate: float, throughput: float, *, requests: int = 10, errors: int = 0, prompt: float = 100.0,
           completion: float = 200.0) -> RateResult:
    answers = requests - errors
    return RateResult(rate, requests, answers, 10.0, throughput, {"p50": 1.0, "p95": 2.0, "p99": 3.0},
                      throughput * completion, prompt, completion, {"HTTP 500": errors} if errors else {})


def test_poisson_arrivals_have_the_rate_and_respect_both_bounds():
    times = loadtest.poisson_arrivals(5.0, duration_s=2000.0, max_requests=100_000, rng=random.Random(1))
    assert len(times) == pytest.approx(10_000, rel=0.05) and times == sorted(times) and times[-1] <= 2000
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.2, rel=0.05)
    assert len(loadtest.poisson_arrivals(5.0, duration_s=2000.0, max_requests=7, rng=random.Random(1))) == 7
    with pytest.raises(loadtest.LoadTestError):
        loadtest.poisson_arrivals(0.0, duration_s=1.0, max_requests=1, rng=random.Random(1))


def test_arrivals_are_not_held_back_by_a_slow_server_so_its_queue_shows_in_the_latency():
    """A one-at-a-time server taking 0.1 s per answer, offered 40 req/s: a closed-loop client would
    send at its pace (latency 0.1 s, no queue); open loop sends every request on time, the server
    carries ~10/s and the queue makes the later answers wait."""
    server = threading.Lock()
    sent_at: list[float] = []
    start = time.monotonic()

    def send(prompt: str) -> tuple[int, int]:
        sent_at.append(time.monotonic() - start)
        with server:
            time.sleep(0.1)
        return 3, 5

    r = loadtest.run_open_loop(40.0, ["q"], send, duration_s=0.5, max_requests=40, rng=random.Random(3))
    assert r.requests >= 10 and r.answers == r.requests and not r.errors
    assert r.max_send_lag_s < 0.1  # every request left at its scheduled arrival
    assert max(sent_at) < 0.6  # all were sent within the 0.5 s of arrivals, not one per answer
    assert r.throughput == pytest.approx(10.0, rel=0.3)  # the server's capacity, not the offered 40/s
    assert r.latency_s["p99"] > 0.7 * (r.requests * 0.1 - 0.5)  # the last waited behind the whole queue
    assert r.latency_s["p50"] < r.latency_s["p95"] <= r.latency_s["p99"]
    assert r.mean_completion_tokens == 5 and r.output_tokens_per_s == pytest.approx(5 * r.throughput)


def test_percentiles_throughput_and_tokens_from_outcomes():
    outcomes = [Outcome(scheduled_s=0.1 * i, sent_s=0.1 * i, latency_s=float(i), prompt_tokens=10,
                        completion_tokens=i) for i in range(1, 101)]
    outcomes += [Outcome(scheduled_s=0.0, sent_s=0.0, error="timeout")] * 3
    r = loadtest.summarise(2.0, outcomes, wall_s=20.0)
    assert r.latency_s == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05), "p99": pytest.approx(99.01)}
    assert (r.requests, r.answers, r.errors) == (103, 100, {"timeout": 3})
    assert r.throughput == pytest.approx(5.0) and r.output_tokens_per_s == pytest.approx(5050 / 20)
    assert r.mean_completion_tokens == pytest.approx(50.5) and r.mean_prompt_tokens == 10


def test_errors_are_counted_by_kind_against_the_stand_in():
    with FakeOpenAI(slow_s=1.0) as fake:
        fake.script("500", "500", "slow")
        results = loadtest.run_sweep(fake.base_url, MODEL_ID, ["질문 하나", "질문 둘"], [50.0], duration_s=0.3,
                                     max_requests=8, timeout_s=0.4, seed=1)
    r = results[0]
    assert r.requests == 8 and r.errors == {"HTTP 500": 2, "timeout": 1} and r.answers == 5
    assert r.mean_completion_tokens > 0  # from the stand-in's `usage`
    assert serving_cost.capacity(results) is None  # 3 of 8 failed: not carried


def test_usd_per_1000_answers_formula():
    assert serving_cost.gpu_usd_per_1000(2.0, 0.5) == pytest.approx(2.0 / 3600 / 0.5 * 1000)  # 1.111...
    assert serving_cost.gpu_usd_per_1000(0.0, 0.5) is None and serving_cost.gpu_usd_per_1000(2.0, 0.0) is None


def test_capacity_is_the_best_rate_carried_without_errors():
    results = [result(1, 0.98), result(2, 1.9), result(4, 2.5, requests=100, errors=30)]
    assert serving_cost.capacity(results).offered_rate == 2


def test_break_even_against_the_teachers_list_price():
    price = serving_cost.ApiPrice.of("gpt-4o-mini-2024-07-18")  # a dated snapshot: priced by prefix
    assert (price.input_usd_per_1m, price.output_usd_per_1m) == pytest.approx((0.15, 0.60))
    assert price.source.startswith("https://") and price.as_of
    # 100 prompt + 200 completion tokens: 15 + 120 micro-USD per answer
    even = serving_cost.break_even([result(1, 1.0), result(8, 5.0)], 1.0, "gpt-4o-mini")
    assert even.api_usd_per_1000 == pytest.approx(0.135)
    assert even.rate == pytest.approx(1.0 / 3600 / 135e-6)  # 2.06 req/s
    assert even.reachable and "which this server carries" in even.line()
    # at that rate the GPU's cost per answer equals the API's
    assert serving_cost.gpu_usd_per_1000(1.0, even.rate) == pytest.approx(even.api_usd_per_1000)
    slow = serving_cost.break_even([result(1, 0.5)], 1.0, "gpt-4o-mini")
    assert not slow.reachable and "never costs less" in slow.line()
    assert serving_cost.break_even([result(1, 1.0)], 1.0, "no-such-model") is None
    assert serving_cost.break_even([result(1, 1.0)], 0.0, "gpt-4o-mini") is None


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["bench-serve", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_prints_the_table_cost_and_break_even_and_writes_json(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    with FakeOpenAI(latency_s=0.05) as fake:
        rc, out, err = run_cli(capsys, fake.base_url.removesuffix("/v1"), "--rates", "10,20", "--duration", "0.5",
                               "--max-requests", "6", "--gpu-hour-usd", "2", "--teacher-model", "gpt-4o",
                               "--json", str(out_json))
        asked = list(fake.asked)
    assert rc == 0, err
    assert err.count("answered in") == 2  # a progress line per rate
    rows = [line for line in out.splitlines() if line.startswith("| 10 ") or line.startswith("| 20 ")]
    assert len(rows) == 2 and "USD/1k answers" in out
    assert "gpu_hour_usd / 3600 / answers_per_s * 1000" in out and "Break-even against gpt-4o" in out
    payload = json.loads(out_json.read_text())
    assert payload["model"] == MODEL_ID and [r["offered_rate"] for r in payload["results"]] == [10, 20]
    assert payload["break_even"]["price_source"].startswith("https://")
    first = payload["results"][0]
    assert payload["usd_per_1000_answers"][0] == pytest.approx(2 / 3600 / first["throughput"] * 1000)
    from selfguided.components.data.inputs import SAMPLE_QUESTIONS, sample_path
    from selfguided.components.data.questions import load_questions

    turns = {q["turns"][0] for q in load_questions(sample_path(SAMPLE_QUESTIONS))}
    assert asked and set(asked) <= turns  # the bundled test questions' first turns


@pytest.mark.parametrize("argv, words", [
    (["--rates", "1,x"], "--rates"), (["--rates", "0"], "> 0"), (["--duration", "0"], "--duration"),
    (["--questions", "/no/such.jsonl"], "file not found"),
])
def test_bad_input_is_one_line_and_2(capsys, argv, words):
    rc, out, err = run_cli(capsys, "http://127.0.0.1:9", *argv)
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1 and not out


def test_an_unreachable_url_is_one_line_and_2(capsys):
    rc, out, err = run_cli(capsys, f"http://127.0.0.1:{free_port()}", "--duration", "0.1")
    assert rc == 2 and "did not answer" in err and "is the server running" in err
    assert len(err.strip().splitlines()) == 1 and not out


@pytest.fixture
def registry(tmp_path, empty_store):  # noqa: F811  (fixture)
    from mlflow import MlflowClient

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("writer")
    for _ in range(2):
        client.create_model_version("writer", source=(tmp_path / "model").as_uri())
    client.set_registered_model_alias("writer", "champion", "2")
    return uri, client


def test_cli_logs_the_sweep_and_tags_the_champion_version(registry, capsys):
    uri, client = registry
    with FakeOpenAI(latency_s=0.02) as fake:
        rc, out, err = run_cli(capsys, fake.base_url, "--rates", "20", "--duration", "0.4", "--max-requests", "5",
                               "--gpu-hour-usd", "1.5", "--tracking-uri", uri, "--registered-model", "writer",
                               "--model-version", "champion")
    assert rc == 0, err
    tags = client.get_model_version("writer", "2").tags
    run = client.get_run(tags[serving_cost.TAG_BENCH_RUN_ID])
    assert f"run {run.info.run_id}" in out and "tagged writer v2" in out
    throughput = run.data.metrics["rate_20/throughput"]
    assert float(tags[serving_cost.TAG_ANSWERS_PER_GPU_HOUR]) == pytest.approx(throughput * 3600, abs=0.1)
    assert run.data.metrics["rate_20/usd_per_1000_answers"] == pytest.approx(1.5 / 3600 / throughput * 1000)
    assert {"rate_20/p50_s", "rate_20/p95_s", "rate_20/p99_s", "capacity_answers_per_s"} <= set(run.data.metrics)
    assert serving_cost.measured_answers_per_gpu_hour(uri, "writer", "2") == (
        pytest.approx(throughput * 3600, abs=0.1), run.info.run_id)
    assert serving_cost.measured_answers_per_gpu_hour(uri, "writer", "1") is None  # not benchmarked
    assert not client.get_model_version("writer", "1").tags


def test_a_version_that_does_not_exist_is_one_line_and_2(registry, capsys):
    uri, _ = registry
    with FakeOpenAI() as fake:
        rc, out, err = run_cli(capsys, fake.base_url, "--rates", "20", "--duration", "0.2", "--max-requests", "2",
                               "--tracking-uri", uri, "--registered-model", "writer", "--model-version", "9")
    assert rc == 2 and "not logged to MLflow" in err and "version=9" in err
    assert len(err.strip().splitlines()) == 1 and not out and not fake.chat_requests  # checked before the sweep


def test_the_compare_reports_cost_table_uses_the_champions_measured_throughput(registry, tmp_path):
    from registry_fixtures import category_scores, make_judgments, write_row

    from selfguided.components.evaluation.compare_result import CompareResult
    from selfguided.components.evaluation.decision import PromotionGate
    from selfguided.components.steps.compare import measured_champion_cost, run_compare_step

    uri, client = registry
    client.set_model_version_tag("writer", "2", serving_cost.TAG_ANSWERS_PER_GPU_HOUR, "7200.0")
    client.set_model_version_tag("writer", "2", serving_cost.TAG_BENCH_RUN_ID, "abc123")
    folder = tmp_path / "rows"
    written = [write_row(folder, arm, make_judgments(category_scores(score), spread=0.4, seed=i), arm=arm)
               for i, (arm, score) in enumerate([("unscored", 5.0), ("self_guided", 6.0)])]
    written.append(write_row(folder, "champion", make_judgments(category_scores(5.5), spread=0.4, seed=9),
                             row_kind="champion", base_model="", model="2"))
    run_compare_step([s for s, _ in written], [j for _, j in written], str(folder / "r.json"), str(folder / "r.md"),
                     str(folder / "r.html"), gate=PromotionGate(), gpu_hour_usd=3.0, tracking_uri=uri,
                     registered_model_name="writer")
    report = (folder / "r.md").read_text(encoding="utf-8")
    line = next(x for x in report[report.index("## Cost"):].splitlines() if x.startswith("| champion/v2 "))
    # 7200 answers per GPU hour at $3: $0.4167 per 1000, said to be measured and where
    assert "$0.4167" in line and "measured under load: 7,200 answers/GPU-hour" in line and "abc123" in line
    assert "measured under load" in (folder / "r.html").read_text(encoding="utf-8")

    def basis(version: str, gpu_hour_usd: float, name: str = "writer") -> str:
        result = CompareResult.read(folder / "r.json")
        result.champion_version = version
        champion = next(r for r in result.comparison.rows if r.row_kind == "champion")
        champion.usd_per_1000_answers, champion.cost_basis = None, "as before"
        measured_champion_cost(result, uri, name, gpu_hour_usd)
        return f"{champion.usd_per_1000_answers} {champion.cost_basis}"

    assert basis("2", 0.0).startswith("None set gpu_hour_usd; measured under load")
    assert basis("1", 3.0) == "None as before"  # no bench on v1: today's basis
    assert basis("2", 3.0, name="other") == "None as before"  # the lookup fails: the basis is kept
