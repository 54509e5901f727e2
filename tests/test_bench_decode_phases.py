"""benchmarks/bench_decode_phases.py runs end to end (tiny size, one repeat), and its predicted read fraction
matches a step-by-step count."""

import math

from benchmark_scripts import load


def test_bench_decode_phases_times_both_variants():
    result = load("bench_decode_phases").measure("tiny", prompts=2, group=2, prompt_length=8, new_tokens=12,
                                                 phase=5, repeats=1)
    assert set(result) == {"one phase", "phases"} and all(0 < t < 60 for t in result.values())


def test_read_fraction_counts_every_decode_step():
    bench = load("bench_decode_phases")
    for p, new, phase in [(32, 1024, 256), (8, 12, 5), (3, 10, 10), (5, 7, 1)]:
        slots = [p + min(new, phase * math.ceil((t + 1) / phase)) for t in range(new)]  # step t's cache
        assert math.isclose(bench.read_fraction(p, new, phase), sum(slots) / (new * (p + new)))
    assert math.isclose(bench.read_fraction(32, 1024, 256), 2688 / 4 / 1056)
    # a prompt shared by 8 rows counts 32 / 8 slots per row
    assert math.isclose(bench.read_fraction(32, 1024, 256, group=8), (4 * 4 + 2560) / 4 / 1028)
