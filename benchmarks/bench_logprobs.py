"""Token log-probs at Qwen's vocabulary: naive logits vs grpo_jax's time-chunked path, side by side.

For each shape, measures (a) compiled temporary memory of the forward and of forward+backward, from
XLA's memory analysis, and (b) wall time of forward+backward, as the median of alternating repeats.
Both paths compute the same values (tests/test_logprobs.py); this measures what the chunking costs and
what it saves.

    python benchmarks/bench_logprobs.py [--repeats 5] [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from report import emit_table, machine_description

from grpo_jax.losses import token_logprobs, token_logprobs_from_hidden

VOCAB = 151_936
SHAPES = [  # (batch rows, time, hidden width, chunk size)
    (8, 256, 256, 64),
    (16, 512, 256, 128),
]


def _paths(chunk: int):
    def naive(h, w, tok):
        return jnp.sum(token_logprobs(jnp.einsum("btd,dv->btv", h, w), tok))

    def chunked(h, w, tok):
        return jnp.sum(token_logprobs_from_hidden(h, w, tok, chunk_size=chunk))

    return {"naive": naive, "chunked": chunked}


def measure(b: int, t: int, d: int, chunk: int, repeats: int) -> dict[str, dict[str, float]]:
    rng = np.random.RandomState(0)
    h = jnp.asarray(rng.randn(b, t, d) * 0.1, jnp.float32)
    w = jnp.asarray(rng.randn(d, VOCAB) * 0.05, jnp.float32)
    tok = jnp.asarray(rng.randint(0, VOCAB, (b, t)))
    results: dict[str, dict[str, float]] = {}
    compiled = {}
    for name, fn in _paths(chunk).items():
        fwd = jax.jit(fn).lower(h, w, tok).compile()
        bwd = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(h, w, tok).compile()
        results[name] = {
            "fwd_temp_mb": fwd.memory_analysis().temp_size_in_bytes / 1e6,
            "bwd_temp_mb": bwd.memory_analysis().temp_size_in_bytes / 1e6,
            "times": [],
        }
        compiled[name] = bwd
        jax.block_until_ready(bwd(h, w, tok))  # warm-up
    for _ in range(repeats):  # alternate the two paths so drift affects both alike
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(h, w, tok))
            results[name]["times"].append(time.perf_counter() - start)
    for r in results.values():
        r["median_s"] = statistics.median(r.pop("times"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", help="append a results table to this file")
    args = parser.parse_args()

    lines = [
        f"{machine_description()}; V = {VOCAB:,}, fp32, median of {args.repeats}.",
        "",
        "| B x T x D (chunk) | full logits MB | naive fwd / fwd+bwd temp MB | chunked fwd / fwd+bwd temp MB "
        "| naive fwd+bwd s | chunked fwd+bwd s | time chunked / naive |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b, t, d, chunk in SHAPES:
        r = measure(b, t, d, chunk, args.repeats)
        n, c = r["naive"], r["chunked"]
        lines.append(
            f"| {b} x {t} x {d} ({chunk}) | {b * t * VOCAB * 4 / 1e6:,.0f} "
            f"| {n['fwd_temp_mb']:,.0f} / {n['bwd_temp_mb']:,.0f} | {c['fwd_temp_mb']:,.0f} / {c['bwd_temp_mb']:,.0f} "
            f"| {n['median_s']:.2f} | {c['median_s']:.2f} | {c['median_s'] / n['median_s']:.2f} |"
        )
        print(lines[-1], flush=True)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
