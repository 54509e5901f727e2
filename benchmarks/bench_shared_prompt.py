"""Prompts run once per group (grpo_jax.models.shared_prompt) against one plain forward over every row.

On the step benchmark's model (workload.py's Qwen2 sizes, random weights, fp32) and a GRPO batch of
``--prompts`` prompts x G completions, times the two programs of a step that see whole sequences: the
reference log-probs (forward) and the gradient of the summed log-probs with the entropy metric (the
update's bulk), with ``prompt_group`` 1 (plain) and G (shared), alternating, medians of ``--repeats``.
The predicted ratio is the token-layer count, (P / G + T) / (P + T); attention (quadratic in the length)
and the LM head (on the T completion positions in both) move the measured one around it.

    python benchmarks/bench_shared_prompt.py [--size small] [--prompt-lengths 32 128] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import workload  # noqa: E402
from report import emit_table  # noqa: E402


def measure(size: str, prompts: int, group: int, prompt_length: int, completion_length: int,
            repeats: int) -> dict[str, dict[int, float]]:
    """{program: {prompt_group: median seconds}} for 1 and ``group``."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_gpu_roofline import timed  # the benchmarks' one timing loop (this script's folder is on sys.path)

    from grpo_jax.models import ModelConfig, build_model, init_params
    from grpo_jax.trainer.step import completion_logprobs

    config = ModelConfig(model_type="qwen2", head_dim=workload.SIZES[size]["hidden_size"]
                         // workload.SIZES[size]["num_attention_heads"], tie_word_embeddings=True,
                         **workload.SIZES[size])
    model = build_model(config)
    params = init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompt_ids = np.repeat(rng.integers(2, config.vocab_size, (prompts, prompt_length)), group, axis=0)
    ids = jnp.asarray(np.concatenate(
        [prompt_ids, rng.integers(2, config.vocab_size, (prompts * group, completion_length))], axis=1), jnp.int32)
    mask = jnp.ones_like(ids)
    t = completion_length

    def logp(p, g, entropy=False):
        return completion_logprobs(model, p, ids, mask, t, temperature=1.0, with_entropy=entropy, prompt_group=g)

    programs = {
        "reference log-probs": lambda g: jax.jit(lambda p: logp(p, g)),
        "gradient (update)": lambda g: jax.jit(jax.grad(lambda p: jnp.sum(logp(p, g, True)[0]))),
    }
    times: dict[str, dict[int, list[float]]] = {}
    for name, make in programs.items():
        compiled = {g: make(g) for g in (1, group)}
        for fn in compiled.values():
            jax.block_until_ready(fn(params))  # compile and warm up
        times[name] = {g: [] for g in compiled}
        for _ in range(repeats):  # alternate so drift affects both alike
            for g, fn in compiled.items():
                times[name][g] += timed(lambda: fn(params), 1)
    return {name: {g: statistics.median(ts) for g, ts in by_group.items()} for name, by_group in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small", choices=sorted(workload.SIZES))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=workload.NUM_GENERATIONS)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[workload.PROMPT_WORDS, 128])
    parser.add_argument("--completion-length", type=int, default=workload.MAX_NEW_TOKENS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", help="append the table to this file")
    args = parser.parse_args()
    import jax

    g, t = args.num_generations, args.completion_length
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}; {args.size} model, {args.prompts} prompts x G {g}, {t} completion tokens, fp32, "
        f"median of {args.repeats} alternating repeats.",
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
