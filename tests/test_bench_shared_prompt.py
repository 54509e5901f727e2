"""benchmarks/bench_shared_prompt.py runs end to end (on the tiny workload size, one repeat)."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_bench_shared_prompt_measures_both_programs_for_both_groups():
    spec = importlib.util.spec_from_file_location("bench_shared_prompt", ROOT / "benchmarks" / "bench_shared_prompt.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure("tiny", prompts=2, group=4, prompt_length=8, completion_length=6, repeats=1)
    assert set(result) == {"reference log-probs", "gradient (update)"}
    for by_group in result.values():
        assert set(by_group) == {1, 4} and all(0 < t < 60 for t in by_group.values())
