"""Dense layers as 2-D matmuls: ``dense(x, kernel)`` for the model's projections and the LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense(x: jax.Array, kernel: jax.Array, **dot_kwargs) -> jax.Array:
    """x [..., D] @ kernel [D, F] -> [..., F], as one 2-D matmul over the flattened leading axes.

    The same values as ``x @ kernel``; the 2-D form matters for the backward pass on the CPU, where XLA
    lowers the weight gradient of a 3-D ``[B, T, D] @ [D, F]`` by transposing the [B, T, F] activation
    gradient (fused with the elementwise ops before it, strided and slow), while ``[B*T, D]`` operands need
    no transpose (docs/benchmarks.md, "Profiling the CPU step", times both forms).
    The reshapes are free.
    """
    lead = x.shape[:-1]
    return jnp.matmul(x.reshape(-1, x.shape[-1]), kernel, **dot_kwargs).reshape(*lead, kernel.shape[-1])
