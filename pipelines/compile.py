"""Compile the pipeline to KFP IR YAML (the file uploaded in the Kubeflow UI, and committed)."""

from pathlib import Path

from kfp import compiler

from selfguided.pipelines.pipeline import self_guided_pipeline

COMMITTED_PIPELINE = Path(__file__).with_name("selfguided_pipeline.yaml")


def compile_pipeline(output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(self_guided_pipeline, package_path=str(output))
    return output
