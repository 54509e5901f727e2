"""benchmarks/bench_attention.py runs end to end (on the tiny workload size, one repeat)."""

from benchmark_scripts import load


def test_bench_attention_times_and_sizes_both_variants():
    result = load("bench_attention").measure("tiny", prompts=2, group=4, prompt_length=8, completion_length=16,
                                             query_block=8, repeats=1, max_temp_gib=16.0)
    assert set(result) == {"reference log-probs", "gradient (update)"}
    for by_label in result.values():
        assert set(by_label) == {"one block", "blocks"}
        assert all(0 < x["seconds"] < 60 and x["temp_gib"] > 0 for x in by_label.values())


def test_bench_attention_skips_what_would_not_fit():
    result = load("bench_attention").measure("tiny", prompts=2, group=4, prompt_length=8, completion_length=16,
                                             query_block=8, repeats=1, max_temp_gib=0.0)
    assert all(x["seconds"] is None for by_label in result.values() for x in by_label.values())
