"""Generalized advantage estimation (Schulman et al. 2016, arXiv 1506.02438) over completion tokens: the
advantages and value targets of PPO with a learned critic, the baseline GRPO replaces with the group mean.

Each completion is an episode whose actions are its tokens; the state after the last completion token is
terminal (value 0). With per-token rewards r_t (e.g. the outcome reward on the last token minus a per-token
KL penalty), critic values V_t and a right-padded completion mask:

    delta_t = r_t + gamma * V_{t+1} - V_t          (V_{t+1} = 0 past the last token)
    A_t     = delta_t + gamma * lambda * A_{t+1}   (A_{t+1} = 0 past the last token)
    R_t     = A_t + V_t                            (the critic's regression target)

lambda = 1 gives the Monte-Carlo return minus V_t; lambda = 0 the one-step TD error. Padding tokens get 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v


def gae_advantages(rewards_NxT: jax.Array, values_NxT: jax.Array, mask_NxT: jax.Array, *, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """(advantages [N, T], returns [N, T]), float32, 0 on padding.

    ``mask_NxT``: 1 on completion tokens, 0 after a completion ends (a row's tokens are a prefix). ``gamma``
    discounts per token, ``lam`` trades bias (0) for variance (1); both in [0, 1]. The defaults are those of
    the InstructGPT / DeepSeekMath PPO setups."""
    fn = "gae_advantages"
    v.require_rank(fn, "rewards_NxT", rewards_NxT, (2,), "[N, T]")
    v.require_same_shape(fn, "values_NxT", values_NxT, "rewards_NxT", rewards_NxT)
    v.require_same_shape(fn, "mask_NxT", mask_NxT, "rewards_NxT", rewards_NxT)
    for name, value in (("gamma", gamma), ("lam", lam)):
        v.require_positive(fn, name, value, allow_zero=True)
        if not isinstance(value, jax.core.Tracer) and float(value) > 1:
            raise ValueError(f"{fn}: `{name}` must be in [0, 1], got {value!r}")
    mask = jnp.asarray(mask_NxT, jnp.float32)
    rewards = jnp.asarray(rewards_NxT, jnp.float32) * mask
    values = jnp.asarray(values_NxT, jnp.float32) * mask
    # V_{t+1}, 0 past the end (values are masked). Rewards and values are 0 on padding, so delta is too, and
    # the recursion from the row's end leaves A = 0 there: a terminal state needs no mask of its own
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    deltas_TxN = (rewards + gamma * next_values - values).T

    def backward(carry_N, delta_N):
        advantage_N = delta_N + gamma * lam * carry_N
        return advantage_N, advantage_N

    _, advantages_TxN = jax.lax.scan(backward, jnp.zeros(rewards.shape[0], jnp.float32), deltas_TxN, reverse=True)
    return advantages_TxN.T, advantages_TxN.T + values
