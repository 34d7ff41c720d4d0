"""`selfguided`: run the pipeline locally, compile it for Kubeflow, submit it, or use its steps on files."""

import argparse
import importlib
import os
import sys
from pathlib import Path

from selfguided.components.registry.names import RegistryError
from selfguided.pipelines.options import OneLineParser, UsageError, add_option, quiet_libraries
from selfguided.pipelines.local import LOCAL_DEFAULTS
from selfguided.pipelines.platform import PIPELINE_SERVICE_ACCOUNT
from selfguided.pipelines.workdir import DEFAULT_WORKDIR


def _list(value: str) -> list[str]:
    """A comma-separated list; "" is the empty list (e.g. --reference-models "" for no teacher row)."""
    return [v.strip() for v in value.split(",") if v.strip()]


# Pipeline parameters become options named after them (`--base-models` for base_models); these
# have the CLI's vocabulary's name (pipelines/options.py), and the old spellings it replaced. Their help
# is the pipeline docstring's Args section.
_OPTION_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "seed_uri": ("--seed-data", ("--seed",)), "questions_uri": ("--questions", ()),
    "reference_answers_uri": ("--reference-answers", ()), "fresh_questions_uri": ("--fresh-questions", ()),
    "registered_model_name": ("--registered-model", ("--registered-model-name",)),
    "experiment_name": ("--experiment", ("--experiment-name",)),
    "mlflow_tracking_uri": ("--tracking-uri", ("--mlflow-tracking-uri",)),
}
# Parameters with a closed set of values: checked when the command line is read, before any step runs.
_CHOICES = {"strategy": ("condition", "filter"), "jury_aggregate": ("mean", "median")}
# What `run` uses when an option is not given, where that depends on the environment.
_LOCAL_SHOWN = {
    "score_model": "$SELFGUIDED_JUDGE_MODEL or gpt-4o if OPENAI_API_KEY/OPENAI_BASE_URL is set, else offline-heuristic",
    "judge_model": "$SELFGUIDED_JUDGE_MODEL or gpt-4o if OPENAI_API_KEY/OPENAI_BASE_URL is set, else offline-heuristic",
    "reference_models": "$SELFGUIDED_TEACHER_MODEL or gpt-4o-mini if OPENAI_API_KEY/OPENAI_BASE_URL is set, "
                        "else none",
    "finetune_config": LOCAL_DEFAULTS["finetune_config"] + ": the local demo fully fine-tunes the random `tiny` "
                       "model; \"\" (submit's default) is LoRA for a real base model",
}
# Set by `selfguided run` from its work folder: not options of a local run.
_LOCAL_MANAGED = ("llm_cache", "checkpoint_dir", "mlflow_tracking_uri", "num_gpus")
_PARSERS = {"String": str, "Integer": int, "Float": float, "Boolean": lambda v: v.lower() in ("1", "true", "yes")}


def _pipeline_inputs() -> dict:
    from selfguided.pipelines.pipeline import self_guided_pipeline

    return self_guided_pipeline.component_spec.inputs


def _add_pipeline_options(parser: argparse.ArgumentParser, *, local: bool) -> None:
    """One option per pipeline parameter, derived from the pipeline's signature and docstring
    (None = the pipeline's default, shown in the help; `run` shows its local defaults)."""
    g = parser.add_argument_group("pipeline parameters")
    for name, spec in _pipeline_inputs().items():
        if local and name in _LOCAL_MANAGED:
            continue
        default = LOCAL_DEFAULTS.get(name, spec.default) if local else spec.default
        kind = str(spec.type)
        is_list = kind.startswith("typing.List") or kind.startswith("List")
        shown = ",".join(default) if is_list and isinstance(default, list) else default
        if local and name in _LOCAL_SHOWN:
            shown = _LOCAL_SHOWN[name]
        help_text = (spec.description or "").replace("%", "%%") + f" (default: {shown!s})".replace("%", "%%")
        option, old = _OPTION_NAMES.get(name, ("--" + name.replace("_", "-"), ()))
        add_option(g, option, old=old, dest=name, help=help_text, choices=_CHOICES.get(name),
                   type=_list if is_list else _PARSERS.get(kind, str), metavar=name.upper())


