"""benchmarks/bench_shared_prompt.py runs end to end (on the tiny workload size, one repeat)."""

from benchmark_scripts import load


def test_bench_shared_prompt_measures_both_programs_for_both_groups():
    result = load("bench_shared_prompt").measure("tiny", prompts=2, group=4, prompt_length=8, completion_length=6,
                                                 repeats=1)
    assert set(result) == {"reference log-probs", "gradient (update)"}
    for by_group in result.values():
        assert set(by_group) == {1, 4} and all(0 < t < 60 for t in by_group.values())
