"""Per-token estimators of KL(pi || pi_ref) from log-probabilities of the sampled tokens.

Schulman's estimators (http://joschu.net/blog/kl-approx.html), with d = log pi_ref(x) - log pi(x) for a
token x sampled from pi:
  "k1": -d                    unbiased, can be negative per token, high variance;
  "k2": d**2 / 2              biased, always >= 0;
  "k3": exp(d) - d - 1        unbiased and always >= 0 (DeepSeekMath's choice and our default);
                              computed as expm1(d) - d, which keeps it >= 0 in float32 near d = 0.

d is clamped to [-KL_LOG_RATIO_BOUND, KL_LOG_RATIO_BOUND] first so exp(d) cannot overflow float32 (the
clamp only acts where the two policies differ by a factor above e**20 ~ 4.9e8 on a token; its gradient
there is 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v

KL_ESTIMATORS = ("k1", "k2", "k3")
KL_LOG_RATIO_BOUND = 20.0


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, *, estimator: str = "k3") -> jax.Array:
    """Per-token KL estimate, same shape as the inputs, float32. See the module docstring for formulas."""
    fn = "kl_penalty"
    v.require_choice(fn, "estimator", estimator, KL_ESTIMATORS)
    v.require_same_shape(fn, "ref_logprobs", ref_logprobs, "logprobs", logprobs)
    d = jnp.asarray(ref_logprobs, jnp.float32) - jnp.asarray(logprobs, jnp.float32)
    d = jnp.clip(d, -KL_LOG_RATIO_BOUND, KL_LOG_RATIO_BOUND)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return jnp.expm1(d) - d  # = exp(d) - 1 - d without float32 cancellation near d = 0