def _parameters(args: argparse.Namespace) -> dict:
    params = {k: getattr(args, k) for k in _pipeline_inputs() if getattr(args, k, None) is not None}
    from selfguided.components.model.prompting import ARMS

    unknown = [arm for arm in params.get("arms", []) if arm not in ARMS]
    if unknown or params.get("arms") == []:
        raise UsageError(f"--arms: {', '.join(unknown) or 'none given'}; choose from {', '.join(ARMS)}")
    if "score_model" in params and "judge_model" not in params:
        params["judge_model"] = params["score_model"]
    if params.get("seed_uri"):
        params["seed_uri"] = _seed_data(params["seed_uri"], remote=bool(getattr(args, "kfp_host", None)))
    return params


def _seed_data(value: str, *, remote: bool) -> str:
    """--seed-data: a seed version's name (`seed-<16 hex>`) becomes its records in the seed store
    ($SELFGUIDED_SEED_STORE, else the default folder); a cluster run needs them on S3."""
    from selfguided.components.data.jsonl import DataError
    from selfguided.components.data.seed_versions import resolve_seed_data
    from selfguided.pipelines.cli.data import seed_store_root

    try:
        resolved = resolve_seed_data(value, seed_store_root())
    except DataError as exc:
        raise UsageError(f"--seed-data: {exc}") from None
    if resolved != value and remote and not resolved.startswith("s3://"):
        raise UsageError(f"--seed-data {value}: its records are in a local seed store ({resolved}), which the "
                         "cluster cannot read; set SELFGUIDED_SEED_STORE to an s3://bucket/prefix store")
    if resolved != value and not resolved.startswith("s3://"):
        resolved = str(Path(resolved).resolve())
    if resolved != value:
        print(f"selfguided: --seed-data {value} is {resolved}")
    return resolved


def _check_fresh_questions(parameters: dict) -> None:
    """A local run's --fresh-questions file, read before any step runs: a bad one is refused (exit 2)."""
    uri = parameters.get("fresh_questions_uri")
    if uri and not uri.startswith("s3://"):
        from selfguided.components.data.jsonl import DataError
        from selfguided.components.data.questions import FRESH_SLICES, load_questions

        try:
            load_questions(uri, slices=FRESH_SLICES)
        except DataError as exc:
            raise UsageError(f"--fresh-questions: {exc}") from None
        parameters["fresh_questions_uri"] = str(Path(uri).resolve())


def cmd_run(args: argparse.Namespace) -> int:
    from selfguided.pipelines.local import LocalRunFailed, next_steps, run_local

    parameters = _parameters(args)
    _check_fresh_questions(parameters)
    print(f"selfguided: running the pipeline locally (work folder {Path(args.workdir).resolve()})")
    try:
        result = run_local(args.workdir, verbose=args.verbose, tracking_uri=args.tracking_uri, **parameters)
    except LocalRunFailed as failure:
        print(f"\nselfguided run: {failure}", file=sys.stderr)
        return 1
    print(f"\nFinished in {result.seconds:.0f} s (pipeline run {result.run_name}).")
    if not result.teachers:
        print("No teacher row: no LLM endpoint is configured (set OPENAI_API_KEY or OPENAI_BASE_URL, and "
              "--reference-models, for the paper's ChatGPT row).")
    print()
    print(result.register.get("report_markdown") or "(no evaluation report)")
    print(f"Registry: {result.decision}")
    print("Aliases of '{}': {}".format(result.registered_model_name,
          ", ".join(f"{a} -> v{v}" for a, v in sorted(result.aliases.items())) or "none"))
    print(f"\nFull log: {result.log_path}\n")
    print(next_steps(result, args.workdir))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    # The image settings are read once, when components/images.py is imported (this module already
    # did): with image options, compile in a fresh interpreter that has them from the start.
    chosen = {variable: getattr(args, option) for option, variable in _IMAGE_OPTIONS.items()
              if getattr(args, option, None)}
    if chosen:
        import subprocess

        return subprocess.run([sys.executable, "-m", "selfguided.pipelines.compile", args.output],
                              env={**os.environ, **chosen}).returncode
    from selfguided.pipelines.compile import main as compile_main

    return compile_main([args.output])


_IMAGE_OPTIONS = {"image_registry": "SELFGUIDED_IMAGE_REGISTRY", "image_tag": "SELFGUIDED_IMAGE_TAG",
                  "cpu_image": "SELFGUIDED_CPU_IMAGE", "gpu_image": "SELFGUIDED_GPU_IMAGE"}


