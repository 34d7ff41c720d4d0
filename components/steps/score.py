"""Step 1, score: rate every seed record on helpfulness, relevance, accuracy and level of detail.

A scored record is the seed record plus `scores` (the four criteria, 1-10), `score` (their mean)
and `judge` (model, prompt name and version, rationale). A record that could not be scored keeps
`scores: null` and an `error`; it is never dropped. Records that are not usable seed data at all
go to the rejects file with file, line and reason, and the report counts them.

Before any request, a record whose scoring prompt would be larger than the scorer takes
(`max_input_tokens`, LLMConfig's default; sized with `llm.request.estimate_tokens`, no tokenizer and no
network) joins the rejects with its estimated tokens and characters: it would be a paid request
that fails on the model's context, or a verdict on a truncated text. The offline judge applies
the same budget, so an offline run and an LLM run score the same records.
"""


import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from kfp.dsl.component_decorator import component  # `dsl.component` is absent when a step runs (_KFP_RUNTIME)
from kfp.dsl import Dataset, Markdown, Metrics, Output

from selfguided.components.data.categories import category_order
from selfguided.components.data.inputs import SAMPLE_SEED, fetch_input
from selfguided.components.data.jsonl import write_jsonl
from selfguided.components.data.seed import load_seed
from selfguided.components.judging.jury import judge_named
from selfguided.components.judging.offline import OfflineJudge
from selfguided.components.judging.scoring import rescoring_line, score_records, set_aside_too_long
from selfguided.components.llm.config import DEFAULT_MAX_INPUT_TOKENS
from selfguided.components.model.prompting import CRITERIA
from selfguided.components.images import CPU_IMAGE


def _histogram(values: list[float]) -> str:
    buckets = Counter(min(int(v), 10) for v in values)
    return " ".join(f"{b}:{buckets[b]}" for b in range(1, 11) if buckets[b])


def score_report(
    scored: list[dict[str, Any]], rejects: list[dict[str, Any]], usage: dict[str, float], source: str
) -> str:
    """Markdown: score distribution per category, failures, rejects and LLM usage."""
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in scored:
        by_category[record["category"]].append(record)
    judge_models = sorted({r["judge"]["model"] for r in scored if r.get("judge")})
    lines = [
        "# Score report",
        "",
        f"Source: `{source}`. Judge: {', '.join(judge_models) or 'none'}."
        + "".join(f" ({d})" for d in dict.fromkeys(judge_named(m).disclaimer for m in judge_models) if d),
        "",
        f"Records scored: {sum(r['scores'] is not None for r in scored)}, failed: "
        f"{sum(r['scores'] is None for r in scored)}, rejected as unusable input: {len(rejects)}.",
        "",
        "| category | n | mean | min | max | " + " | ".join(CRITERIA) + " | histogram (score:count) |",
        "|---" * (6 + len(CRITERIA)) + "|",
    ]
    for category in category_order(by_category):
        ok = [r for r in by_category[category] if r["scores"] is not None]
        if not ok:
            lines.append(f"| {category} | 0 | - | - | - | " + " | ".join("-" for _ in CRITERIA) + " | |")
            continue
        means = [r["score"] for r in ok]
        crit = [statistics.fmean(r["scores"][c] for r in ok) for c in CRITERIA]
        lines.append(
            f"| {category} | {len(ok)} | {statistics.fmean(means):.2f} | {min(means):.2f} | {max(means):.2f} | "
            + " | ".join(f"{v:.2f}" for v in crit)
            + f" | {_histogram(means)} |"
        )
    failed = [r for r in scored if r["scores"] is None]
    if failed:
        lines += ["", "## Records that could not be scored", ""]
        lines += [f"- `{r['id']}`: {r.get('error', 'unknown error')}" for r in failed]
    if rejects:
        lines += ["", "## Rejected input lines", ""]
        lines += [f"- {r['path']}:{r['line']}: {r['reason']}" for r in rejects]
    if usage:
        lines += ["", "## LLM usage", ""] + [f"- {k}: {v}" for k, v in sorted(usage.items())]
    return "\n".join(lines) + "\n"


def run_score_step(
    seed_uri: str,
    model: str,
    scored_path: str,
    rejects_path: str,
    report_path: str,
    *,
    concurrency: int = 8,
    cache: str = "",
    base_url: str = "",
    workdir: str = ".",
    max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
) -> dict[str, float]:
    """Load, score and write: the whole step as one call. Returns the metrics for the step.

    Records whose scoring prompt exceeds `max_input_tokens` join the rejects before any request.
    """
    source = fetch_input(seed_uri, SAMPLE_SEED, workdir)
    loaded = load_seed(source)
    records, too_long = set_aside_too_long(loaded, source, max_input_tokens)
    scored, usage = score_records(records, model, concurrency=concurrency, cache=cache, base_url=base_url)
    rejects = [r.to_json() for r in sorted([*loaded.rejects, *too_long], key=lambda r: r.line)]
    write_jsonl(scored_path, scored)
    write_jsonl(rejects_path, rejects)
    Path(report_path).write_text(score_report(scored, rejects, usage, seed_uri or "bundled sample"), encoding="utf-8")
    ok = [r["score"] for r in scored if r["scores"] is not None]
    metrics = {
        "records": float(len(scored)),
        "scored": float(len(ok)),
        "failed": float(len(scored) - len(ok)),
        "rejected": float(len(rejects)),
        "mean_score": round(statistics.fmean(ok), 4) if ok else 0.0,
        **usage,
    }
    print(f"[selfguided] score: {len(ok)}/{len(scored)} records scored by {model}, {len(rejects)} rejected",
          flush=True)
    if OfflineJudge.of(model) is None:  # an LLM scorer: what it was asked now, what earlier runs had scored
        print(f"[selfguided] {rescoring_line(usage, model)}", flush=True)
    return metrics


@component(base_image=CPU_IMAGE, install_kfp_package=False)  # the image has kfp
def score(
    seed_uri: str,
    model: str,
    concurrency: int,
    cache: str,
    base_url: str,
    scored: Output[Dataset],
    rejects: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
):
    """Score every seed record with an LLM judge (or the offline stand-in).

    Args:
        seed_uri: seed JSONL (Alpaca, KoAlpaca or chat `messages` rows); "" = the bundled sample,
            `s3://bucket/key`, or a path on a mounted volume.
        model: judge model name, or `offline-heuristic` for runs without an API.
        concurrency: concurrent LLM requests.
        cache: LLM response cache (directory on a PVC or `s3://bucket/prefix`); "" = no cache.
        base_url: OpenAI-compatible endpoint (Azure, vLLM, ...); "" = OPENAI_BASE_URL or OpenAI.
        scored: scored records (JSONL).
        rejects: input lines set aside as unusable, with file, line and reason (JSONL).
        report: score distribution per category (Markdown).
        metrics: counts, mean score and LLM usage.
    """
    import tempfile

    from selfguided.components.steps.score import run_score_step

    values = run_score_step(seed_uri, model, scored.path, rejects.path, report.path, concurrency=concurrency,
                            cache=cache, base_url=base_url, workdir=tempfile.mkdtemp())
    for name, value in values.items():
        metrics.log_metric(name, value)
