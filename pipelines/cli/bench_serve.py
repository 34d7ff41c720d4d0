"""`selfguided bench-serve URL`: throughput, latency and cost of an OpenAI-compatible endpoint under
an open-loop load (components/serving/loadtest.py), priced against the teacher API
(components/serving/serving_cost.py), optionally recorded in MLflow on the model version served.

example:
  selfguided serve --port 8000 &
  selfguided bench-serve http://127.0.0.1:8000 --rates 0.5,1,2 --duration 60 --gpu-hour-usd 2.5 \\
      --tracking-uri sqlite:///.selfguided/mlflow.db --model-version champion
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfguided.pipelines.options import add_tracking_uri


class _BadInput(ValueError):
    pass


def _rates(value: str) -> list[float]:
    try:
        rates = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise _BadInput(f"--rates {value!r}: give request rates per second, comma-separated, e.g. 0.5,1,2") from None
    if not rates or any(r <= 0 for r in rates):
        raise _BadInput(f"--rates {value!r}: every rate must be a number > 0, e.g. 0.5,1,2")
    return rates


def _check(args: argparse.Namespace) -> list[float]:
    rates = _rates(args.rates)
    if args.duration <= 0 or args.max_requests < 1 or args.timeout <= 0:
        raise _BadInput("--duration and --timeout must be > 0 and --max-requests at least 1")
    if args.gpu_hour_usd < 0:
        raise _BadInput("--gpu-hour-usd must be >= 0")
    if args.questions and not Path(args.questions).is_file():
        raise _BadInput(f"--questions {args.questions}: file not found")
    return rates


def run_bench_serve(args: argparse.Namespace) -> int:
    from selfguided.components.data.inputs import SAMPLE_QUESTIONS, sample_path
    from selfguided.components.data.jsonl import DataError
    from selfguided.components.data.questions import load_questions
    from selfguided.components.serving import loadtest, serving_cost

    try:
        rates = _check(args)
        base = loadtest.api_base(args.url)
        questions = load_questions(args.questions or sample_path(SAMPLE_QUESTIONS))
        prompts = loadtest.prompts_from_questions(questions, seed=args.random_seed)
        served = loadtest.served_models(base, timeout_s=min(args.timeout, 10.0))
        model = args.served_model_name or (served[0] if served else "")
        if not model:
            raise _BadInput(f"{base}/models lists no model: name the served model with --served-model-name")
    except (_BadInput, DataError, loadtest.LoadTestError) as exc:
        print(f"bench-serve: {exc}", file=sys.stderr)
        return 2
    if args.model_version and _mlflow_failure(args, lambda uri, name: serving_cost.resolve_version(
            uri, name, args.model_version)):  # before the sweep, not after it
        return 2
    print(f"bench-serve: {base}, model {model}; {len(prompts)} prompts; rates {','.join(f'{r:g}' for r in rates)} "
          f"req/s, each for {args.duration:g} s or {args.max_requests} requests", file=sys.stderr, flush=True)
    results = loadtest.run_sweep(
        base, model, prompts, rates, duration_s=args.duration, max_requests=args.max_requests,
        timeout_s=args.timeout, max_tokens=args.max_tokens, seed=args.random_seed,
        progress=lambda r: print(loadtest.progress_line(r), file=sys.stderr, flush=True))
    costs = [serving_cost.gpu_usd_per_1000(args.gpu_hour_usd, r.throughput) for r in results] \
        if args.gpu_hour_usd > 0 else None
    print(loadtest.results_table(results, costs))
    best = serving_cost.capacity(results)
    lines = [f"Capacity (most answers/s with at most {serving_cost.MAX_ERROR_SHARE:.0%} errors): "
             + (f"{best.throughput:.3g} answers/s at {best.offered_rate:g} req/s offered "
                f"({best.throughput * 3600:,.0f} answers per GPU hour)" if best else "none: every rate failed")]
    even = None
    if args.gpu_hour_usd > 0:
        lines.append(f"USD per 1,000 answers = gpu_hour_usd / 3600 / answers_per_s * 1000, at "
                     f"${args.gpu_hour_usd:g}/GPU-hour.")
        even = serving_cost.break_even(results, args.gpu_hour_usd, args.teacher_model)
        lines.append(even.line() if even else f"No break-even: no list price for {args.teacher_model!r} "
                     "(llm/config.DEFAULT_PRICES) or no answer.")
    print("\n".join(lines))
    payload = {"url": base, "model": model, "rates": rates, "duration_s": args.duration,
               "max_requests": args.max_requests, "gpu_hour_usd": args.gpu_hour_usd,
               "results": [r.to_dict() for r in results], "usd_per_1000_answers": costs,
               "capacity_answers_per_s": best.throughput if best else None,
               "break_even": None if even is None else {
                   "teacher_model": even.teacher.model, "input_usd_per_1m": even.teacher.input_usd_per_1m,
                   "output_usd_per_1m": even.teacher.output_usd_per_1m, "price_source": even.teacher.source,
                   "price_as_of": even.teacher.as_of, "prompt_tokens": even.prompt_tokens,
                   "completion_tokens": even.completion_tokens, "api_usd_per_1000": even.api_usd_per_1000,
                   "rate": even.rate, "reachable": even.reachable}}
    if args.json:
        loadtest.write_json(args.json, payload)
    if args.tracking_uri or args.registered_model or args.model_version:
        return _record(args, results, base, model, payload)
    return 0


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(tracking URI, registered model) the results are logged to."""
    from selfguided.components.registry.names import REGISTERED_MODEL_NAME
    from selfguided.pipelines.workdir import default_tracking_uri

    return (args.tracking_uri or default_tracking_uri(),
            args.registered_model or (REGISTERED_MODEL_NAME if args.model_version else ""))


