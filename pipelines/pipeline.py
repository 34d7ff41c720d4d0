"""The self-guided pipeline, read top to bottom like the paper's steps.

score -> split -> for each (base model, arm): finetune -> generate -> judge ------\
              -> for each reference row (base untuned, champion):              -> compare -> register -> deploy
                                                   answer -> judge ----------|
              -> every teacher (API models, on the CPU pool): answer -> judge --/

Data flows forward as step outputs: the split writes the training sets and the test questions;
each loop iteration passes its identity (base model, arm, row kind) to its steps as parameters,
and the strategy to finetune, which writes it into the model's manifest. Every row answers the
same questions and is graded by the same judge; compare turns the judgments into evidence and a
decision; register logs every row and moves the aliases as compare decided; deploy points the
serving InferenceService at a newly promoted champion. Register's JSON output is the pipeline's.

The same function runs locally under `kfp.local` (see `pipelines/local.py`) and compiles to KFP
IR YAML for a cluster. Cluster-only settings (GPU node pool, secrets, volumes) are attached with
kfp-kubernetes here; the local runner ignores them.
"""

from typing import List

from kfp import dsl, kubernetes

from selfguided.components.steps.compare import compare
from selfguided.components.data.categories import HELD_OUT_CATEGORIES, REFERENCE_CATEGORIES
from selfguided.components.steps.deploy import deploy
from selfguided.components.steps.finetune import finetune, finetune_placement, plan_runs
from selfguided.components.images import CPU_STEP_RESOURCES
from selfguided.components.cluster import (DEPLOYER, PREDICTOR_S3_ENV, PREDICTOR_S3_SECRET, TRAINJOB_LAUNCHER,
                                           token_secret)
from selfguided.components.steps.preflight import collect_llm_models, preflight
from selfguided.components.model.prompting import ARMS
from selfguided.components.steps.generate import generate
from selfguided.components.steps.judge import judge, judge_rows
from selfguided.components.steps.reference import answer_reference, answer_teachers, plan_references
from selfguided.components.registry.names import EXPERIMENT_NAME, REGISTERED_MODEL_NAME
from selfguided.components.steps.register import register
from selfguided.components.steps.score import score
from selfguided.components.steps.split import split
from selfguided.pipelines import platform

PIPELINE_NAME = "selfguided"


def _sized(task: dsl.PipelineTask, kind: str) -> dsl.PipelineTask:
    """CPU and memory of a CPU task (components/images.py: CPU_STEP_RESOURCES, from the node
    profile), and the image pull policy (every task passes here or through _sized_gpu)."""
    wanted = CPU_STEP_RESOURCES[kind]
    _pulled(task)
    return (task.set_cpu_request(wanted["cpu"]).set_cpu_limit(wanted["cpu"])
            .set_memory_request(wanted["memory"]).set_memory_limit(wanted["memory"]))


def _acting_as(task: dsl.PipelineTask, identity: tuple[str, str]) -> None:
    """Mount the token of a narrow identity (components/cluster.py) into this task alone: every task
    runs as the run's ServiceAccount, which may not launch TrainJobs or change InferenceServices.
    Optional: a cluster without manifests/training or manifests/serving runs the rest of the pipeline."""
    kubernetes.use_secret_as_volume(task, token_secret(identity), mount_path=identity[1], optional=True)


def _pulled(task: dsl.PipelineTask) -> None:
    """How every task's image is pulled: the policy, and the pull secrets when the registry needs them."""
    kubernetes.set_image_pull_policy(task, platform.IMAGE_PULL_POLICY)
    if platform.IMAGE_PULL_SECRETS:
        kubernetes.set_image_pull_secrets(task, platform.IMAGE_PULL_SECRETS)


def _sized_gpu(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """CPU and memory of a GPU task (platform.GPU_STEP_CPU / GPU_STEP_MEMORY, set at compile time:
    resource requests cannot follow a runtime parameter into a loop)."""
    cpu, memory = platform.GPU_STEP_CPU, platform.GPU_STEP_MEMORY
    _pulled(task)
    if platform.KUEUE_QUEUE:  # GPU pods wait for the ClusterQueue's quota
        kubernetes.add_pod_label(task, platform.KUEUE_QUEUE_LABEL, platform.KUEUE_QUEUE)
    return task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)


