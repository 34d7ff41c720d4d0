import os
from pathlib import Path

import mlflow
import pytest


def _temp_root_in_memory(root: Path = Path("/dev/shm"), room: int = 4 * 2**30) -> None:
    """tmp_path under /dev/shm (RAM) where the machine has one with room, else the usual temp folder.

    The suite writes SQLite MLflow stores (a new one runs MLflow's 68 schema migrations), checkpoints
    and model files, each commit and checkpoint flushed to the disk: on the disk-backed /tmp of the
    2-core dev machine test_registry_cli.py took 83 s and 74 s, under /dev/shm 53 s twice, the same
    CPU time. What the tests check is the same on either filesystem. An explicit --basetemp or
    PYTEST_DEBUG_TEMPROOT wins; pytest keeps the last 3 runs' folders, as under /tmp.
    """
    if "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    try:
        stats = os.statvfs(root)
    except OSError:  # no /dev/shm (macOS, Windows)
        return
    if os.access(root, os.W_OK | os.X_OK) and stats.f_bavail * stats.f_frsize >= room:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)


_temp_root_in_memory()

# One OpenMP thread per process (a set OMP_NUM_THREADS wins), here and in every subprocess the tests
# start: `make test` runs 2 workers on 2 cores, and each PyTorch process taking every core spins
# its idle threads against the other worker's (pipelines/local.py shares the cores out the same way
# for a pipeline's concurrent steps). test_finetune.py's in-process training tests on the loaded
# 2-core dev machine: 67 s and 48 s wall, 49-50 s CPU with the default; 35 s and 29 s, 24 s CPU
# with one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The modules that take longest, longest first (measured with `--durations`, one module at a time, on
# a 2-core machine). `make test` runs the suite on 2 workers, one module per worker at a time
# (`-n 2 --dist loadfile --no-loadscope-reorder`): started first, the long ones run beside the many
# short ones instead of last and alone. Without workers the order changes nothing: every test sets
# up what it needs.
LONGEST_FIRST = (
    "test_pipeline_local.py",       # the whole pipeline, twice
    "test_finetune.py",             # training, torchrun, SIGTERM and SIGKILL resumes
    "test_fsdp.py",                 # two ranks under FSDP2
    "test_benchmarks.py",           # every benchmark script at its smallest
    "test_no_leaked_secrets.py",    # the pipeline against a stand-in LLM endpoint
    "test_review_calibrate.py",     # an MLflow basic-auth server
    "test_registry_cli.py",
    "test_monitor.py",              # production traces judged, the CLI, the monitor pipeline compiled
    "test_monitor_pipeline.py",     # the monitor pipeline under kfp.local, twice
    "test_register.py",
    "test_generate.py",
    "test_postgres_deployment.py",  # PostgreSQL, MLflow and S3
    "test_production_traces.py",    # an MLflow server, 300 traced requests, the server killed
    "test_harvest.py",              # traffic harvested 7 times, S3 (moto), the training pipeline compiled
    "test_seed_versions.py",        # MLflow lineage, S3 (moto) and a registered model version
)


def pytest_collection_modifyitems(config, items):
    missing = [name for name in LONGEST_FIRST if not (Path(__file__).parent / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names modules that do not exist: {missing}")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """Tests never inherit the developer's API keys or tracking server, and leave none behind.

    `mlflow.set_tracking_uri` and `mlflow.set_registry_uri` (called by register_candidates, the
    champion row, promote, serve) also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI so that
    subprocesses inherit them; unset both after each test, or a later test (and the kfp.local
    steps it starts) would log into, or resolve models:/ URIs in, whatever store the previous one used.
    """
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                 "SELFGUIDED_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    # `mlflow.set_experiment` keeps the experiment in a module global and in MLFLOW_EXPERIMENT_ID
    # (mlflow/tracking/fluent.py): a later test in the same process, on another store, would start
    # its runs in an experiment id that store does not have. Under `make test`'s workers the order
    # of tests in a process differs from a plain run, which is how this showed.
    import mlflow.tracking.fluent as fluent

    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
