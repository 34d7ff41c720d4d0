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
    # one CLI command of each revision: the earlier one imports the whole package (~15 s) per command
    "startup.py": ["--repeats", "1", "--steps", "register", "--cli", "help"],
    "gate_simulation.py": ["--quick"],
    "jury_weights_simulation.py": ["--reps", "3", "--labels", "40", "--fresh", "50"],
    "canary_simulation.py": ["--quick"],
    "monitor_simulation.py": ["--quick"],
    "trace_writer_rate.py": ["--n", "5", "--batch-sizes", "50"],
}
# Scripts a test module already runs, with a setting at least as large, checking the RESULT line (and
# more): a smoke run here would only repeat it.
RUN_BY = {"memory_plan_check.py": "test_memory_plan.py"}  # both methods, 2048 tokens, the ratio checked


def test_every_benchmark_has_a_smoke_setting():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(SMOKE) | set(RUN_BY), "add the new benchmark's smallest setting to SMOKE"
    assert not set(SMOKE) & set(RUN_BY)


@pytest.mark.parametrize("script, module", sorted(RUN_BY.items()))
def test_a_benchmark_another_module_runs_is_run_there(script, module):
    text = (ROOT / "tests" / module).read_text(encoding="utf-8")
    assert f'"benchmarks" / "{script}"' in text and '.startswith("RESULT ")' in text


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_benchmark_runs_and_prints_its_result_line(script):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *SMOKE[script]], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), result.stdout[-2000:]
