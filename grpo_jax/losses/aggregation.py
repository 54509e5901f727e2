"""Reducing a per-token loss [N, T] to one scalar: the choice that decides how tokens are weighted.

  "seq-mean-token-mean"      GRPO paper (arXiv 2402.03300, eq. 3): mean over sequences of each sequence's
                             mean over its tokens. Every sequence weighs the same; long ones have diluted
                             per-token weight. TRL ``loss_type="grpo"``.
  "token-mean"               DAPO (arXiv 2503.14476, eq. 8): masked sum / number of unmasked tokens in the
                             batch. Every token weighs the same. TRL ``loss_type="dapo"``/``"bnpo"``.
  "seq-mean-token-sum"       verl's option: mean over sequences of each sequence's token sum.
  "seq-mean-token-sum-norm"  Dr. GRPO (arXiv 2503.20783): masked sum / (N * max_tokens), max_tokens being a
                             constant (the generation budget), so no length bias. TRL ``loss_type="dr_grpo"``.

A sequence with no unmasked token still counts in N (it contributes 0), as in TRL and verl.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate_loss(
    per_token_loss: jax.Array,
    mask: jax.Array,
    *,
    aggregation: str = "seq-mean-token-mean",
    max_tokens: int | None = None,
) -> jax.Array:
    """Reduce ``per_token_loss`` [N, T] over unmasked tokens (``mask`` [N, T], 0/1) to a float32 scalar.

    ``max_tokens`` is the Dr. GRPO normaliser (defaults to T); other aggregations ignore it.
    """
    fn = "aggregate_loss"
    v.require_choice(fn, "aggregation", aggregation, AGGREGATIONS)
    v.require_same_shape(fn, "mask", mask, "per_token_loss", per_token_loss)
    if max_tokens is not None:
        max_tokens = v.as_int(fn, "max_tokens", max_tokens, minimum=1, what=" or None")
    m = jnp.asarray(mask, jnp.float32)
    # where, not a product: a NaN/inf in a padded slot must not leak into the loss (NaN * 0 = NaN)
    masked = jnp.where(m > 0, jnp.asarray(per_token_loss, jnp.float32), 0.0) * m
    n, t = masked.shape
    if aggregation == "seq-mean-token-mean":
        return jnp.sum(jnp.sum(masked, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)) / max(n, 1)
    if aggregation == "token-mean":
        return jnp.sum(masked) / jnp.maximum(jnp.sum(m), 1.0)
    if aggregation == "seq-mean-token-sum":
        return jnp.sum(masked) / max(n, 1)
    return jnp.sum(masked) / max(n * (t if max_tokens is None else max_tokens), 1)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over unmasked entries (``x`` broadcastable to ``mask``), 0 when nothing is unmasked."""
    m = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), jnp.broadcast_shapes(jnp.shape(x), jnp.shape(mask)))
    return jnp.sum(jnp.where(m > 0, jnp.asarray(x, jnp.float32), 0.0) * m) / jnp.maximum(jnp.sum(m), 1.0)
