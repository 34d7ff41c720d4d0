"""Screenshots of the MLflow UI for docs/judges.md: a judged answer with its jury's assessments,
the experiment's traces, and the blind review queue. A manual script, not part of `make test`:

    apt-get install -y chromium fonts-nanum     # Debian's chromium, and a Hangul font for it
    .venv/bin/pip install playwright            # drives that chromium (no browser download)
    .venv/bin/python docs/img/make_screenshots.py

It starts a real `mlflow server` on 127.0.0.1 (SQLite in a temporary folder), grades two sample
answers with a jury of three local stand-in judges (tests/llm_server.py: `fair`, `length`, `noisy`)
through the real jury code, logs them as the register step does (registry/traces.log_row_traces,
inside a row run), queues a blind review sample with one editor's grade, and photographs the pages
with headless chromium, through playwright. The PNGs land next to this script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import FakeOpenAI  # noqa: E402  (tests/ holds the stand-in judge server)
from servers import free_port  # noqa: E402


def _wait(url: str, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


_CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync"]


def take_screenshots(uri: str, ids: dict[str, str], profile: Path) -> None:
    """The pages, as an editor sees them (MLflow's onboarding popover and assistant panel closed)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base = f"{uri}/#/experiments"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=_CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000})
        page = browser.new_page()

        def show(url: str) -> None:
            page.goto(url)
            page.wait_for_timeout(5000)
            for control in (page.get_by_text("Got it"),  # the onboarding popover, the assistant panel
                            page.get_by_text("MLflow Assistant").locator("xpath=../..").get_by_role("button", name="Close")):
                if control.count() and control.first.is_visible():
                    try:
                        control.first.click(timeout=3000)
                    except PlaywrightTimeout:  # covered by a drawer: nothing to dismiss in the shot
                        pass
            page.wait_for_timeout(1000)

        def save(name: str) -> None:
            page.screenshot(path=str(HERE / name))
            print(f"wrote {(HERE / name).relative_to(ROOT)}  <- {page.url}")

        show(f"{base}/{ids['experiment_id']}/traces")
        save("traces.png")
        show(f"{base}/{ids['experiment_id']}/traces?traceId={ids['trace_id']}")
        toggle = page.locator('[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]')
        if not toggle.count():  # the assessments pane starts closed
            page.get_by_role("button", name="Assess").first.click(timeout=60000)
        toggle.first.click(timeout=60000)
        page.wait_for_timeout(1500)
        save("judged-trace.png")
        show(f"{base}/{ids['review_experiment_id']}/review-queue")
        page.get_by_text("sample ", exact=False).first.click()
        page.wait_for_timeout(2500)
        save("review-queue.png")
        show(f"{base}/{ids['experiment_id']}/prompts")
        save("prompts.png")
        browser.close()


def _sample_rows() -> tuple[list[dict], list[dict]]:
    """Four seed records of the bundled sample as questions; as a small model's answers, their outputs
    cut short to different lengths, so that the length-rewarding judge parts from the others."""
    seeds = [json.loads(line) for line in (ROOT / "components/sample_data/seed.jsonl").read_text(encoding="utf-8").splitlines()]
    picked = [next(s for s in seeds if s["category"] == c) for c in ("poem", "news", "blog", "novel")]
    questions = [{"question_id": s["id"], "category": s["category"], "turns": [s["instruction"]]} for s in picked]
    answers = [{"question_id": s["id"], "model_id": "tiny-self_guided",
                "choices": [{"index": 0, "turns": [s["output"][:cut]]}]} for s, cut in zip(picked, (40, 400, 90, 200))]
    return questions, answers


def populate(uri: str) -> dict[str, str]:
    """What a run and a review leave in MLflow: judged traces, prompts, a blind sample with a grade."""
    import mlflow
    from mlflow.entities import AssessmentSource

    from selfguided.components.data.jsonl import write_jsonl
    from selfguided.components.judging.jury import JuryConfig, judge_with_jury, parse_judges
    from selfguided.components.registry.review import create_review_sample
    from selfguided.components.registry.traces import log_row_traces

    mlflow.set_tracking_uri(uri)
    work = Path(tempfile.mkdtemp(prefix="selfguided-judgments-"))
    questions, answers = _sample_rows()
    with FakeOpenAI(judge="fair") as fair, FakeOpenAI(judge="length") as length, \
            FakeOpenAI(judge="noisy", seed=3) as noisy:
        judges = f"fair@{fair.base_url},length@{length.base_url},noisy@{noisy.base_url}"
        judgments, _ = judge_with_jury(questions, answers, JuryConfig(judges=parse_judges(judges)))
    write_jsonl(work / "judgments.jsonl", judgments)
    experiment_id = mlflow.MlflowClient(uri).create_experiment("selfguided")
    with mlflow.start_run(experiment_id=experiment_id, run_name="tiny/self_guided",
                          tags={"row": "tiny/self_guided", "row_kind": "trained", "pipeline_run": "docs"}):
        log_row_traces(work / "judgments.jsonl", {"row": "tiny/self_guided"})
    mlflow.flush_trace_async_logging()
    shutil.rmtree(work, ignore_errors=True)
    sample = create_review_sample(uri, "selfguided", 2, seed=0, reviewers=["editor-kim"])
    first_copy = next(iter(sample.copies.values()))
    mlflow.log_feedback(trace_id=first_copy, name="score", value=6, rationale="형식은 맞지만 마지막 연이 약하다.",
                        source=AssessmentSource(source_type="HUMAN", source_id="editor-kim"))
    def spread(trace) -> float:  # how far the jury's judges are apart on this answer
        values = [a.feedback.value for a in trace.info.assessments if a.name == "overall" and a.feedback.value]
        return max(values) - min(values)

    shown = max(mlflow.search_traces(locations=[experiment_id], return_type="list"), key=spread)
    return {"experiment_id": experiment_id, "review_experiment_id": sample.review_experiment_id,
            "trace_id": shown.info.trace_id}


def start_server(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}", "--artifacts-destination", str(work / "artifacts")],
        cwd=work, env=env, stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    _wait(f"{uri}/health", server)
    return server, uri


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="selfguided-shots-"))
    server, uri = start_server(work)
    try:
        ids = populate(uri)
        take_screenshots(uri, ids, work / "chromium")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