def cmd_submit(args: argparse.Namespace) -> int:
    import kfp

    from selfguided.pipelines.kfp_backend import KfpBackendError, check_backend_version, describe

    # Before anything is compiled or started: an older backend would accept the run and fail it
    # late, on the cluster (pipelines/kfp_backend.py says which features need which version).
    parameters = _parameters(args)  # bad parameters are refused before the endpoint is asked anything
    # KFP's experiment defaults to MLflow's: both "selfguided" by default, and `--experiment X`
    # (the KFP experiment, before --kfp-experiment existed) still files the run under X in Kubeflow.
    kfp_experiment = args.kfp_experiment or parameters.get("experiment_name") or "selfguided"
    token = os.environ.get("KFP_TOKEN") or None  # the same bearer token for the check and the run
    try:
        reported = check_backend_version(args.kfp_host, token)
        print(describe(args.kfp_host, reported), flush=True)
    except KfpBackendError as e:
        print(f"submit: {e}", file=sys.stderr)
        return 1
    from selfguided.pipelines.pipeline import self_guided_pipeline

    client = kfp.Client(host=args.kfp_host, namespace=args.namespace, existing_token=token)
    run = client.create_run_from_pipeline_func(
        self_guided_pipeline, arguments=parameters, run_name=args.run_name,
        experiment_name=kfp_experiment, namespace=args.namespace, service_account=args.service_account,
    )
    print(f"submitted run {run.run_id}: {args.kfp_host.rstrip('/')}/#/runs/details/{run.run_id}")
    return 0


def add_run_parser(sub) -> None:
    run = sub.add_parser("run", help="run the whole pipeline locally (kfp.local) on embedded defaults",
                         description="Run the whole pipeline on this machine with kfp.local: bundled sample data, "
                         "base model `tiny`, both arms, MLflow on a SQLite file in the work folder "
                         "(MLFLOW_TRACKING_URI wins when set), the offline judge unless OPENAI_API_KEY or "
                         "OPENAI_BASE_URL is set.")
    run.add_argument("--workdir", default=DEFAULT_WORKDIR, help="folder for MLflow, pipeline outputs, caches and logs (default: %(default)s)")
    run.add_argument("-v", "--verbose", action="store_true", help="stream every step's full log, not just progress")
    add_option(run, "--tracking-uri", old=("--mlflow-tracking-uri",), help="MLflow tracking URI to log to "
               "(default: $MLFLOW_TRACKING_URI, else a SQLite store in the work folder, WORKDIR/mlflow.db)")
    _add_pipeline_options(run, local=True)
    run.set_defaults(func=cmd_run)


def add_compile_parser(sub) -> None:
    comp = sub.add_parser("compile", help="write the pipeline as KFP IR YAML", description="Compile the pipeline "
                          "to KFP IR YAML for the Kubeflow UI. Images come from SELFGUIDED_IMAGE_REGISTRY and "
                          "SELFGUIDED_IMAGE_TAG (default: ghcr.io/selfguided, the package version).")
    comp.add_argument("-o", "--output", default="selfguided_pipeline.yaml",
                      help="YAML file to write (default: %(default)s in the current folder)")
    comp.add_argument("--image-registry", help="registry of the selfguided-cpu/-gpu images you built "
                      "(SELFGUIDED_IMAGE_REGISTRY; default ghcr.io/selfguided)")
    comp.add_argument("--image-tag", help="their tag (SELFGUIDED_IMAGE_TAG; default: the package version)")
    comp.add_argument("--cpu-image", help="a whole CPU image reference, e.g. REGISTRY/selfguided-cpu@sha256:... "
                      "(SELFGUIDED_CPU_IMAGE; wins over registry and tag)")
    comp.add_argument("--gpu-image", help="a whole GPU image reference (SELFGUIDED_GPU_IMAGE)")
    comp.set_defaults(func=cmd_compile)


