"""benchmarks/bench_gpu_roofline.py: its FLOP and byte counts are right, and its code path runs (on the CPU).

The GPU figures in docs/benchmarks.md are only as good as these counts: FLOPs are checked against XLA's own
cost analysis of the forward pass, bytes against the parameters the model actually has.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from benchmark_scripts import load

from grpo_jax.models import build_model, init_params
from grpo_jax.models.model import positions_from_mask
from grpo_jax.models.transformer import unembedding_matrix


@pytest.fixture(scope="module")
def bench():
    return load("bench_gpu_roofline")


def test_forward_flops_match_xla_cost_analysis(bench):
    config = bench.model_config("tiny", dtype=jnp.float32)
    model = build_model(config)
    params = init_params(model, jax.random.key(0))
    rows, seq, logit_positions = 4, 32, 12

    def forward(params, ids, mask):
        hidden, _ = model.apply({"params": params}, ids, positions_from_mask(mask), mask, return_hidden=True)
        return hidden[:, -logit_positions:] @ unembedding_matrix(config, params)

    ids = jnp.ones((rows, seq), jnp.int32)
    cost = jax.jit(forward).lower(params, ids, jnp.ones_like(ids)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = bench.forward_flops(config, rows, seq, logit_positions)
    # XLA also counts the elementwise work (norms, rotary, softmax, SwiGLU) that the model-FLOP count leaves out
    assert ours <= cost["flops"] <= 1.12 * ours, (ours, cost["flops"])


def test_decode_bytes_read_every_parameter_once_and_the_valid_cache(bench):
    config = bench.model_config("tiny", param_dtype=jnp.bfloat16)
    params = init_params(build_model(config), jax.random.key(0))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))  # the tied embedding is one array
    assert bench.decode_bytes(config, rows=0, context=0) == weight_bytes
    # keys and values, bf16, every layer and kv head: [rows, context, layers, 2, K, Dh] x 2 bytes
    kv_per_token = config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 2
    assert bench.decode_bytes(config, rows=3, context=10) - weight_bytes == 3 * 10 * kv_per_token
    # a prompt's slots shared by its rows are read once
    shared = bench.decode_bytes(config, rows=3, context=10, shared_slots=4) - weight_bytes
    assert shared == (3 * 10 + 4) * kv_per_token


def test_smoke_run_on_cpu_writes_its_report(bench, tmp_path, capsys):
    """One run of the whole code path on the tiny shape: the update in 1 micro-batch (the size's own is 2),
    and the three decode variants (bf16 weights, fp32 masters cast once, fp32 converted in every step and the stop
    checked every 4 steps), whose byte counts must differ only by the weights each step reads."""
    out = tmp_path / "roofline.json"
    assert bench.main(["--sizes", "tiny", "--allow-cpu", "--repeats", "1", "--json", str(out),
                       "--decode-variants", "bf16,fp32-once,fp32-every-step:4", "--update-micro-batches", "1",
                       "--profile", str(tmp_path / "trace")]) == 0
    assert len(list((tmp_path / "trace").glob("tiny-*/**/perfetto_trace.json.gz"))) == 3  # one per decode variant
    report = json.loads(out.read_text())
    (update,), (bf16, cast_once, every_step) = report["update"], report["decode"]
    assert update["micro_batches"] == 1 and np.isfinite(update["loss"]) and update["step_s"] > 0
    assert update["model_flops"] == 3 * bench.forward_flops(bench.model_config("tiny"), 8, 16, 8)
    assert bf16["rows"] == 8 and bf16["total_s"] > 0
    assert "| Qwen2.5-tiny shape" in capsys.readouterr().out
    assert (cast_once["param_dtype"], cast_once["cast_params_once"]) == ("float32", True)
    assert (every_step["param_dtype"], every_step["cast_params_once"]) == ("float32", False)
    # the stop checked every 4 steps there (8 new tokens: 8 steps, against 4 in the 1-token call); every step
    # elsewhere, the CPU's default
    assert [d["decode_steps_per_check"] for d in (bf16, cast_once, every_step)] == [1, 1, 4]
    # the bf16 copy is read like bf16 weights; converting in every step reads the fp32 masters
    assert cast_once["least_bytes_per_step"] == bf16["least_bytes_per_step"]
    n = bench.parameter_count(bench.model_config("tiny"))
    assert every_step["least_bytes_per_step"] - bf16["least_bytes_per_step"] == 2 * n


@pytest.mark.parametrize("args, message", [(["--parts", "prefill"], "--parts takes update, decode"),
                                           (["--sizes", "7b"], "unknown size '7b'"),
                                           (["--update-micro-batches", "3"], "positive divisor of the 8 update rows"),
                                           (["--update-micro-batches", "two"], "comma-separated integers"),
                                           (["--decode-variants", "fp16"], "unknown weights 'fp16'"),
                                           (["--decode-variants", "bf16:0"], "must be a positive integer"),
                                           (["--decode-variants", "bf16:8"], "fewer than the 8 new tokens")])
def test_bad_arguments_are_refused_before_anything_runs(bench, capsys, args, message):
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "tiny", *args])  # without --allow-cpu: refused before the no-accelerator skip
    assert message in capsys.readouterr().err


def test_without_accelerator_it_skips(bench, capsys):
    assert bench.main(["--sizes", "tiny"]) == 0
    assert "no accelerator; skipped" in capsys.readouterr().out
