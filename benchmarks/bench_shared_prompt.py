"""Prompts run once per group (grpo_jax.models.shared_prompt) against one plain forward over every row.

On the step benchmark's model (workload.py's Qwen2 sizes, random weights, fp32) and a GRPO batch of
``--prompts`` prompts x G completions, times the two programs of a step that see whole sequences: the
reference log-probs (forward) and the gradient of the summed log-probs with the entropy metric (the
update's bulk), with ``prompt_group`` 1 (plain) and G (shared), alternating, medians of ``--repeats``.
The predicted ratio is the token-layer count, (P / G + T) / (P + T); attention (quadratic in the length)
and the LM head (on the T completion positions in both) move the measured one around it. Its model,
batch, programs and alternating timer are shared with bench_attention.py.

    python benchmarks/bench_shared_prompt.py [--size small] [--prompt-lengths 32 128] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import workload  # noqa: E402
from report import emit_table, machine_description  # noqa: E402


def workload_parser(doc: str, prompts: int) -> argparse.ArgumentParser:
    """The options these program benchmarks share: --size, --prompts, --num-generations, --repeats, --markdown."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(workload.SIZES))
    parser.add_argument("--prompts", type=int, default=prompts)
    parser.add_argument("--num-generations", type=int, default=workload.NUM_GENERATIONS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", help="append the table to this file")
    return parser


def model_config(size: str, **options):
    """The workload's Qwen2 ModelConfig at ``size`` (tied embeddings, fp32), with run-time ``options``."""
    from grpo_jax.models import ModelConfig

    shape = workload.SIZES[size]
    return ModelConfig(model_type="qwen2", head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                       tie_word_embeddings=True, **shape, **options)


def grpo_batch(vocab_size: int, prompts: int, group: int, prompt_length: int, completion_length: int):
    """(input_ids, attention_mask) [prompts * group, P + T]: random prompts, each repeated for its group."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    prompt_ids = np.repeat(rng.integers(2, vocab_size, (prompts, prompt_length)), group, axis=0)
    ids = jnp.asarray(np.concatenate(
        [prompt_ids, rng.integers(2, vocab_size, (prompts * group, completion_length))], axis=1), jnp.int32)
    return ids, jnp.ones_like(ids)


def logprob_programs(model, ids, mask, completion_length: int, prompt_group: int) -> dict:
    """{name: jitted fn(params)}: the reference log-probs (forward) and the gradient of the summed log-probs
    with the entropy metric (the update's bulk)."""
    import jax
    import jax.numpy as jnp

    from grpo_jax.trainer.step import completion_logprobs

    def logp(p, entropy=False):
        return completion_logprobs(model, p, ids, mask, completion_length, temperature=1.0, with_entropy=entropy,
                                   prompt_group=prompt_group)

    return {"reference log-probs": jax.jit(logp),
            "gradient (update)": jax.jit(jax.grad(lambda p: jnp.sum(logp(p, True)[0])))}


def alternate(variants: dict, params, repeats: int) -> dict:
    """{program: {variant: median seconds}} for ``variants`` {variant: {program: fn(params)}}: each program
    compiled and warmed up in every variant, then the variants alternated ``repeats`` times so that the
    machine's drift affects them alike."""
    import jax
    from bench_gpu_roofline import timed  # the benchmarks' one timing loop (this script's folder is on sys.path)

    names = next(iter(variants.values())).keys()
    times: dict = {}
    for name in names:
        for programs in variants.values():
            jax.block_until_ready(programs[name](params))
        times[name] = {v: [] for v in variants}
        for _ in range(repeats):
            for v, programs in variants.items():
                times[name][v] += timed(lambda program=programs[name]: program(params), 1)
    return {name: {v: statistics.median(ts) for v, ts in by_variant.items()} for name, by_variant in times.items()}


def measure(size: str, prompts: int, group: int, prompt_length: int, completion_length: int,
            repeats: int) -> dict[str, dict[int, float]]:
    """{program: {prompt_group: median seconds}} for 1 and ``group``."""
    import jax

    from grpo_jax.models import build_model, init_params

    model = build_model(model_config(size))
    params = init_params(model, jax.random.key(0))
    ids, mask = grpo_batch(model.config.vocab_size, prompts, group, prompt_length, completion_length)
    variants = {g: logprob_programs(model, ids, mask, completion_length, g) for g in (1, group)}
    return alternate(variants, params, repeats)


def main() -> None:
    parser = workload_parser(__doc__, prompts=8)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[workload.PROMPT_WORDS, 128])
    parser.add_argument("--completion-length", type=int, default=workload.MAX_NEW_TOKENS)
    args = parser.parse_args()

    g, t = args.num_generations, args.completion_length
    lines = [
        f"{machine_description()}; {args.size} model, {args.prompts} prompts x G {g}, {t} completion tokens, "
        f"fp32, median of {args.repeats} alternating repeats.",
        "",
        "| prompt tokens | program | plain s | shared s | shared / plain | predicted (token-layers) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for p in args.prompt_lengths:
        result = measure(args.size, args.prompts, g, p, t, args.repeats)
        predicted = (p / g + t) / (p + t)
        for name, by_group in result.items():
            lines.append(f"| {p} | {name} | {by_group[1]:.2f} | {by_group[g]:.2f} | {by_group[g] / by_group[1]:.2f} "
                         f"| {predicted:.2f} |")
            print(lines[-1], flush=True)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
