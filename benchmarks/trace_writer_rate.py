"""How many production traces per second the trace writer gets into an MLflow store
(components/registry/production_log.py), per batch size: N served answers (with personal data to
redact, no client category, so the classifier runs) are offered at once to a ProductionLogger, and
the clock runs until the last one is written. The writer's own CPU cost (redaction, classification,
building the span) is timed apart, without the store.

    python benchmarks/trace_writer_rate.py --n 500                                  # a temporary SQLite store
    python benchmarks/trace_writer_rate.py --n 500 --tracking-uri http://127.0.0.1:5000  # an MLflow server

Beyond the rate the store takes, answers wait in the queue (`selfguided serve --trace-queue-size`),
then are dropped and counted: the sample rate is the setting to lower. Prints one RESULT line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from selfguided.components.data.category_classifier import sample_classifier
from selfguided.components.data.redact import Redactor
from selfguided.components.registry.production_log import (
    MlflowTraceSink, ProductionLogger, ServedAnswer, ServingLabels, prepare)

LABELS = ServingLabels("korean-writing-assistant", "1", "champion")


def answers(n: int) -> list[ServedAnswer]:
    return [ServedAnswer([{"role": "user", "content": f"봄에 대한 시를 써 주세요. 연락처 010-1234-5678 #{i}"}],
                         "봄바람 " * 60, time.time_ns(), 120.0, 24, 120) for i in range(n)]


def writer_cpu_ms(sink: MlflowTraceSink, n: int) -> float:
    """Milliseconds of the writer thread's own work per trace (no store call)."""
    sink._setup()
    classifier, redactor = sample_classifier(), Redactor()
    started = time.perf_counter()
    for answer in answers(n):
        sink._span(prepare(answer, LABELS, redactor, classifier))
    return (time.perf_counter() - started) * 1000 / n


def rate(tracking_uri: str, n: int, batch_size: int) -> tuple[float, dict]:
    logger = ProductionLogger(MlflowTraceSink(tracking_uri, f"trace-writer-rate-{time.time_ns()}"), LABELS,
                              batch_size=batch_size, queue_size=n + 1).start()
    logger.offer(answers(1)[0])  # the experiment created, the classifier trained: not timed
    while logger.stats()["pending"]:
        time.sleep(0.01)
    started = time.perf_counter()
    for answer in answers(n):
        logger.offer(answer)
    while logger.stats()["pending"]:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    return n / elapsed, logger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--n", type=int, default=500, help="answers per batch size (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="1,50", help="comma-separated (default: %(default)s)")
    parser.add_argument("--tracking-uri", help="the store (default: a temporary SQLite store)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trace-writer-") as scratch:
        uri = args.tracking_uri or f"sqlite:///{Path(scratch) / 'mlflow.db'}"
        cpu = writer_cpu_ms(MlflowTraceSink(uri, "trace-writer-cpu"), min(args.n, 200))
        results = []
        for batch in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
            per_s, stats = rate(uri, args.n, batch)
            print(f"batch size {batch}: {args.n} traces at {per_s:.0f}/s (written {stats['written'] - 1}, "
                  f"failed {stats['failed']})", flush=True)
            results.append(f"batch{batch}={per_s:.0f}/s")
    store = "server" if uri.startswith("http") else "sqlite"
    print(f"RESULT trace_writer store={store} n={args.n} writer_cpu={cpu:.2f}ms/trace {' '.join(results)}")


if __name__ == "__main__":
    main()