def add_submit_parser(sub) -> None:
    submit = sub.add_parser("submit", help="compile and submit a run to a Kubeflow Pipelines endpoint",
                            description="Compile the pipeline and start a run with kfp.Client. Credentials for "
                            "the endpoint come from the environment as kfp.Client reads them.")
    add_option(submit, "--kfp-host", old=("--host",), required=True,
               help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
    submit.add_argument("--namespace", help="Kubeflow profile namespace to run in")
    submit.add_argument("--kfp-experiment", help="KFP experiment to file the run under (default: the MLflow "
                        "experiment, --experiment, selfguided unless given)")
    submit.add_argument("--run-name", help="name of the run (default: generated)")
    submit.add_argument("--service-account", default=PIPELINE_SERVICE_ACCOUNT,
                        help="service account of the run's pods (default: %(default)s, from manifests/)")
    _add_pipeline_options(submit, local=False)
    submit.set_defaults(func=cmd_submit)


# Every command: its line in `selfguided --help`, and "module:function" adding its full parser.
# Only the command being run is imported and built, so `selfguided --help` and `selfguided score
# --help` do not pay for the pipeline, torch, mlflow or kfp's component decorators. A new command
# is one entry here and an `add_*_parser(subparsers)` function beside its code.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run the whole pipeline locally (kfp.local) on embedded defaults", f"{__name__}:add_run_parser"),
    "compile": ("write the pipeline as KFP IR YAML", f"{__name__}:add_compile_parser"),
    "submit": ("compile and submit a run to a Kubeflow Pipelines endpoint", f"{__name__}:add_submit_parser"),
    "upload": ("publish the compiled pipeline as a new version of a named pipeline on a KFP host",
               "selfguided.pipelines.upload:add_upload_parser"),
    "serve": ("serve a model version (default: the champion) behind an OpenAI-compatible endpoint",
              "selfguided.pipelines.serving.server:add_serve_parser"),
    "models": ("list registered versions with aliases, scores and the gate's reasons",
               "selfguided.pipelines.cli.registry:add_registry_parsers"),
    "promote": ("make a version the champion (through the gate unless --force)",
                "selfguided.pipelines.cli.registry:add_registry_parsers"),
    "rollback": ("move champion back to the version it replaced (or VERSION)",
                 "selfguided.pipelines.cli.registry:add_registry_parsers"),
    "canary": ("the champion's canary rollout: status, promote to 100% or roll back (KServe and the alias)",
               "selfguided.pipelines.cli.canary:add_canary_parser"),
    "plan-training": ("per-GPU memory of a fine-tuning setup (DDP, FSDP) and the smallest that fits",
                      "selfguided.pipelines.cli.training:add_plan_training_parser"),
    "score": ("rate seed records (helpfulness, relevance, accuracy, detail) with an LLM",
              "selfguided.pipelines.cli.llm:add_score_parser"),
    "judge": ("grade model answers to eval questions with an LLM judge (FastChat formats)",
              "selfguided.pipelines.cli.llm:add_judge_parser"),
    "review": ("queue a blind, stratified sample of judged answers for editors to grade in MLflow",
               "selfguided.pipelines.cli.review:add_review_parsers"),
    "calibrate": ("judge-human agreement: each judge and the jury against the editors' scores",
                  "selfguided.pipelines.cli.review:add_review_parsers"),
    "plan-eval": ("questions and training seeds a target difference needs, from a finished run's judgments",
                  "selfguided.pipelines.cli.plan_eval:add_plan_eval_parser"),
    "monitor": ("judge a sample of the champion's production answers against its offline evaluation (drift)",
                "selfguided.pipelines.cli.monitor:add_monitor_parsers"),
    "schedule": ("create a KFP recurring run of the monitor (or training) pipeline on a cron",
                 "selfguided.pipelines.cli.monitor:add_monitor_parsers"),
    "replay": ("send the held-out questions to an OpenAI-compatible endpoint, their category in the metadata "
               "(traffic for the production traces)", "selfguided.pipelines.cli.replay:add_replay_parser"),
    "bench-serve": ("throughput, latency and cost per 1,000 answers of an OpenAI-compatible endpoint under load",
                    "selfguided.pipelines.cli.bench_serve:add_bench_serve_parser"),
    "data": ("versioned seed data: save a content-addressed version (MLflow lineage), diff two versions",
             "selfguided.pipelines.cli.data:add_data_parser"),
    "harvest": ("production prompts -> a new seed version (deduplicated, no test-set question, hard ones apart)",
                "selfguided.pipelines.cli.harvest:add_harvest_parser"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `selfguided` parser with the full options of `command` (every command when None is not
    asked for: the others are listed with their one line, and built when they are the one run)."""
    parser = OneLineParser(
        prog="selfguided",
        description="Self-Guided Approach on Kubeflow Pipelines: an LLM scores Korean writing seed data, small "
        "Korean LMs are fine-tuned on unscored vs score-guided data, judged per category, and the best model is "
        "promoted in the MLflow registry.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = [command] if command in COMMANDS else []
    if command == "all":  # every parser in full (tests check every command's options)
        wanted = list(COMMANDS)
    for name in wanted:
        if name not in sub.choices:
            module, function = COMMANDS[name][1].split(":")
            getattr(importlib.import_module(module), function)(sub)
    for name, (help_line, _) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_line.replace("%", "%%"))  # argparse formats help with %
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    quiet_libraries(getattr(args, "verbose", False))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RegistryError, UsageError) as exc:
        print(f"selfguided {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
