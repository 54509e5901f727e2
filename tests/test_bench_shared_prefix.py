"""benchmarks/bench_shared_prefix.py runs end to end (tiny size, one repeat), and its slot count is right."""

from benchmark_scripts import load


def test_bench_shared_prefix_times_both_variants():
    result = load("bench_shared_prefix").measure("tiny", prompts=2, group=3, prompt_length=5, new_tokens=4,
                                                 repeats=1)
    assert set(result) == {"copied", "shared"} and all(0 < t < 10 for t in result.values())


def test_slots_read():
    # 2 prompts of 5 slots once, 6 rows of 4 own slots; against 6 rows of 9
    assert load("bench_shared_prefix").slots_read(2, 3, 5, 4) == (2 * 5 + 6 * 4, 6 * 9)
