"""PPO's objective for a policy and critic trained by one loss (a value head on the policy's trunk):

    loss = policy surrogate (+ beta * KL, as in grpo_loss) + value_coef * clipped value loss

The surrogate is grpo_loss's, fed per-token GAE advantages [N, T] (grpo_jax.losses.gae_advantages) instead of
group-relative ones; the value loss is grpo_jax.losses.value.value_loss. grpo_jax's trainer keeps its critic in
its own parameters and optimizer (``ppo.critic``), so it minimises the two terms separately; this function is
their sum for code that trains one parameter tree.
"""

from __future__ import annotations

import jax

from grpo_jax.losses.objective import grpo_loss
from grpo_jax.losses.value import value_loss


def ppo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
             advantages_NxT: jax.Array, values_NxT: jax.Array, old_values_NxT: jax.Array, returns_NxT: jax.Array,
             mask: jax.Array, *, value_coef: float = 0.5, value_clip: float | None = 0.2, beta: float = 0.0,
             **policy_options) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics): grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages_NxT, mask, beta=beta,
    **policy_options) + value_coef * value_loss(values_NxT, old_values_NxT, returns_NxT, mask, value_clip).

    All arrays [N, T] (float; ``mask`` 0/1). ``beta`` defaults to 0: PPO usually puts its KL penalty in the
    per-token reward that GAE turns into ``advantages_NxT``. ``policy_options``: grpo_loss's clip_eps,
    clip_eps_high, kl_estimator, ratio_level, aggregation, max_tokens. Metrics: grpo_loss's ("loss" is the
    total here, "policy_loss" the surrogate alone) and value_loss's."""
    v_loss, v_metrics = value_loss(values_NxT, old_values_NxT, returns_NxT, mask, value_clip=value_clip)
    p_loss, p_metrics = grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages_NxT, mask, beta=beta,
                                  **policy_options)
    loss = p_loss + value_coef * v_loss
    return loss, {**p_metrics, **v_metrics, "loss": jax.lax.stop_gradient(loss)}
