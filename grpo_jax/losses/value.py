"""The critic's loss in PPO: a clipped regression of per-token values onto their GAE returns.

Per completion token t (values V from the critic being trained, V_old from the critic that scored the batch,
R the returns of grpo_jax.losses.gae_advantages):

    V_clip = V_old + clip(V - V_old, -value_clip, value_clip)
    loss_t = 0.5 * max((V - R)^2, (V_clip - R)^2)

(PPO's value clipping as in OpenAI baselines, InstructGPT and verl), averaged over the unmasked tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v
from grpo_jax.losses.aggregation import masked_mean


def value_loss(values_NxT: jax.Array, old_values_NxT: jax.Array, returns_NxT: jax.Array, mask_NxT: jax.Array, *,
               value_clip: float | None = 0.2) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics): the clipped value loss above (``value_clip`` None: unclipped, 0.5 (V - R)^2), a float32
    scalar. Padding (mask 0) may hold anything. Metrics, without gradient: "value_loss"; "value_clip_frac",
    the fraction of tokens where the clipped term is the larger; "value_mean" (of V), "return_mean" and
    "value_error" = mean |V - R| over the unmasked tokens."""
    fn = "value_loss"
    v.require_rank(fn, "values_NxT", values_NxT, (2,), "[N, T] per-token values")
    for name, x in (("old_values_NxT", old_values_NxT), ("returns_NxT", returns_NxT), ("mask_NxT", mask_NxT)):
        v.require_same_shape(fn, name, x, "values_NxT", values_NxT)
    if value_clip is not None:
        v.require_positive(fn, "value_clip", value_clip)
    m = jnp.asarray(mask_NxT, jnp.float32)

    def real(x):
        return jnp.where(m > 0, jnp.asarray(x, jnp.float32), 0.0)

    values, old, returns = real(values_NxT), real(old_values_NxT), real(returns_NxT)
    unclipped = jnp.square(values - returns)
    if value_clip is None:
        per_token, clipped_larger = unclipped, jnp.zeros_like(unclipped)
    else:
        clipped = jnp.square(old + jnp.clip(values - old, -value_clip, value_clip) - returns)
        per_token, clipped_larger = jnp.maximum(unclipped, clipped), clipped > unclipped
    loss = 0.5 * masked_mean(per_token, m)
    sg = jax.lax.stop_gradient
    metrics = {"value_loss": loss, "value_clip_frac": masked_mean(clipped_larger, m),
               "value_mean": masked_mean(values, m), "return_mean": masked_mean(returns, m),
               "value_error": masked_mean(jnp.abs(values - returns), m)}
    return loss, {k: sg(x) for k, x in metrics.items()}
