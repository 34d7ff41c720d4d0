"""Every script under benchmarks/ runs at its smallest setting and prints its RESULT line.

A benchmark is documentation that people run (README, benchmarks/RESULTS.md): one that no longer
imports (a moved module) must fail here, not in a user's hands. The figures themselves are not
checked: speed is never asserted in a test.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = {
    "finetune_throughput.py": ["--models", "tiny", "--device", "cpu", "--steps", "1", "--warmup-steps", "0",
                               "--samples", "16"],
    "generate_throughput.py": ["--model", "tiny", "--device", "cpu", "--prompts", "4", "--max-new-tokens", "4",
                               "--batch-size", "2"],
    "llm_throughput.py": ["--n", "12", "--rpm", "0", "--max-concurrent", "64", "--latency", "0.01",
                          "--concurrency", "4"],
    "startup.py": ["--repeats", "1", "--steps", "register"],
    "gate_simulation.py": ["--quick"],
    "jury_weights_simulation.py": ["--reps", "3", "--labels", "40", "--fresh", "50"],
    "canary_simulation.py": ["--quick"],
    "monitor_simulation.py": ["--quick"],
    "trace_writer_rate.py": ["--n", "5", "--batch-sizes", "50"],
    "memory_plan_check.py": ["--model", "tiny", "--method", "lora", "--tokens", "256", "--steps", "1"],
}


def test_every_benchmark_has_a_smoke_setting():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(SMOKE), "add the new benchmark's smallest setting to SMOKE"


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_and_prints_its_result_line(script):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *SMOKE[script]], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), result.stdout[-2000:]