def _mlflow_failure(args: argparse.Namespace, action):
    """Run `action(tracking_uri, registered_model)`; on any failure say in one line why nothing is
    logged and return True (False when it worked)."""
    tracking_uri, registered = _target(args)
    try:
        action(tracking_uri, registered)
        return False
    except Exception as exc:  # noqa: BLE001 - one line naming the store and MLflow's reason
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"bench-serve: not logged to MLflow at {tracking_uri}: {type(exc).__name__}: {first}", file=sys.stderr)
        return True


def _record(args: argparse.Namespace, results, base: str, model: str, payload: dict) -> int:
    from selfguided.components.serving.serving_cost import record_benchmark

    tracking_uri, registered = _target(args)
    logged: list[tuple[str, str]] = []
    if _mlflow_failure(args, lambda uri, name: logged.append(record_benchmark(
            uri, results, url=base, model=model, registered_model=name, model_version=args.model_version or "",
            gpu_hour_usd=args.gpu_hour_usd, experiment=args.experiment, extra=payload))):
        return 2
    run_id, version = logged[0]
    where = f"; tagged {registered} v{version}" if version else (
        "; no version tagged (no rate was carried)" if args.model_version else "")
    print(f"MLflow: run {run_id} in experiment {args.experiment!r} at {tracking_uri}{where}")
    return 0


def add_bench_serve_parser(sub) -> None:
    from selfguided.components.serving.loadtest import DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT_S
    from selfguided.components.registry.names import REGISTERED_MODEL_NAME
    from selfguided.components.serving.serving_cost import BENCH_EXPERIMENT

    p = sub.add_parser(
        "bench-serve", help="throughput, latency and cost per 1,000 answers of an OpenAI-compatible endpoint under load",
        description="Drive URL's /v1/chat/completions with an open-loop load: Poisson arrivals at each rate of "
        "--rates, sent whether or not earlier answers came back (so a queue shows in the latency), prompts from "
        "the test questions. Per rate: answers/s, p50/p95/p99 latency from the scheduled arrival, output tokens/s, "
        f"errors by kind (at most {DEFAULT_MAX_IN_FLIGHT} requests in flight; more count as errors). With "
        "--gpu-hour-usd: USD per 1,000 answers (gpu_hour_usd / 3600 / answers_per_s * 1000) and the request rate "
        "above which the GPU is cheaper than the teacher API at its list price.",
        epilog="example:" + __doc__.split("example:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", metavar="URL", help="the server, e.g. http://127.0.0.1:8000 (with or without /v1)")
    p.add_argument("--rates", default="0.5,1,2", help="offered request rates per second, in order (default: %(default)s)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per rate (default: %(default)s)")
    p.add_argument("--max-requests", type=int, default=200, help="requests per rate at most (default: %(default)s)")
    p.add_argument("--served-model-name", help="the model name to send, as `selfguided serve --served-model-name` "
                   "(default: the first of GET /v1/models)")
    p.add_argument("--questions", help="FastChat question.jsonl whose first turns are sent (default: the bundled "
                   "test questions)")
    p.add_argument("--max-tokens", type=int, help="max_tokens of every request (default: the server's)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds one request may take before it counts as a timeout (default: %(default)s)")
    p.add_argument("--gpu-hour-usd", type=float, default=0.0,
                   help="price of the server's GPU hour: adds USD per 1,000 answers and the break-even (default: off)")
    p.add_argument("--teacher-model", default="gpt-4o-mini",
                   help="API model to break even against, priced from llm/config.DEFAULT_PRICES (default: %(default)s)")
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON to OUT")
    p.add_argument("--random-seed", type=int, default=0, help="seed of the arrivals and prompt order (default: 0)")
    g = p.add_argument_group("MLflow (any of these logs the results)")
    add_tracking_uri(g)
    g.add_argument("--experiment", default=BENCH_EXPERIMENT, help="MLflow experiment of the run (default: %(default)s)")
    g.add_argument("--registered-model", help="registered model whose version was served (default, with "
                   f"--model-version: {REGISTERED_MODEL_NAME})")
    g.add_argument("--model-version", help="that version, a number or an alias (champion): tagged with "
                   "serving.answers_per_gpu_hour and serving.bench_run_id, which the compare report's cost table uses")
    p.set_defaults(func=run_bench_serve)
