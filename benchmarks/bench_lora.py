"""LoRA against full fine-tuning on a Qwen2.5-shaped random model (issue 23): the GRPO update's memory and
time, and the sampler's two ways of decoding the LoRA policy.

Each mode runs in a fresh worker process (so its peak RSS is its own), on one device, with the trainer's own
pieces (``make_update_fn``, ``create_state``, ``sampling_policy``, ``generate``):

* full: every parameter trained, AdamW state for all, and (beta > 0) the reference model a second copy;
* lora: rank-r adapters on every attention and MLP projection over a frozen base, which is also the
  reference policy (``TrainState.frozen``; no copy).

Reported per mode: bytes of the trained parameters, optimizer state, reference and frozen base; XLA's memory
analysis of the compiled update (arguments, outputs, temporaries); the median update time; the peak RSS
after the updates. For LoRA, decoding is timed three ways at the same batch: the adapters applied in every
decode step (``model.lora_merged_sampling=false``, the default), folded into a copy of the kernels first
(``true``; the merge is part of each call, as the trainer merges once per step), and the base alone for
scale (no adapters).

    python benchmarks/bench_lora.py --size 0.5b --json lora.json --markdown docs/benchmarks.md
    python benchmarks/bench_lora.py --size tiny                 # a smoke run of the code path

Defaults suit a CPU (float32 compute: bfloat16 matmuls are slow there); on a GPU pass --dtype bfloat16 and a
larger workload.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_gpu_roofline import QWEN25, model_config, timed, timed_updates  # noqa: E402
from report import emit_table, machine_description  # noqa: E402

MODES = ("full", "lora")
DECODE_WAYS = ("unmerged", "merged", "base")


def nbytes(tree: Any) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def build(size: str, mode: str, rank: int, dtype: Any, mesh):
    """(model, params) of ``size``: the policy, with fresh rank-``rank`` adapters under ``mode`` lora whose B
    is made non-zero, so the adapted model differs from its base as it does after training."""
    from grpo_jax.models import build_model, init_params
    from grpo_jax.models.lora import LoraConfig

    lora = LoraConfig(rank=rank, alpha=2.0 * rank) if mode == "lora" else None
    config = model_config(size, param_dtype=jnp.float32, dtype=dtype).replace(lora=lora)
    model = build_model(config, mesh)
    params = init_params(model, jax.random.key(0), mesh)
    if lora is not None:
        params = jax.tree_util.tree_map_with_path(
            lambda path, x: x + 1e-3 if path[-1].key.endswith("_lora_b") else x, params)
    return model, params


def update_figures(model, params, mesh, rows: int, prompt: int, completion: int, micro: int,
                   repeats: int) -> dict:
    """The state's parts in bytes, XLA's memory analysis of the update and its median time, peak RSS."""
    from grpo_jax.models.lora import count_params
    from grpo_jax.trainer.config import GRPOConfig, OptimizerConfig
    from grpo_jax.trainer.lora import split_trained
    from grpo_jax.trainer.state import build_optimizer, create_state, state_shardings
    from grpo_jax.trainer.step import grpo_objective, make_update_fn

    grpo = GRPOConfig(beta=0.04)
    optimizer, schedule = build_optimizer(OptimizerConfig(learning_rate=1e-6), 100)
    frozen, trained = split_trained(model, params)
    del params
    state = create_state(trained, optimizer, mesh, seed=0, with_reference=frozen is None, frozen=frozen)
    update = make_update_fn(model, optimizer, schedule, mesh, state_shardings(state), objective=grpo_objective(grpo),
                            temperature=1.0, accumulation_steps=micro, token_weighted=False, name="grpo_update")
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(0, vocab, (rows, prompt + completion)).astype(np.int32),
        "attention_mask": np.ones((rows, prompt + completion), np.int32),
        "completion_mask": np.ones((rows, completion), np.float32),
        "advantages": rng.standard_normal(rows).astype(np.float32),
        "old_logprobs": np.full((rows, completion), -np.log(vocab), np.float32),
        "ref_logprobs": np.full((rows, completion), -np.log(vocab), np.float32),
    }
    figures = {"trained_bytes": nbytes(state.params), "optimizer_bytes": nbytes(state.opt_state),
               "reference_bytes": nbytes(state.ref_params), "frozen_bytes": nbytes(state.frozen),
               "trained_params": count_params(state.params), "total_params": count_params(state.policy_params())}
    analysis = update.lower(state, batch, 1).compile().memory_analysis()
    figures.update(xla_argument_bytes=analysis.argument_size_in_bytes, xla_output_bytes=analysis.output_size_in_bytes,
                   xla_temp_bytes=analysis.temp_size_in_bytes, xla_alias_bytes=analysis.alias_size_in_bytes)
    state, metrics, figures["compile_and_first_s"], times = timed_updates(update, state, batch, repeats)
    figures.update(update_s=statistics.median(times), update_s_all=times, loss=float(metrics["loss"].value),
                   peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return figures, state.policy_params()


def decode_figures(model, params, prompts: int, group: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    """Median seconds of one sampler call (``new_tokens`` each for prompts x G rows, no EOS) per way of
    decoding the LoRA policy; "merged" includes the merge it needs, also timed alone as merge_s."""
    from grpo_jax.models.lora import split_adapters
    from grpo_jax.models.model import without_adapters
    from grpo_jax.sampling import SamplingConfig, generate
    from grpo_jax.trainer.lora import sampling_policy

    ids = np.random.default_rng(1).integers(1, model.config.vocab_size, (prompts, prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    sampling = SamplingConfig(num_generations=group, max_new_tokens=new_tokens, pad_token_id=0, eos_token_ids=())
    key = jax.random.key(2)
    ways = {
        "unmerged": lambda: generate(*sampling_policy(model, params, merged=False), ids, mask, key, sampling),
        "merged": lambda: generate(*sampling_policy(model, params, merged=True), ids, mask, key, sampling),
        "base": lambda: generate(without_adapters(model), split_adapters(params)[0], ids, mask, key, sampling),
    }
    out, tokens = {}, {}
    for name, call in ways.items():
        tokens[name] = np.asarray(call().tokens)  # the compile
        out[f"decode_{name}_s"] = statistics.median(timed(lambda call=call: call().tokens, repeats))
    out["merge_s"] = statistics.median(timed(lambda: sampling_policy(model, params, merged=True)[1], repeats))
    # folding the adapters in changes only the sums' rounding: the same tokens on small models, but a near-flat
    # distribution (a random model over a large vocabulary) can turn that rounding into other samples
    out["merged_tokens_equal"] = bool(np.array_equal(tokens["merged"], tokens["unmerged"]))
    out["decode_rows"], out["decode_new_tokens"] = prompts * group, new_tokens
    return out


def worker(args) -> dict:
    from grpo_jax.sharding import make_mesh

    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model, params = build(args.size, args.mode, args.rank, jnp.dtype(args.dtype), mesh)
    figures, params = update_figures(model, params, mesh, args.rows, args.prompt, args.completion, args.micro,
                                     args.repeats)
    figures.update(size=args.size, mode=args.mode, rank=args.rank, dtype=args.dtype, rows=args.rows,
                   prompt=args.prompt, completion=args.completion, micro_batches=args.micro)
    if args.mode == "lora" and args.decode:
        figures.update(decode_figures(model, params, args.decode_prompts, args.group, args.prompt,
                                      args.new_tokens, args.repeats))
    return figures


def run_worker(args, mode: str) -> dict:
    flags = ["--worker", "--mode", mode]
    for name in ("size", "rank", "dtype", "rows", "prompt", "completion", "micro", "repeats", "decode_prompts",
                 "group", "new_tokens"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if not args.decode:
        flags.append("--no-decode")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *flags], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_lora worker ({mode}) failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict]) -> list[str]:
    full, lora = results["full"], results["lora"]
    mb = 1e6
    lines = [machine_description(),
             f"Qwen2.5-{full['size']} shape, random weights, {full['dtype']} compute, fp32 parameters; update of "
             f"{full['rows']} rows x ({full['prompt']} + {full['completion']}) tokens in {full['micro_batches']} "
             f"micro-batches, beta 0.04; LoRA rank {lora['rank']} on every attention and MLP projection.", "",
             "| | trained params | trained MB | AdamW MB | reference MB | frozen base MB | XLA args MB "
             "| XLA temps MB | XLA outputs MB | update s (median) | peak RSS GB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in (("full fine-tuning", full), ("LoRA", lora)):
        lines.append(f"| {name} | {r['trained_params'] / 1e6:.1f}M of {r['total_params'] / 1e6:.1f}M | "
                     f"{r['trained_bytes'] / mb:.0f} | {r['optimizer_bytes'] / mb:.0f} | "
                     f"{r['reference_bytes'] / mb:.0f} | {r['frozen_bytes'] / mb:.0f} | "
                     f"{r['xla_argument_bytes'] / mb:.0f} | {r['xla_temp_bytes'] / mb:.0f} | "
                     f"{r['xla_output_bytes'] / mb:.0f} | {r['update_s']:.2f} | {r['peak_rss_bytes'] / 1e9:.2f} |")
    lines.append(f"| LoRA / full | | | {lora['optimizer_bytes'] / full['optimizer_bytes']:.3f} | | | "
                 f"{lora['xla_argument_bytes'] / full['xla_argument_bytes']:.2f} | "
                 f"{lora['xla_temp_bytes'] / full['xla_temp_bytes']:.2f} | "
                 f"{lora['xla_output_bytes'] / full['xla_output_bytes']:.3f} | "
                 f"{lora['update_s'] / full['update_s']:.2f} | "
                 f"{lora['peak_rss_bytes'] / full['peak_rss_bytes']:.2f} |")
    if "decode_unmerged_s" in lora:
        base = lora["decode_base_s"]
        lines += ["", f"LoRA decoding, {lora['decode_rows']} rows x {lora['decode_new_tokens']} new tokens, one "
                  f"sampler call (median):", "",
                  "| way | s per call | / base model |", "| --- | --- | --- |"]
        for way, label in (("unmerged", "adapters in every decode step (lora_merged_sampling=false)"),
                           ("merged", "merged once per call, merge included (lora_merged_sampling=true)"),
                           ("base", "the base alone, no adapters (for scale)")):
            t = lora[f"decode_{way}_s"]
            lines.append(f"| {label} | {t:.2f} | {t / base:.2f} |")
        lines.append(f"| the merge alone | {lora['merge_s']:.3f} | {lora['merge_s'] / base:.3f} |")
        lines += ["", f"Merged and unmerged sampled the same tokens: {lora['merged_tokens_equal']}."]
    return lines


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="0.5b", choices=sorted(QWEN25))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="float32", help="compute dtype (parameters are float32)")
    parser.add_argument("--rows", type=int, default=8, help="update rows (completions)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens, update and decode")
    parser.add_argument("--completion", type=int, default=64, help="completion tokens in the update")
    parser.add_argument("--micro", type=int, default=2, help="micro-batches of the update")
    parser.add_argument("--decode-prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4, help="G, completions per prompt when decoding")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="time the update only")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--markdown", help="append the tables to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rows % args.micro:
        parser.error(f"--micro {args.micro} must divide --rows {args.rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    results = {}
    for mode in MODES:
        results[mode] = run_worker(args, mode)
        print(json.dumps({k: v for k, v in results[mode].items() if k != "update_s_all"}), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    emit_table(markdown(results), args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
