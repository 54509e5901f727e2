"""benchmarks/bench_lora.py: its figures describe what each mode holds (run in-process on the tiny shape).

The LoRA rows of docs/benchmarks.md rest on these: the full mode holds a reference copy and AdamW moments
of every parameter, LoRA holds neither beyond the adapters' moments, and the merged sampler samples the same
tokens as the unmerged one.
"""

import pytest
from benchmark_scripts import load

ARGS = ["--size", "tiny", "--rows", "4", "--micro", "2", "--prompt", "8", "--completion", "8", "--new-tokens", "8",
        "--group", "2", "--repeats", "1", "--worker"]


@pytest.fixture(scope="module")
def results():
    bench = load("bench_lora")
    return bench, {mode: bench.worker(bench.parse_args([*ARGS, "--mode", mode])) for mode in bench.MODES}


def test_full_mode_holds_a_reference_copy_and_moments_of_every_parameter(results):
    _, r = results
    full = r["full"]
    assert full["trained_params"] == full["total_params"]
    assert full["reference_bytes"] == full["trained_bytes"] and full["frozen_bytes"] == 0
    assert 2 * full["trained_bytes"] <= full["optimizer_bytes"] < 2 * full["trained_bytes"] + 1024
    # the update's arguments: parameters, reference, two moments and the batch
    assert full["xla_argument_bytes"] >= 4 * full["trained_bytes"]


def test_lora_mode_trains_adapters_over_the_base_it_also_uses_as_reference(results):
    _, r = results
    full, lora = r["full"], r["lora"]
    assert lora["reference_bytes"] == 0
    assert lora["frozen_bytes"] == full["trained_bytes"]  # the same base, held once
    assert lora["total_params"] == full["total_params"] + lora["trained_params"]
    assert 2 * lora["trained_bytes"] <= lora["optimizer_bytes"] < 2 * lora["trained_bytes"] + 1024
    # the update returns the trained state only: not the base
    assert lora["xla_output_bytes"] < lora["trained_bytes"] + lora["optimizer_bytes"] + 4096
    assert lora["xla_output_bytes"] < 0.5 * full["xla_output_bytes"]


def test_decoding_both_ways_samples_the_same_tokens(results):
    bench, r = results
    lora = r["lora"]
    assert lora["merged_tokens_equal"] is True
    assert all(lora[f"decode_{way}_s"] > 0 for way in bench.DECODE_WAYS)
    table = "\n".join(bench.markdown(r))
    assert "| LoRA / full |" in table and "lora_merged_sampling=true" in table
