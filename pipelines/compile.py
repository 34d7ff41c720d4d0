"""Compile the pipeline to KFP IR YAML (the file uploaded in the Kubeflow UI, and committed)."""

import sys
from pathlib import Path

from kfp import compiler

from selfguided.pipelines.pipeline import self_guided_pipeline

COMMITTED_PIPELINE = Path(__file__).with_name("selfguided_pipeline.yaml")


def compile_pipeline(output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(self_guided_pipeline, package_path=str(output))
    return output


def main(argv: list[str]) -> int:
    """python -m selfguided.pipelines.compile OUTPUT (what `selfguided compile` runs)."""
    from selfguided.components.images import CPU_IMAGE, GPU_IMAGE

    path = compile_pipeline(argv[0])
    print(f"wrote {path} for images {CPU_IMAGE} and {GPU_IMAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
