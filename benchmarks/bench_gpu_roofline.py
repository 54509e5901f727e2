"""Accelerator roofline: GRPO update-step MFU and decode memory-bandwidth utilisation (issue 8).

For Qwen2.5-shaped models with random weights (0.5B and 1.5B: Qwen2.5's hidden sizes, layers, heads, GQA,
vocabulary 151,936, tied embeddings), on one device:

* ceilings, measured here: a bf16 [8192 x 8192] x [8192 x 8192] matmul (FLOP/s) and a device-to-device
  copy of 2 GiB (bytes read + written per second);
* the GRPO update (``grpo_jax.trainer.step.make_update_fn``, AdamW, beta 0.04, fp32 master parameters, bf16
  compute, gradient accumulation over micro-batches): model FLOPs per update / median time / measured
  matmul rate = MFU;
* decoding (``grpo_jax.sampling.generate``, batch >= 256, no EOS so every row runs the full length): the
  time per decode step is (time of N new tokens - time of 1 new token) / (N - 1); the bytes a decode step
  must read at the least are the weights (bf16: the matrices and the LM head, once) plus the valid part of
  the KV cache (each prompt's slots once, as the sampler keeps them, and each row's own new tokens);
  utilisation = those bytes / step time / measured copy bandwidth.

    python benchmarks/bench_gpu_roofline.py --json roofline.json          # needs a GPU (skips without one)
    python benchmarks/bench_gpu_roofline.py --sizes tiny --allow-cpu      # a smoke run of the code path

FLOPs are counted analytically (``forward_flops``); tests/test_bench_gpu_roofline.py checks the count
against XLA's own cost analysis of the forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from grpo_jax.models import ModelConfig, build_model, init_params  # noqa: E402
from grpo_jax.models.memory import kv_cache_bytes_per_token, parameter_count  # noqa: E402
from grpo_jax.sampling import SamplingConfig, generate, steps_per_check_for  # noqa: E402
from grpo_jax.sharding import make_mesh  # noqa: E402

QWEN25 = {  # Qwen2.5 shapes (config.json of Qwen/Qwen2.5-0.5B and -1.5B); weights are random here
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, head_dim=64),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, head_dim=128),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
}
VOCAB = {"0.5b": 151936, "1.5b": 151936, "tiny": 512}

# workloads: (rows, prompt length, completion length, micro-batches) for the update;
# (prompts, G, prompt length, new tokens) for decoding
UPDATE = {"0.5b": (128, 128, 384, 8), "1.5b": (128, 128, 384, 16), "tiny": (8, 8, 8, 2)}
DECODE = {"0.5b": (32, 8, 128, 256), "1.5b": (32, 8, 128, 256), "tiny": (2, 4, 8, 8)}


def model_config(size: str, param_dtype: Any = jnp.float32, dtype: Any = jnp.bfloat16) -> ModelConfig:
    return ModelConfig(model_type="qwen2", vocab_size=VOCAB[size], rope_theta=1e6, tie_word_embeddings=True,
                       qkv_bias=True, max_position_embeddings=4096, param_dtype=param_dtype, dtype=dtype,
                       **QWEN25[size])


def forward_flops(config: ModelConfig, rows: int, seq_len: int, logit_positions: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass over [rows, seq_len] tokens, with the LM head on
    ``logit_positions`` positions per row. Attention counts the full S x S score matrix (what the model
    computes; PaLM's convention). Norms, rotary, softmax and the loss are not counted (< 1%)."""
    d, f, h, k, dh = (config.hidden_size, config.intermediate_size, config.num_attention_heads,
                      config.num_key_value_heads, config.head_dim)
    tokens = rows * seq_len
    projections = 2 * tokens * d * (h * dh + 2 * k * dh) + 2 * tokens * h * dh * d
    mlp = 2 * tokens * 3 * d * f
    attention = 2 * 2 * rows * seq_len * seq_len * h * dh
    head = 2 * rows * logit_positions * d * config.vocab_size
    return config.num_hidden_layers * (projections + mlp + attention) + head


def decode_bytes(config: ModelConfig, rows: int, context: float, weight_dtype: Any = jnp.bfloat16,
                 cache_dtype: Any = jnp.bfloat16, shared_slots: int = 0) -> float:
    """The least a decode step must read from memory: every parameter once (the tied embedding once, as the
    LM head), each row's ``context`` cached keys and values of its own, and ``shared_slots`` more that rows
    share (the prompts' slots, which the sampler keeps once per prompt)."""
    weights = parameter_count(config) * jnp.dtype(weight_dtype).itemsize
    return weights + (rows * context + shared_slots) * kv_cache_bytes_per_token(config, cache_dtype)


