"""What a load test's throughput costs, the break-even against the teacher API, and the record of
it on the registered model version (read back by the compare report's cost table).

Self-hosted, one GPU rented by the hour and serving `answers_per_s`:

    USD per 1,000 answers = gpu_hour_usd / 3600 / answers_per_s * 1000

At a saturated server `answers_per_s` is its capacity; below saturation it is the traffic (the
hour is paid whether the GPU is busy or not), so the same formula gives the cost at each rate.

The API: USD per answer = prompt_tokens x input price + completion_tokens x output price, at the
tokens per answer measured under load (the served model's tokenizer: the API's own tokenizer
counts Korean differently, so this is an estimate), at the list prices of llm/config.DEFAULT_PRICES
(source and date: llm/config.PRICES_SOURCE, PRICES_AS_OF; a user must check them).

Break-even: the GPU is cheaper per answer than the API above

    break-even req/s = gpu_hour_usd / 3600 / API USD per answer

and only if the server can carry that rate (at most its measured capacity); else it never is, on
this hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from selfguided.components.llm.config import PRICES_AS_OF, PRICES_SOURCE, LLMConfig
from selfguided.components.serving.loadtest import RateResult

MAX_ERROR_SHARE = 0.01  # a rate with more failed requests does not count as carried
BENCH_EXPERIMENT = "selfguided-serving-bench"
# Tags on the registered model version (the compare report reads the first two).
TAG_ANSWERS_PER_GPU_HOUR = "serving.answers_per_gpu_hour"
TAG_BENCH_RUN_ID = "serving.bench_run_id"
TAG_BENCH_URL = "serving.bench_url"


def gpu_usd_per_1000(gpu_hour_usd: float, answers_per_s: float) -> float | None:
    """USD per 1,000 answers of a GPU at `gpu_hour_usd` per hour serving `answers_per_s`."""
    if gpu_hour_usd <= 0 or answers_per_s <= 0:
        return None
    return gpu_hour_usd / 3600 / answers_per_s * 1000


def capacity(results: Sequence[RateResult], max_error_share: float = MAX_ERROR_SHARE) -> RateResult | None:
    """The rate with the most answers per second among those that failed at most `max_error_share`
    of their requests (None when none did)."""
    carried = [r for r in results if r.requests and r.answers and r.error_count <= max_error_share * r.requests]
    return max(carried, key=lambda r: r.throughput, default=None)


@dataclass(frozen=True)
class ApiPrice:
    model: str
    input_usd_per_1m: float
    output_usd_per_1m: float
    source: str = PRICES_SOURCE
    as_of: str = PRICES_AS_OF

    @classmethod
    def of(cls, model: str) -> "ApiPrice | None":
        """The list price of `model` (exact name or longest prefix), None when it has none."""
        per_token = LLMConfig(model=model).price_per_token()
        return None if per_token is None else cls(model, per_token[0] * 1e6, per_token[1] * 1e6)

    def usd_per_answer(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.input_usd_per_1m + completion_tokens * self.output_usd_per_1m) / 1e6


@dataclass(frozen=True)
class BreakEven:
    teacher: ApiPrice
    prompt_tokens: float
    completion_tokens: float
    api_usd_per_1000: float
    rate: float  # requests/s above which the GPU is cheaper per answer
    capacity: float | None  # the server's measured answers/s (None: no rate was carried)

    @property
    def reachable(self) -> bool:
        return self.capacity is not None and self.rate <= self.capacity

    def line(self) -> str:
        head = (f"Break-even against {self.teacher.model} (${self.teacher.input_usd_per_1m:g} in / "
                f"${self.teacher.output_usd_per_1m:g} out per 1M tokens; {self.teacher.source}, as of "
                f"{self.teacher.as_of}: check the current price) at {self.prompt_tokens:.0f} prompt + "
                f"{self.completion_tokens:.0f} completion tokens per answer: API ${self.api_usd_per_1000:.4f} "
                f"per 1,000 answers; the GPU is cheaper above {self.rate:.3g} req/s ({self.rate * 3600:,.0f} "
                "answers/hour)")
        if self.capacity is None:
            return head + ", but no rate was carried without errors here."
        if self.reachable:
            return head + f", which this server carries (measured capacity {self.capacity:.3g} answers/s)."
        return head + (f", above this server's measured capacity ({self.capacity:.3g} answers/s): one such GPU "
                       "never costs less per answer than the API.")


def break_even(results: Sequence[RateResult], gpu_hour_usd: float, teacher_model: str) -> BreakEven | None:
    """The break-even request rate against `teacher_model`'s API price, at the tokens per answer of
    the carried rates (None without a price, a GPU price or any answer)."""
    price = ApiPrice.of(teacher_model)
    answered = [r for r in results if r.answers and r.mean_prompt_tokens is not None]
    if price is None or gpu_hour_usd <= 0 or not answered:
        return None
    n = sum(r.answers for r in answered)
    prompt = sum(r.mean_prompt_tokens * r.answers for r in answered) / n
    completion = sum((r.mean_completion_tokens or 0.0) * r.answers for r in answered) / n
    per_answer = price.usd_per_answer(prompt, completion)
    if per_answer <= 0:
        return None
    best = capacity(results)
    return BreakEven(price, prompt, completion, per_answer * 1000, gpu_hour_usd / 3600 / per_answer,
                     best.throughput if best else None)


def resolve_version(tracking_uri: str, registered_model: str, version: str) -> str:
    """The version number `version` (a number or an alias) names; MLflow's error when none."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = (client.get_model_version(registered_model, version) if version.isdigit()
             else client.get_model_version_by_alias(registered_model, version))
    return str(found.version)


