"""A decode step's attention with each prompt's keys and values shared by its G rows, against a copy per row.

The sampler keeps a prompt's KV cache once per prompt and its G completions attend it as a shared prefix
(``grpo_jax.models.attention.attend(..., prefix=)``); before, the cache was repeated to every row. This times
one decode step's attention of one layer, jitted, both ways, on the step benchmark's model shapes
(workload.py's Qwen2 sizes, fp32): ``--prompts`` x G rows, ``--prompt-lengths`` prompt slots and a cache of
``--new-tokens`` new-token slots filled half way (a decode step in the middle of a completion), medians of
``--repeats`` alternating repeats of 20 calls each. Predicted: the keys and values read per step fall from
rows x (P + T) slots to prompts x P + rows x T, and the prefix's scores become one matmul per prompt.

    python benchmarks/bench_shared_prefix.py [--size small] [--prompt-lengths 32 256 512] [--markdown FILE]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

from bench_shared_prompt import alternate, model_config, workload_parser  # noqa: E402
from report import emit_table, machine_description  # noqa: E402

CALLS = 20  # attention calls per timed repeat: one call is a few milliseconds


def slots_read(prompts: int, group: int, prompt_length: int, new_tokens: int) -> tuple[int, int]:
    """Key/value slots a decode step reads: (shared prefix, a copy per row)."""
    rows = prompts * group
    return prompts * prompt_length + rows * new_tokens, rows * (prompt_length + new_tokens)


def measure(size: str, prompts: int, group: int, prompt_length: int, new_tokens: int,
            repeats: int) -> dict[str, float]:
    """{"copied" | "shared": median seconds of one decode-step attention call}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from grpo_jax.models.attention import DEFAULT_QUERY_BLOCK, attend

    c = model_config(size)
    k, g, dh = c.num_key_value_heads, c.num_attention_heads // c.num_key_value_heads, c.head_dim
    rows, p, t = prompts * group, prompt_length, new_tokens
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    q = normal(rows, 1, k, g, dh)
    prefix = (normal(prompts, k, p, dh), normal(prompts, k, p, dh), jnp.ones((prompts, p), bool))
    own_key, own_value = normal(rows, k, t, dh), normal(rows, k, t, dh)
    step = t // 2  # the decode step's slot among the new tokens
    own_mask = jnp.arange(t)[None, :].repeat(rows, 0) <= step
    copied_key, copied_value = (jnp.concatenate([jnp.repeat(x, group, axis=0), own], axis=2)
                                for x, own in ((prefix[0], own_key), (prefix[1], own_value)))
    copied_mask = jnp.concatenate([jnp.repeat(prefix[2], group, axis=0), own_mask], axis=1)

    def repeated(fn):
        def run(_):
            out = None
            for _ in range(CALLS):
                out = fn()
            return out
        return run

    shared = jax.jit(lambda q, key, value, mask, index, prefix: attend(q, key, value, mask, index,
                                                                       DEFAULT_QUERY_BLOCK, prefix))
    copied = jax.jit(lambda q, key, value, mask, index: attend(q, key, value, mask, index, DEFAULT_QUERY_BLOCK))
    variants = {
        "copied": {"attend": repeated(lambda: copied(q, copied_key, copied_value, copied_mask, jnp.int32(p + step)))},
        "shared": {"attend": repeated(lambda: shared(q, own_key, own_value, own_mask, jnp.int32(step), prefix))},
    }
    return {v: s / CALLS for v, s in alternate(variants, None, repeats)["attend"].items()}


def main() -> None:
    parser = workload_parser(__doc__, prompts=16)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[32, 256, 512])
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()

    g, t = args.num_generations, args.new_tokens
    lines = [
        f"{machine_description()}; {args.size} model's attention shapes, {args.prompts} prompts x G {g}, "
        f"a cache of {t} new-token slots half filled, fp32, one layer, median of {args.repeats} alternating "
        f"repeats of {CALLS} calls.",
        "",
        "| prompt tokens | copied per row ms | shared prefix ms | shared / copied | slots read, shared / copied |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in args.prompt_lengths:
        result = measure(args.size, args.prompts, g, p, t, args.repeats)
        shared, copied = slots_read(args.prompts, g, p, t)
        lines.append(f"| {p} | {1e3 * result['copied']:.2f} | {1e3 * result['shared']:.2f} "
                     f"| {result['shared'] / result['copied']:.2f} | {shared / copied:.2f} |")
        print(lines[-1], flush=True)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