# decode variants by name: (parameter dtype, cast_params_once)
DECODE_WEIGHTS = {"bf16": (jnp.bfloat16, True), "fp32-once": (jnp.float32, True),
                  "fp32-every-step": (jnp.float32, False)}


def parse_decode_variant(name: str) -> tuple[Any, bool, int | None]:
    """"WEIGHTS[:STEPS]" -> (parameter dtype, cast_params_once, decode steps per stop check or None)."""
    weights, _, steps = name.strip().partition(":")
    if weights not in DECODE_WEIGHTS:
        raise ValueError(f"unknown weights {weights!r} in {name!r}; expected one of {', '.join(DECODE_WEIGHTS)}")
    if steps and (not steps.isdigit() or int(steps) < 1):
        raise ValueError(f"steps per stop check in {name!r} must be a positive integer")
    return (*DECODE_WEIGHTS[weights], int(steps) if steps else None)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def timed_updates(update, state, batch: dict, repeats: int) -> tuple[Any, dict, float, list[float]]:
    """(state, metrics, seconds of the first call with its compile, seconds of each of ``repeats`` more):
    ``update(state, batch) -> (state, metrics)`` applied again and again, each timed to its metrics."""
    start = time.perf_counter()
    state, metrics = update(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = update(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return state, metrics, first, times


def measure_ceilings(n: int, copy_bytes: int, repeats: int) -> dict:
    """Matmul FLOP/s (bf16 n x n x n) and copy bandwidth (bytes read + written per second), medians."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))
    t_mm = statistics.median(timed(lambda: matmul(a, b), repeats))
    x = jnp.zeros((copy_bytes // 4,), jnp.float32)
    copy = jax.jit(lambda v: v + 1.0)
    jax.block_until_ready(copy(x))
    t_copy = statistics.median(timed(lambda: copy(x), repeats))
    return {"matmul_flops_per_s": 2 * n ** 3 / t_mm, "copy_bytes_per_s": 2 * x.nbytes / t_copy,
            "matmul_n": n, "copy_gib": x.nbytes / 2 ** 30}


def update_benchmark(size: str, repeats: int, mesh, micro_batches: int | None = None) -> dict:
    """Median time of one GRPO update and its model FLOPs (3 x forward: forward + backward).

    ``micro_batches`` (gradient accumulation steps) defaults to the size's own in ``UPDATE``; fewer, larger
    micro-batches give the matmuls more rows at the cost of activation memory."""
    from grpo_jax.trainer.config import GRPOConfig, OptimizerConfig
    from grpo_jax.trainer.state import build_optimizer, create_state, state_shardings
    from grpo_jax.trainer.step import grpo_objective, make_update_fn

    rows, p, t, micro = UPDATE[size]
    micro = micro_batches or micro
    config = model_config(size)
    model = build_model(config, mesh)
    params = init_params(model, jax.random.key(0), mesh)
    grpo = GRPOConfig(beta=0.04)
    optimizer, schedule = build_optimizer(OptimizerConfig(learning_rate=1e-6), 100)
    state = create_state(params, optimizer, mesh, seed=0, with_reference=False)
    update = make_update_fn(model, optimizer, schedule, mesh, state_shardings(state), objective=grpo_objective(grpo),
                            temperature=1.0, accumulation_steps=micro, token_weighted=False, name="grpo_update")
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(0, config.vocab_size, (rows, p + t)).astype(np.int32),
        "attention_mask": np.ones((rows, p + t), np.int32),
        "completion_mask": np.ones((rows, t), np.float32),
        "advantages": rng.standard_normal(rows).astype(np.float32),
        "old_logprobs": np.full((rows, t), -np.log(config.vocab_size), np.float32),
        "ref_logprobs": np.full((rows, t), -np.log(config.vocab_size), np.float32),
    }
    state, metrics, first, times = timed_updates(update, state, batch, repeats)
    flops = 3 * forward_flops(config, rows, p + t, t)
    return {"size": size, "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
            "rows": rows, "prompt": p, "completion": t, "micro_batches": micro,
            "compile_and_first_s": first, "step_s": statistics.median(times), "step_s_all": times,
            "model_flops": flops, "loss": float(metrics["loss"].value)}


def decode_benchmark(size: str, repeats: int, mesh, param_dtype: Any, cast_params_once: bool = True,
                     steps_per_check: int | None = None, profile_dir: str | None = None) -> dict:
    """Seconds per decode step at batch prompts x G and the least bytes it must read.

    ``param_dtype`` float32 with ``cast_params_once`` is what the trainer samples with (fp32 masters, a bf16
    copy made once per call); without it every decode step converts the fp32 weights it reads.
    ``steps_per_check``: SamplingConfig.decode_steps_per_check (None: the sampler's default for the device).
    ``profile_dir``: after timing, one more long call runs under ``jax.profiler.trace`` writing there (a
    Perfetto trace, ``perfetto_trace.json.gz``, for benchmarks/trace_summary.py or ui.perfetto.dev)."""
    prompts, g, p, new = DECODE[size]
    steps_per_check = steps_per_check or steps_per_check_for(mesh.devices.flat[0].platform)
    if steps_per_check >= new:
        raise ValueError(f"decode of size {size!r}: {steps_per_check} steps per stop check leave no steps to time "
                         f"beyond the first check's in {new} new tokens; use fewer")
    config = model_config(size, param_dtype=param_dtype)
    model = build_model(config, mesh)
    params = init_params(model, jax.random.key(0), mesh)
    ids = np.random.default_rng(0).integers(1, config.vocab_size, (prompts, p)).astype(np.int32)
    mask = np.ones_like(ids)
    key = jax.random.key(1)
    result = {}
    for n in (1, new):
        sampling = SamplingConfig(num_generations=g, max_new_tokens=n, pad_token_id=0,
                                  cast_params_once=cast_params_once, decode_steps_per_check=steps_per_check)
        start = time.perf_counter()
        jax.block_until_ready(generate(model, params, ids, mask, key, sampling).tokens)
        first = time.perf_counter() - start
        t = statistics.median(timed(lambda sampling=sampling: generate(model, params, ids, mask, key, sampling).tokens,
                                    repeats))
        result[n] = (first, t)
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            jax.block_until_ready(generate(model, params, ids, mask, key, sampling).tokens)
    rows = prompts * g
    # no EOS: the long call runs its new tokens rounded up to whole chunks of steps, the short one one chunk
    steps = (-(-new // steps_per_check) - 1) * steps_per_check
    step = (result[new][1] - result[1][1]) / steps
    read_dtype = config.dtype if cast_params_once else param_dtype  # the weights each decode step reads
    # the prompts' keys and values once per prompt (a shared prefix), each row's own new tokens
    least = decode_bytes(config, rows, new / 2, weight_dtype=read_dtype, shared_slots=prompts * p)
    phase = min(new, SamplingConfig.decode_phase_tokens)  # the new-token cache buffer, read whole
    moved = decode_bytes(config, rows, phase, weight_dtype=read_dtype, shared_slots=prompts * p)
    weights = "bf16" if param_dtype == jnp.bfloat16 else (
        "fp32 masters, bf16 copy once per call" if cast_params_once else "fp32 masters, converted every step")
    return {"size": size, "param_dtype": jnp.dtype(param_dtype).name, "cast_params_once": cast_params_once,
            "weights": weights, "decode_steps_per_check": steps_per_check, "rows": rows, "prompt": p,
            "new_tokens": new, "prefill_and_1_s": result[1][1], "total_s": result[new][1],
            "compile_s": result[new][0] - result[new][1], "decode_step_s": step,
            "least_bytes_per_step": least, "buffer_bytes_per_step": moved,
            "tokens_per_s": rows * new / result[new][1]}


def markdown(report: dict) -> str:
    c = report["ceilings"]
    peak, bw = c["matmul_flops_per_s"], c["copy_bytes_per_s"]
    lines = [f"Device: {report['device']}; measured bf16 matmul {peak / 1e12:.0f} TFLOP/s "
             f"({c['matmul_n']}^3), copy {bw / 1e12:.2f} TB/s (read + write, {c['copy_gib']:.0f} GiB).", "",
             "| model | update rows x (prompt + completion) / micro-batches | update s (median) | model TFLOP "
             "| achieved TFLOP/s | MFU |", "| --- | --- | --- | --- | --- | --- |"]
    for u in report["update"]:
        rate = u["model_flops"] / u["step_s"]
        lines.append(f"| Qwen2.5-{u['size']} shape ({u['parameters'] / 1e6:.0f}M) | {u['rows']} x "
                     f"({u['prompt']} + {u['completion']}) / {u['micro_batches']} | {u['step_s']:.3f} | "
                     f"{u['model_flops'] / 1e12:.1f} | {rate / 1e12:.0f} | {100 * rate / peak:.0f}% |")
    lines += ["", "| model | weights | steps per stop check | batch | decode step ms | least bytes / step MB "
              "| HBM roofline use | tokens/s (incl. prefill) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for d in report["decode"]:
        use = d["least_bytes_per_step"] / d["decode_step_s"] / bw
        lines.append(f"| Qwen2.5-{d['size']} shape | {d.get('weights', d['param_dtype'])} | "
                     f"{d.get('decode_steps_per_check', 1)} | {d['rows']} | "
                     f"{1e3 * d['decode_step_s']:.2f} | {d['least_bytes_per_step'] / 1e6:.0f} | {100 * use:.0f}% | "
                     f"{d['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.5b,1.5b")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--allow-cpu", action="store_true", help="run without an accelerator (smoke test)")
    parser.add_argument("--decode-fp32", action="store_true",
                        help="also decode with float32 master weights: converted to bf16 once per call (what the "
                             "trainer does) and converted in every step (cast_params_once=False)")
    parser.add_argument("--decode-variants", default="",
                        help="comma-separated decode variants WEIGHTS[:STEPS], WEIGHTS one of "
                             f"{', '.join(DECODE_WEIGHTS)} and STEPS the decode steps per stop check (default: the "
                             "sampler's for the device), e.g. bf16:1,bf16:16,fp32-once; default bf16 (and with "
                             "--decode-fp32 the two fp32 ones)")
    parser.add_argument("--parts", default="update,decode", help="which measurements: update, decode or both")
    parser.add_argument("--update-micro-batches", default="",
                        help="comma-separated micro-batch counts to time the update with, each its own compile "
                             "(default: each size's own, e.g. 8 for 0.5b); each must divide the update's rows")
    parser.add_argument("--profile", help="trace one more long call of each decode variant under "
                                          "jax.profiler into PROFILE/<size>-<variant index>")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    parts = set(args.parts.split(","))
    if not parts or parts - {"update", "decode"}:
        parser.error(f"--parts takes update, decode or update,decode; got {args.parts!r}")
    try:
        micro_batches = [int(m) for m in args.update_micro_batches.split(",") if m.strip()] or [None]
    except ValueError:
        parser.error(f"--update-micro-batches takes comma-separated integers; got {args.update_micro_batches!r}")
    for size in sizes:
        if size not in UPDATE:
            parser.error(f"--sizes: unknown size {size!r}; known: {', '.join(UPDATE)}")
        rows = UPDATE[size][0]
        if any(m is not None and (m < 1 or rows % m) for m in micro_batches):
            parser.error(f"--update-micro-batches {args.update_micro_batches!r}: each count must be a positive "
                         f"divisor of the {rows} update rows of size {size!r}")
    names = args.decode_variants or ",".join(["bf16"] + (["fp32-once", "fp32-every-step"] if args.decode_fp32 else []))
    try:
        variants = [parse_decode_variant(name) for name in names.split(",")]
    except ValueError as e:
        parser.error(f"--decode-variants: {e}")
    for size in sizes:
        if any(steps is not None and steps >= DECODE[size][3] for _, _, steps in variants):
            parser.error(f"--decode-variants {names!r}: steps per stop check must be fewer than the "
                         f"{DECODE[size][3]} new tokens of size {size!r}")
    device = jax.devices()[0]
    if device.platform == "cpu" and not args.allow_cpu:
        print("bench_gpu_roofline: no accelerator; skipped (pass --allow-cpu for a smoke run)")
        return 0
    mesh = make_mesh({"data": 1}, devices=[device])
    small = sizes == ["tiny"]
    report = {"device": getattr(device, "device_kind", device.platform), "jax": jax.__version__,
              "ceilings": measure_ceilings(256 if small else 8192, 2 ** 20 if small else 2 ** 31, args.repeats),
              "update": [], "decode": []}
    print(json.dumps(report["ceilings"]), flush=True)
    for size in sizes:
        for micro in micro_batches if "update" in parts else ():
            report["update"].append(update_benchmark(size, args.repeats, mesh, micro))
            print(json.dumps(report["update"][-1]), flush=True)
        for i, (dtype, cast, steps) in enumerate(variants if "decode" in parts else ()):
            profile = os.path.join(args.profile, f"{size}-{i}") if args.profile else None
            report["decode"].append(decode_benchmark(size, args.repeats, mesh, dtype, cast, steps, profile))
            print(json.dumps(report["decode"][-1]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