def record_benchmark(tracking_uri: str, results: Sequence[RateResult], *, url: str, model: str,
                     registered_model: str = "", model_version: str = "", gpu_hour_usd: float = 0.0,
                     experiment: str = BENCH_EXPERIMENT, extra: dict[str, Any] | None = None) -> tuple[str, str]:
    """Log the sweep as an MLflow run (params, metrics `rate_<r>/<figure>`, the JSON) and, with a
    registered model version (a number or an alias), tag that version with the measured capacity and
    the run. Returns (run id, the version tagged or "")."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from selfguided.components.registry.runs import ensure_experiment

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if registered_model and model_version:  # fails before logging when absent
        model_version = resolve_version(tracking_uri, registered_model, model_version)
    experiment_id = ensure_experiment(client, experiment, tracking_uri)
    run = client.create_run(experiment_id, run_name=f"bench-serve {model}",
                            tags={"url": url, "served_model": model, "registered_model": registered_model,
                                  "model_version": model_version})
    best = capacity(results)
    metrics = []
    for r in results:
        figures = {"throughput": r.throughput, "output_tokens_per_s": r.output_tokens_per_s,
                   "errors": float(r.error_count), "requests": float(r.requests),
                   **{f"{k}_s": v for k, v in r.latency_s.items() if v is not None}}
        cost = gpu_usd_per_1000(gpu_hour_usd, r.throughput)
        if cost is not None:
            figures["usd_per_1000_answers"] = cost
        metrics += [Metric(f"rate_{r.offered_rate:g}/{k}", float(v), 0, 0) for k, v in figures.items()]
    if best is not None:
        metrics.append(Metric("capacity_answers_per_s", best.throughput, 0, 0))
    params = [Param("rates", ",".join(f"{r.offered_rate:g}" for r in results)),
              Param("gpu_hour_usd", f"{gpu_hour_usd:g}")]
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=[RunTag("capacity_rate", str(
        best.offered_rate if best else ""))])
    client.log_dict(run.info.run_id, {"results": [r.to_dict() for r in results], **(extra or {})},
                    "bench_serve.json")
    client.set_terminated(run.info.run_id)
    if registered_model and model_version and best is not None:
        for key, value in ((TAG_ANSWERS_PER_GPU_HOUR, f"{best.throughput * 3600:.1f}"),
                           (TAG_BENCH_RUN_ID, run.info.run_id), (TAG_BENCH_URL, url)):
            client.set_model_version_tag(registered_model, model_version, key, value)
        return run.info.run_id, model_version
    return run.info.run_id, ""


def measured_answers_per_gpu_hour(tracking_uri: str, registered_model: str, version: str) -> tuple[float, str] | None:
    """(answers per GPU hour, bench run id) tagged on a model version by `record_benchmark`, or None."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    tags = client.get_model_version(registered_model, version).tags
    try:
        value = float(tags[TAG_ANSWERS_PER_GPU_HOUR])
    except (KeyError, ValueError):
        return None
    return (value, tags.get(TAG_BENCH_RUN_ID, "")) if value > 0 else None