def _on_gpu_pool(task: dsl.PipelineTask, num_gpus, node_selector=None, tolerations=None) -> dsl.PipelineTask:
    """Request GPUs and schedule on the GPU node pool, with /dev/shm large enough for dataloaders/NCCL.
    `node_selector` / `tolerations`: task outputs that decide the pool at run time (None: the GPU pool)."""
    task.set_accelerator_type(platform.GPU_RESOURCE).set_accelerator_limit(num_gpus)
    if node_selector is None:
        kubernetes.add_node_selector(task, platform.GPU_NODE_SELECTOR_KEY, platform.GPU_NODE_SELECTOR_VALUE)
    else:
        kubernetes.add_node_selector_json(task, node_selector)
    if tolerations is None:
        kubernetes.add_toleration(task, key=platform.GPU_TOLERATION_KEY, operator="Exists",
                                  effect=platform.GPU_TOLERATION_EFFECT)
    else:
        kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=platform.SHM_SIZE)
    return task


def _with_llm_secret(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # optional: a run with the offline judge needs no key; a run with an LLM judge fails in the
    # step with a message naming the Secret.
    kubernetes.use_secret_as_env(task, platform.OPENAI_SECRET_NAME, platform.OPENAI_SECRET_KEYS, optional=True)
    return task


def _with_judge_keys(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # one key per model on an endpoint of its own, a juror or a teacher `name@url`
    # (llm/config.own_endpoint_key reads <mount>/<NAME>); optional, models on the run's endpoint need none.
    kubernetes.use_secret_as_volume(task, platform.JUDGE_KEYS_SECRET_NAME, mount_path=platform.JUDGE_KEYS_MOUNT_PATH,
                                    optional=True)
    return task


def _with_s3_secret(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # for `s3://` inputs and LLM caches; optional, a run on the cache volume needs none.
    kubernetes.use_secret_as_env(task, platform.S3_SECRET_NAME, platform.S3_SECRET_KEYS, optional=True)
    return task


def _with_mlflow_secret(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # the pipeline's MLflow identity (manifests/: Secret selfguided-mlflow-auth); optional, a
    # tracking server without authentication needs none.
    kubernetes.use_secret_as_env(task, platform.MLFLOW_AUTH_SECRET_NAME, platform.MLFLOW_AUTH_SECRET_KEYS,
                                 optional=True)
    return task


def _with_cache_volume(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.mount_pvc(task, pvc_name=platform.CACHE_PVC_NAME, mount_path=platform.CACHE_MOUNT_PATH)
    return task


def _llm_task(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """A CPU task that calls LLMs (judge, teachers): the run's key and the keys of models on endpoints
    of their own, S3 and the cache volume for the LLM cache, retried (the cache makes a retry cheap)."""
    return _sized(_with_s3_secret(_with_llm_secret(_with_judge_keys(_with_cache_volume(task)))), "llm").set_retry(
        num_retries=2, backoff_duration="60s")


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Self-Guided Approach: an LLM scores Korean writing seed data, small Korean LMs are fine-tuned "
    "on unscored vs score-guided data, judged per category, and the best is promoted in MLflow.",
)
def self_guided_pipeline(
    seed_uri: str = "",
    questions_uri: str = "",
    base_models: List[str] = ["EleutherAI/polyglot-ko-1.3b"],
    arms: List[str] = list(ARMS),
    strategy: str = "condition",
    filter_threshold: float = 7.0,
    held_out_categories: List[str] = list(HELD_OUT_CATEGORIES),
    eval_fraction: float = 0.1,
    max_eval_questions: int = 0,
    fresh_questions_uri: str = "",
    reference_answers_uri: str = "",
    reference_categories: List[str] = list(REFERENCE_CATEGORIES),
    score_model: str = "gpt-4o",
    judge_model: str = "gpt-4o",
    judges: str = "",
    judge_repeats: int = 1,
    min_judges: int = 0,
    min_judge_agreement: float = 0.0,
    jury_aggregate: str = "mean",
    jury_weights: str = "",
    judge_temperature: float = 0.0,
    llm_base_url: str = "",
    llm_concurrency: int = 8,
    llm_cache: str = f"{platform.CACHE_MOUNT_PATH}/llm-cache",
    finetune_config: str = "",
    num_gpus: int = 1,
    num_nodes: int = 1,
    checkpoint_dir: str = f"{platform.CACHE_MOUNT_PATH}/checkpoints",
    max_new_tokens: int = 512,
    reference_models: List[str] = ["gpt-4o-mini"],
    min_improvement: float = 0.0,
    min_paired_questions: int = 20,
    gpu_hour_usd: float = 0.0,
    serving_name: str = REGISTERED_MODEL_NAME,
    canary_percent: int = 10,
    registered_model_name: str = REGISTERED_MODEL_NAME,
    mlflow_tracking_uri: str = platform.MLFLOW_TRACKING_URI_IN_CLUSTER,
    experiment_name: str = EXPERIMENT_NAME,
    promotion_tolerance: float = 0.25,
    replicates: int = 1,
) -> str:
    """Score, split, fine-tune each base model on each arm, judge, register and promote.

    Args:
        seed_uri: seed JSONL; "" = bundled sample, `s3://bucket/key`, or a path on the cache volume.
        questions_uri: test questions (FastChat question.jsonl: Vicuna bench, MT-bench, KoMT-Bench, ...);
            "" = the seed records held out of training (the paper's protocol); `sample` = the bundled
            demo questions.
        base_models: Hugging Face ids or local paths of the base models (`tiny` = a small local test model).
        arms: `unscored` (baseline), `self_guided`, and `control` (same size or the same records as
            self_guided, with scores that carry no information).
        strategy: `condition` (scores in the prompt) or `filter` (keep records scored >= filter_threshold).
        filter_threshold: minimum mean score for the `filter` strategy.
        held_out_categories: categories never trained on (evaluated as unseen).
        eval_fraction: share of trained-on categories kept for evaluation.
        max_eval_questions: most test questions per category of the fixed test set (0 = all), drawn deterministically.
        fresh_questions_uri: harvested prompts (`selfguided harvest`; question.jsonl, each `"slice": "unseen"` or
            `"seen"`) appended to the test set; the gate decides on fixed + unseen, seen are reported; "" = none.
        reference_answers_uri: FastChat reference answers (`reference_answer/gpt-4.jsonl`) the judge is shown
            for `reference_categories`; "" = the questions' own inline `reference`, if any.
        reference_categories: categories judged against a reference answer, as FastChat does.
        score_model: LLM that scores the seed data; `offline-heuristic` needs no API.
        judge_model: LLM that grades the answers; `offline-heuristic` needs no API.
        judges: a jury instead of judge_model alone: comma-separated `name` (on llm_base_url) or
            `name@http://host/v1` (its own endpoint; its key from the selfguided-judge-keys Secret,
            one key per judge, never a parameter); its score is the jury_aggregate of the judges'.
        judge_repeats: grade a stratified sample this many times per judge (judge noise); 1 = once.
        min_judges: judges an item needs for a jury score (0 = all); with fewer it fails, named.
        min_judge_agreement: refuse a promotion when the judges' Krippendorff's alpha is below this (0 = off).
        jury_aggregate: `mean` or `median` of the judges' scores.
        jury_weights: the judges' weights in the jury's mean, `a=0.8,b=0.2`, as `selfguided calibrate` learns
            them from the editors (fit on half the labels, shipped only if the other half agrees); "" = equal.
        judge_temperature: the judges' sampling temperature; 0 keeps verdicts repeatable, judge_repeats
            measure a judge's own noise only above 0 (e.g. 0.7).
        llm_base_url: OpenAI-compatible endpoint for score and judge (Azure, vLLM, ...); "" = OpenAI.
        llm_concurrency: concurrent LLM requests per step.
        llm_cache: LLM response cache (a path on the cache volume or `s3://bucket/prefix`; "" = none).
        finetune_config: JSON object of FinetuneConfig overrides ("" = defaults for the model size).
        num_gpus: GPUs per finetune task (torchrun on one node when > 1), per node when num_nodes > 1.
        num_nodes: nodes per fine-tuning; > 1 runs it as a Kubeflow Trainer TrainJob that the finetune
            task launches and follows, asking for no GPU itself (manifests/training).
        checkpoint_dir: training checkpoints, on the cache volume so a retried task resumes.
        max_new_tokens: longest answer generated per turn of a test question.
        reference_models: API models answering as teacher rows (the paper's ChatGPT row), through the
            LLM endpoint, or `name@http://host:port/v1` on an endpoint of their own; [] = no teacher row.
        min_improvement: promote only when the one-sided lower confidence bound (alpha 0.02, split over
            the candidate arms) of the challenger's overall paired difference against the champion (the
            untuned base for the first champion) is above this (1-10 scale).
        min_paired_questions: shared questions (not (question, turn) pairs) needed to compare.
        gpu_hour_usd: price of a GPU hour, for the cost per 1000 answers of local models (0 = omitted).
        serving_name: the KServe InferenceService pointed at a newly promoted champion ("" = no deploy).
        canary_percent: share of traffic (1-99) a new champion gets beside the previous one until the
            monitor (or `selfguided canary`) promotes it to 100% or rolls it back; 0 = 100% at once.
        registered_model_name: the MLflow registered model.
        mlflow_tracking_uri: MLflow tracking server.
        experiment_name: MLflow experiment of the runs.
        promotion_tolerance: every category of at least 5 questions must show its paired difference
            against the champion above -promotion_tolerance, or the promotion is blocked (the gate names
            the category and the questions it would need); smaller ones are listed with the regression
            they could hide.
        replicates: trainings of every (base model, arm) with different seeds (data order, LoRA init),
            in parallel; each is answered and judged, and the gate compares their mean, the seed-to-seed
            spread part of its interval. 1 = one training each.
    """
    llm_models = collect_llm_models(score_model=score_model, judge_model=judge_model, judges=judges,
                                    reference_models=reference_models)
    _sized(llm_models, "light").set_display_name("list the LLMs used")
    check = preflight(tracking_uri=mlflow_tracking_uri, experiment_name=experiment_name,
                      registered_model_name=registered_model_name, llm_models=llm_models.output,
                      llm_base_url=llm_base_url, serving_name=serving_name)
    _sized(_with_mlflow_secret(_with_llm_secret(_with_judge_keys(_with_s3_secret(check)))), "light").set_display_name(
        "preflight").set_caching_options(False)
    # the predictor's read-only S3 keys must read where the server keeps artifacts
    kubernetes.use_config_map_as_env(check, platform.MLFLOW_CONFIG_MAP_NAME, platform.MLFLOW_CONFIG_MAP_KEYS)
    kubernetes.use_secret_as_env(check, PREDICTOR_S3_SECRET, PREDICTOR_S3_ENV, optional=True)

    score_task = score(seed_uri=seed_uri, model=score_model, concurrency=llm_concurrency, cache=llm_cache,
                       base_url=llm_base_url).after(check)
    # The KFP cache keys on the URI string, not the file behind it: an edited seed file at the same
    # URI must be scored again (the LLM cache makes that cheap), so score and split never reuse.
    score_task.set_display_name("score seed data").set_caching_options(False)
    _sized(_with_s3_secret(_with_llm_secret(_with_cache_volume(score_task))), "llm").set_retry(num_retries=2,
                                                                                               backoff_duration="60s")

    split_task = split(
        scored=score_task.outputs["scored"], questions_uri=questions_uri, arms=arms, strategy=strategy,
        filter_threshold=filter_threshold, held_out_categories=held_out_categories, eval_fraction=eval_fraction,
        max_eval_questions=max_eval_questions, reference_answers_uri=reference_answers_uri,
        reference_categories=reference_categories, fresh_questions_uri=fresh_questions_uri,
    ).set_display_name("split per arm").set_caching_options(False)
    _sized(_with_s3_secret(_with_cache_volume(split_task)), "light")

    # Every row is graded by the same jury (one judge by default), with the same settings.
    jury = dict(model=judge_model, concurrency=llm_concurrency, cache=llm_cache, base_url=llm_base_url, judges=judges,
                judge_repeats=judge_repeats, min_judges=min_judges, jury_aggregate=jury_aggregate,
                judge_temperature=judge_temperature, jury_weights=jury_weights)
    plan = plan_runs(base_models=base_models, arms=arms, replicates=replicates)
    _sized(plan, "light").set_display_name("plan runs")
    with dsl.ParallelFor(plan.output, name="model-and-arm", parallelism=platform.GPU_PARALLELISM) as run:
        # In the loop: kfp.local cannot pass a task output from outside a ParallelFor into it.
        # Its own pod: num_gpus on the GPU pool; with num_nodes > 1 no GPU and no GPU node (a TrainJob
        # holds them), decided at run time from the pipeline parameter.
        placement = finetune_placement(num_gpus=num_gpus, num_nodes=num_nodes, node_selector=platform.GPU_NODE_SELECTOR,
                                       tolerations=platform.GPU_TOLERATIONS)
        _sized(placement, "light").set_display_name("finetune pod placement")
        finetune_task = finetune(
            train_data=split_task.outputs["train"], base_model=run.base_model, arm=run.arm, strategy=strategy,
            config_json=finetune_config, num_gpus=placement.outputs["gpus"], checkpoint_dir=checkpoint_dir,
            replicate=run.replicate, num_nodes=num_nodes, gpus_per_node=num_gpus,
        ).set_display_name("finetune")
        _sized_gpu(_with_cache_volume(_on_gpu_pool(finetune_task, placement.outputs["gpu_limit"],
                                                   node_selector=placement.outputs["node_selector"],
                                                   tolerations=placement.outputs["tolerations"]))).set_retry(
            num_retries=3, backoff_duration="120s")
        finetune_task.set_env_variable("HF_HOME", platform.HF_HOME)
        kubernetes.set_timeout(finetune_task, platform.FINETUNE_TIMEOUT_S)  # nothing waits forever
        _acting_as(finetune_task, TRAINJOB_LAUNCHER)  # creates the TrainJob when num_nodes > 1
        for name, value in platform.TRAINJOB_ENV.items():  # where a multi-node TrainJob runs (trainjob.py)
            finetune_task.set_env_variable(name, value)

        generate_task = generate(
            model=finetune_task.outputs["model"], questions=split_task.outputs["questions"],
            max_new_tokens=max_new_tokens,
        ).set_display_name("generate answers")
        _sized_gpu(_with_cache_volume(_on_gpu_pool(generate_task, 1))).set_retry(num_retries=2,
                                                                                      backoff_duration="60s")
        # Base weights download once into the cache volume, shared by finetune, generate and retries.
        generate_task.set_env_variable("HF_HOME", platform.HF_HOME)

        judge_task = judge(
            questions=split_task.outputs["questions"], answers=generate_task.outputs["answers"],
            row_kind="trained", base_model=run.base_model, arm=run.arm, row_model="",
            generate_seconds=generate_task.outputs["Output"], answer_cost_usd=0.0, note="", fallback="",
            **jury,
            replicate=run.replicate,
        ).set_display_name("judge answers")
        _llm_task(judge_task)

    references = plan_references(base_models=base_models)
    _sized(references, "light").set_display_name("plan reference rows")
    with dsl.ParallelFor(references.output, name="reference-row") as ref:
        answer_task = answer_reference(
            row=ref, questions=split_task.outputs["questions"], max_new_tokens=max_new_tokens,
            registered_model_name=registered_model_name, tracking_uri=mlflow_tracking_uri,
        ).set_display_name("answer as reference row").set_caching_options(False)  # the champion may have moved
        _sized_gpu(_with_mlflow_secret(_with_s3_secret(_with_cache_volume(_on_gpu_pool(answer_task, 1)))))
        answer_task.set_env_variable("HF_HOME", platform.HF_HOME).set_retry(num_retries=2, backoff_duration="60s")

        reference_judge = judge(
            questions=split_task.outputs["questions"], answers=answer_task.outputs["answers"],
            row_kind=ref.row_kind, base_model=ref.base_model, arm="", row_model=answer_task.outputs["row_model"],
            generate_seconds=answer_task.outputs["generate_seconds"],
            answer_cost_usd=answer_task.outputs["answer_cost_usd"], note=answer_task.outputs["note"],
            fallback=answer_task.outputs["fallback"],
            **jury,
        ).set_display_name("judge reference answers")
        _llm_task(reference_judge)

    # Teachers only call an API: one task answers them all and one judges them, on the CPU pool
    # (no loop: an empty ParallelFor breaks kfp.local, and a teacher needs no GPU).
    teachers = answer_teachers(
        reference_models=reference_models, questions=split_task.outputs["questions"], llm_base_url=llm_base_url,
        llm_concurrency=llm_concurrency, llm_cache=llm_cache,
    ).set_display_name("answer as teacher rows")
    _llm_task(teachers)
    teacher_judge = judge_rows(
        questions=split_task.outputs["questions"], rows=teachers.outputs["answers"],
        **jury,
    ).set_display_name("judge teacher answers")
    _llm_task(teacher_judge)

    compare_task = compare(
        summaries=dsl.Collected(judge_task.outputs["summary"]),
        judgments=dsl.Collected(judge_task.outputs["judgments"]),
        reference_summaries=dsl.Collected(reference_judge.outputs["summary"]),
        reference_judgments=dsl.Collected(reference_judge.outputs["judgments"]),
        teacher_rows=teacher_judge.outputs["evidence"],
        min_improvement=min_improvement, promotion_tolerance=promotion_tolerance,
        min_paired_questions=min_paired_questions, gpu_hour_usd=gpu_hour_usd,
        min_judge_agreement=min_judge_agreement, scoring_model=score_model,
        tracking_uri=mlflow_tracking_uri, experiment_name=experiment_name,  # the editors' review labels
        registered_model_name=registered_model_name,  # the champion's measured serving throughput
    )
    _sized(_with_mlflow_secret(compare_task), "compare").set_display_name("compare with uncertainty")
    compare_task.set_caching_options(False)

    register_task = register(
        models=dsl.Collected(finetune_task.outputs["model"]),
        evidence=compare_task.outputs["evidence"],
        evaluation=compare_task.outputs["result"],
        evaluation_report=compare_task.outputs["report"],
        evaluation_page=compare_task.outputs["report_page"],
        scored_data=score_task.outputs["scored"],
        train_data=split_task.outputs["train"],
        questions=split_task.outputs["questions"],
        registered_model_name=registered_model_name,
        tracking_uri=mlflow_tracking_uri,
        experiment_name=experiment_name,
        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
    ).set_display_name("register and promote")
    # Registering is a side effect on MLflow: never answer it from the KFP cache.
    # The cache volume and HF_HOME: merging a LoRA champion loads its base, downloaded once, shared.
    _sized(_with_mlflow_secret(_with_s3_secret(_with_cache_volume(register_task))), "register").set_caching_options(False)
    register_task.set_env_variable("HF_HOME", platform.HF_HOME)
    # Where the MLflow server keeps artifacts, read at run time from the profile's ConfigMap (made
    # from the server's own setting), so the champion's storage URI is where the files are.
    kubernetes.use_config_map_as_env(register_task, platform.MLFLOW_CONFIG_MAP_NAME, platform.MLFLOW_CONFIG_MAP_KEYS)

    deploy_task = deploy(
        promoted=register_task.outputs["promoted"], storage_uri=register_task.outputs["champion_storage_uri"],
        model_version=register_task.outputs["champion_version"], service_name=serving_name, namespace="",
        canary_percent=canary_percent, node_selector=platform.GPU_NODE_SELECTOR, tolerations=platform.GPU_TOLERATIONS,
    )
    _sized(deploy_task, "light").set_display_name("deploy the champion").set_caching_options(False)
    _acting_as(deploy_task, DEPLOYER)
    return register_task.outputs["result"]
