"""A jury of judges: every answer graded by every judge, the jury's score their mean (or median).

`--judges gpt-4o,claude-sonnet@http://host/v1,qwen@http://vllm:8000/v1`: each entry is a model on
the run's LLM endpoint (`name`) or on an OpenAI-compatible endpoint of its own (`name@url`). A
judge on its own endpoint gets its own key, never OPENAI_API_KEY (that key is for the run's
endpoint): the environment variable SELFGUIDED_JUDGE_KEY_<NAME> (NAME upper-cased, other
characters as `_`), else the file <NAME> in llm/config.OWN_ENDPOINT_KEYS_DIR (the Secret `selfguided-judge-keys`
mounted there in a cluster, one key per judge), else a placeholder (vLLM and `selfguided serve`
take any key). Keys are never pipeline parameters.

Every judge grades through the client layer (its cache, retries and cost), or is the offline
stand-in. A judgment row keeps the jury's figures in `scores` and `score` (what compare, the gate
and the report use) and every judge's own in `judges`: one entry per judge and repeat,
`{"judge": JudgeIdentity json, "scores": {criteria..., "overall"} | null, "rationale", "error",
"repeat"}`, plus `"jury": {"size", "answered", "aggregate"}`. Weights (`a=0.8,b=0.2`, learned from the editors
by jury_weights.learn_weights) make the mean a weighted mean. A jury of one (the default, and the
offline stand-in) is its judge: the same `scores`, `score` and identity as a single judge.

The jury is a judge itself (`Jury`, judge.Judge): its identity, whether it measures quality, its
disclaimer and its cost come from its members. `judge_named` makes the judge a run names,
`judge_of` the judge a judgments file or summary records; nothing else looks at a judge's name.

Faults: a judge that still has no verdict for an item after the client's retries leaves the item
to the judges that answered only if at least `min_judges` did (0 = all of them); otherwise the
item fails with an error naming the missing judges. The jury's usage counts, per judge, the
items it lacks, and the reports name them: nothing is averaged over a partial jury silently.

Judge noise (`repeats` K > 1): a stratified sample (per category, the same questions in every
row) is graded K times by every judge, each repeat a real call (the repeat index is part of the
cache key) at the judge's temperature (`temperature`; at 0 a repeat measures only the endpoint's
own nondeterminism). A judge's score of an item is the mean of its repeats.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from selfguided.components.judging.answers import answer_turns, check_answers
from selfguided.components.judging.judge import Judge
from selfguided.components.judging.jury_weights import check_weights, format_weights, parse_weights
from selfguided.components.judging.llm_judge import LLMJudge
from selfguided.components.judging.offline import OfflineJudge
from selfguided.components.judging.rules import JudgeIdentity, judged_ok, judgment_row
from selfguided.components.llm.config import own_endpoint_key, parse_model_entry
from selfguided.components.model.prompting import CRITERIA

AGGREGATES = ("mean", "median")
REPEAT_SAMPLE_PER_CATEGORY = 10
"""Questions per category in the repeated sample (first by a hash of their id: the same in every row)."""


@dataclass(frozen=True)
class JudgeSpec:
    """One juror as the run names it: a model, and its own endpoint (None: the run's endpoint)."""

    model: str
    base_url: str | None = None

    def api_key(self) -> str:
        """Its own endpoint's key (llm/config.own_endpoint_key: env var, the mounted Secret's file)."""
        return own_endpoint_key(self.model)


def parse_judges(judges: str | list[str], default: str = "") -> list[JudgeSpec]:
    """The jurors of `--judges a,b@url,...` (or a list of entries); "" or [] = [`default`].

    A judge named twice is an error (it would count twice in the jury's score).
    """
    entries = [e.strip() for e in (judges.split(",") if isinstance(judges, str) else judges) if e.strip()]
    if not entries:
        entries = [default] if default else []
    if not entries:
        raise ValueError("no judge: name at least one (--judges gpt-4o, or name@http://host:port/v1)")
    specs = []
    for entry in entries:
        try:
            specs.append(JudgeSpec(*parse_model_entry(entry)))
        except ValueError as exc:
            raise ValueError(f"judge {exc}") from None
    names = [s.model for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"judge(s) named twice: {', '.join(twice)}; each judge counts once in the jury")
    return specs


@dataclass
class JuryConfig:
    """How a jury grades; the defaults are one judge graded once (today's single judge)."""

    judges: list[JudgeSpec]
    """The jurors (see `parse_judges`)."""
    aggregate: str = "mean"
    """`mean` or `median` of the judges' scores: the jury's score, per criterion and overall."""
    weights: dict[str, float] = field(default_factory=dict)
    """judge -> its weight in the mean (normalised; 0 excludes it); {} = equal weights."""
    min_judges: int = 0
    """Judges that must have answered an item for the jury to score it; 0 = every judge."""
    repeats: int = 1
    """Gradings of the repeated sample by every judge (judge noise); 1 = no repeats."""
    temperature: float = 0.0
    """Sampling temperature of the judges (a repeat at 0 measures only the endpoint's nondeterminism)."""
    concurrency: int = 8
    """Requests in flight per judge."""
    cache: str = ""
    """The LLM answer cache ("" = none)."""
    base_url: str = ""
    """The run's LLM endpoint ("" = OPENAI_BASE_URL or OpenAI), for judges without their own."""
    template: Any = None
    """An LLMConfig whose settings (attempts, timeouts, prices, ...) every LLM judge takes, with its
    own model, endpoint and key; None: the pipeline step's defaults (llm_step_config)."""

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"jury aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        self.weights = parse_weights(self.weights)
        check_weights(self.weights, [j.model for j in self.judges])
        if self.weights and self.aggregate != "mean":
            raise ValueError("jury weights apply to the mean: use jury aggregate `mean` with weights")
        if self.repeats < 1:
            raise ValueError(f"judge repeats must be >= 1, got {self.repeats}")
        if not 0 <= self.min_judges <= len(self.judges):
            raise ValueError(f"min_judges must be between 0 (all) and the {len(self.judges)} judges, got {self.min_judges}")

    @property
    def needed(self) -> int:
        """Judges an item needs to be scored."""
        return self.min_judges or len(self.judges)


@dataclass
class JudgeUsage:
    """What one judge did in a jury run (its part of the report's fault and cost tables)."""

    judge: JudgeIdentity
    """Who it is."""
    endpoint: str = ""
    """Its own endpoint, or "" for the run's."""
    items: int = 0
    """Answer turns it was asked to grade (first asking)."""
    missing: int = 0
    """Of those, turns it has no verdict for after every retry."""
    repeated_items: int = 0
    """Turns of the repeated sample (graded `repeats` times)."""
    cost_usd: float = 0.0
    """Its LLM cost in this run (repeats included; cached answers are free)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Its client usage, `llm/judge/<field>`."""
    errors: list[str] = field(default_factory=list)
    """Up to three of its error messages."""

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "judge": self.judge.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JudgeUsage:
        return cls(**{**data, "judge": JudgeIdentity.from_json(data["judge"])})

    def as_judge(self) -> Judge:
        return judge_of(self.judge, self.endpoint)


@dataclass
class JuryUsage:
    """What a jury did in one row's judging: who it is, how it combined, and each judge's usage.
    Its JSON form is the judge summary's `jury` field (`to_json`/`from_json`)."""

    identity: JudgeIdentity
    """The jury's identity (`jury_identity`): its judge's for a jury of one."""
    aggregate: str
    min_judges: int
    """Judges an item needed (the resolved `JuryConfig.needed`)."""
    repeats: int
    temperature: float
    judges: list[JudgeUsage]
    partial_items: int = 0
    """Items scored by fewer than all judges."""
    weights: dict[str, float] = field(default_factory=dict)  # the jury's weights ({} = equal)

    @property
    def size(self) -> int:
        return len(self.judges)

    def as_judge(self) -> Jury:
        """The jury as a judge (its members as they were recorded)."""
        return Jury([u.as_judge() for u in self.judges], self.aggregate, self.weights)

    def cost_usd(self) -> float:
        """The whole jury's LLM cost in the row."""
        return round(sum(u.cost_usd for u in self.judges), 6)

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity.to_json(), "aggregate": self.aggregate, "min_judges": self.min_judges,
                "repeats": self.repeats, "temperature": self.temperature,
                "judges": [u.to_json() for u in self.judges], "partial_items": self.partial_items,
                **({"weights": self.weights} if self.weights else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JuryUsage:
        return cls(JudgeIdentity.from_json(data["identity"]), str(data["aggregate"]), int(data["min_judges"]),
                   int(data["repeats"]), float(data["temperature"]),
                   [JudgeUsage.from_json(u) for u in data["judges"]], int(data.get("partial_items", 0)),
                   dict(data.get("weights") or {}))


def judge_named(spec: JudgeSpec | str, config: Any = None) -> Judge:
    """The judge a run names (`name` or `name@url`): the offline stand-in, or an LLM judge grading
    through `config` (an LLMConfig; None: one that only says who it is)."""
    spec = spec if isinstance(spec, JudgeSpec) else parse_judges(spec)[0]
    return OfflineJudge.of(spec.model) or LLMJudge.named(spec.model, spec.base_url or "", config)


def judge_of(identity: JudgeIdentity, endpoint: str = "") -> Judge:
    """The judge behind an identity as judgments and summaries record it (for how it is shown)."""
    return OfflineJudge.of(identity) or LLMJudge(identity, endpoint)


class Jury(Judge):
    """Judges graded together (judge.Judge): a jury of one is its judge; a bigger one is named
    `jury-<aggregate>(a,b,c)`, measures quality only if every member does, and carries every
    member's disclaimer. Its verdict on a trace is the CODE source `selfguided-jury`. It grades
    through `judge_with_jury` (its members, repeats and quorum are a JuryConfig's), which records it
    as a JuryUsage; `JuryUsage.as_judge` gives it back."""

    def __init__(self, members: list[Judge], aggregate: str = "mean", weights: dict[str, float] | None = None) -> None:
        if not members:
            raise ValueError("a jury needs at least one judge")
        self.members, self.aggregate = list(members), aggregate
        self.identity = jury_identity([m.identity for m in members], aggregate, weights)
        self.endpoint = members[0].endpoint if len(members) == 1 else ""
        self.measures_quality = all(m.measures_quality for m in members)
        self.calls_llm = any(m.calls_llm for m in members)
        self.disclaimer = " ".join(dict.fromkeys(m.disclaimer for m in members if m.disclaimer))

    @property
    def mlflow_source(self) -> tuple[str, str]:
        return self.members[0].mlflow_source if len(self.members) == 1 else ("CODE", JURY_SOURCE)


JURY_SOURCE = "selfguided-jury"
"""The source id of a jury's own score (`jury_overall`) on a trace."""


def jury_identity(members: list[JudgeIdentity], aggregate: str = "mean", weights: dict[str, float] | None = None
                  ) -> JudgeIdentity:
    """The jury's own identity: its judge for a jury of one; otherwise `jury-<aggregate>(a,b,c)`
    (sorted; weighted: `jury-mean(a=0.8,b=0.2)`) with the members' common prompt, so that only rows
    graded by the same jury compare."""
    if len(members) == 1:
        return members[0]
    prompts = sorted({(m.prompt, m.prompt_version) for m in members})
    prompt, version = prompts[0] if len(prompts) == 1 else ("+".join(sorted({m.prompt_id for m in members})), "0")
    names = format_weights(weights) if weights else ",".join(sorted(m.model for m in members))
    return JudgeIdentity(f"jury-{aggregate}({names})", prompt, version, "single")


def repeat_sample(questions: list[dict[str, Any]], per_category: int = REPEAT_SAMPLE_PER_CATEGORY) -> set[Any]:
    """Question ids of the repeated sample: per category the `per_category` first by a hash of
    their id (stratified, deterministic, the same in every row)."""
    by_category: dict[str, list[Any]] = defaultdict(list)
    for q in questions:
        by_category[q["category"]].append(q["question_id"])
    rank = lambda qid: hashlib.sha256(str(qid).encode()).hexdigest()  # noqa: E731
    return {qid for ids in by_category.values() for qid in sorted(ids, key=rank)[:per_category]}


def _member(spec: JudgeSpec, jury: JuryConfig) -> Judge:
    """One juror ready to grade: the offline stand-in, or an LLM judge with its endpoint configuration."""
    if (offline := OfflineJudge.of(spec.model)) is not None:
        return offline
    from selfguided.components.llm.config import LLMConfig, llm_step_config

    if jury.template is not None:
        own = {"base_url": spec.base_url, "api_key": spec.api_key()} if spec.base_url else {}
        config = replace(jury.template, model=spec.model, temperature=jury.temperature,
                         cache=jury.cache or jury.template.cache, **own)
    elif spec.base_url:
        config = LLMConfig(model=spec.model, base_url=spec.base_url, api_key=spec.api_key(),
                           concurrency=jury.concurrency, cache=jury.cache or None, temperature=jury.temperature)
    else:
        config = llm_step_config("judge", spec.model, base_url=jury.base_url, concurrency=jury.concurrency,
                                 cache=jury.cache)
        config.temperature = jury.temperature
    return judge_named(spec, config)


def _entry(identity: JudgeIdentity, row: dict[str, Any], repeat: int) -> dict[str, Any]:
    ok = judged_ok(row)
    return {"judge": identity.to_json(), "scores": {**row["scores"], "overall": row["score"]} if ok else None,
            "rationale": row.get("judgment", ""), "error": None if ok else (row.get("error") or "no verdict"),
            "repeat": repeat}


def _combine(values: list[float], aggregate: str, weights: list[float] | None = None) -> float:
    if weights:
        return round(sum(v * w for v, w in zip(values, weights)) / sum(weights), 3)
    return round(statistics.median(values) if aggregate == "median" else statistics.fmean(values), 3)


def judge_scores(entries: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each judge's scores of one item (criteria and overall; `entries`: a judgment row's `judges`):
    the mean of its answered repeats; judges without an answered repeat are absent. The one owner of
    "a judge's score of an item" (the jury's score, the agreement statistics)."""
    by_judge: dict[str, list[dict[str, float]]] = defaultdict(list)
    for entry in entries:
        if entry.get("scores") is not None:
            by_judge[entry["judge"]["model"]].append(entry["scores"])
    return {judge: {name: round(statistics.fmean(s[name] for s in draws), 3) for name in (*CRITERIA, "overall")
                    if all(name in s for s in draws)} for judge, draws in by_judge.items()}


def jury_row(base: dict[str, Any], entries: list[dict[str, Any]], jury: JuryConfig, members: list[str],
             identity: JudgeIdentity) -> dict[str, Any]:
    """The judgment row of one item from its judges' entries: the jury's scores (or the failure
    of a partial jury), every entry kept under `judges`."""
    per_judge = judge_scores(entries)
    answered = [m for m in members if m in per_judge]
    row = {**base, "judge": identity.to_json(), "judges": entries,
           "jury": {"size": len(members), "answered": len(answered), "aggregate": jury.aggregate}}
    if len(members) == 1 and len(entries) == 1:  # a jury of one graded once is its judge: its row, unchanged
        return row
    row["judgment"] = "\n\n".join(f"[{e['judge']['model']}#{e['repeat']}] {e['rationale']}" for e in entries
                                  if e["scores"] is not None)
    weights = [jury.weights[m] for m in answered] if jury.weights else None
    if len(answered) < jury.needed or not answered or (weights is not None and not sum(weights)):
        missing = [m for m in members if m not in per_judge]
        reasons = "; ".join(f"{m}: {next((e['error'] for e in entries if e['judge']['model'] == m and e['error']), 'no verdict')}"
                            for m in missing)
        return {**row, "scores": None, "score": -1.0,
                "error": f"partial jury: {len(answered)} of {len(members)} judges answered, {jury.needed} needed"
                         + (", none with a weight above 0" if weights is not None and not sum(weights) else "")
                         + f" (missing {reasons})"}
    scores = {c: _combine([per_judge[m][c] for m in answered], jury.aggregate, weights) for c in CRITERIA}
    return {**row, "scores": scores, "score": _combine([per_judge[m]["overall"] for m in answered], jury.aggregate, weights),
            "error": None}


def judge_with_jury(questions: list[dict[str, Any]], answers: list[dict[str, Any]], jury: JuryConfig
                    ) -> tuple[list[dict[str, Any]], JuryUsage]:
    """Grade every answer turn with every judge (and the repeated sample `repeats` times); returns
    the jury's judgment rows (one per question and turn, in answer order) and the jury's usage."""
    by_id = {q["question_id"]: q for q in questions}
    check_answers(answers, by_id)
    sample = repeat_sample(questions) if jury.repeats > 1 else set()
    repeated = {(a["question_id"], k + 1) for a in answers if a["question_id"] in sample
                for k in range(len(answer_turns(a)))}
    entries: dict[tuple[Any, Any, int], list[dict[str, Any]]] = defaultdict(list)
    bases: dict[tuple[Any, Any, int], dict[str, Any]] = {}
    identities, usages = [], []
    for spec in jury.judges:
        judge = _member(spec, jury)
        identity = judge.identity
        rows, metrics = judge.grade(questions, answers)
        usage = JudgeUsage(identity, spec.base_url or "", items=len(rows),
                           missing=sum(not judged_ok(r) for r in rows), repeated_items=len(repeated),
                           metrics=dict(metrics))
        usage.errors = sorted({str(r.get("error")) for r in rows if not judged_ok(r)})[:3]
        for row in rows:
            key = (row["model"], row["question_id"], row["turn"])
            bases.setdefault(key, row)
            entries[key].append(_entry(identity, row, 0))
        for repeat in range(1, jury.repeats):
            again, more = judge.grade(questions, answers, repeat=repeat, items=repeated)
            for name, value in more.items():  # counts add up; a rate or the pool size is a level, not a count
                level = name.endswith(("_rate", "/concurrency", "/pair_consistency"))
                usage.metrics[name] = value if level else usage.metrics.get(name, 0.0) + value
            for row in again:
                entries[(row["model"], row["question_id"], row["turn"])].append(_entry(identity, row, repeat))
        usage.cost_usd = judge.cost_usd(usage.metrics)
        identities.append(identity)
        usages.append(usage)
    identity = jury_identity(identities, jury.aggregate, jury.weights)
    members = [i.model for i in identities]
    judgments = [jury_row(bases[key], entries[key], jury, members, identity) for key in bases]
    judgments += _unanswered_turns(questions, answers, identity, jury, members)
    return judgments, JuryUsage(
        identity, jury.aggregate, jury.needed, jury.repeats, jury.temperature, usages,
        partial_items=sum(1 for j in judgments if "jury" in j and 0 < j["jury"]["answered"] < len(members)),
        weights=dict(jury.weights))


def _unanswered_turns(questions: list[dict[str, Any]], answers: list[dict[str, Any]], identity: JudgeIdentity,
                      jury: JuryConfig, members: list[str]) -> list[dict[str, Any]]:
    """A failed judgment for every turn a row did not answer (an API teacher that failed): counted,
    never scored."""
    by_id = {q["question_id"]: q for q in questions}
    rows = []
    for answer in answers:
        question = by_id[answer["question_id"]]
        for turn in range(len(answer_turns(answer)) + 1, len(question["turns"]) + 1):
            row = judgment_row(
                question=question, turn=turn, answer="", model=answer.get("model_id", "unknown"), judge=identity,
                user_prompt="", judgment="", ratings=None,
                error=f"not answered: {answer.get('error') or 'the row gave no answer to this turn'}")
            rows.append({**row, "judges": [], "jury": {"size": len(members), "answered": 0, "aggregate": jury.aggregate}})
    return rows
