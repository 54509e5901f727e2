"""A step's advantages for each grpo.algorithm, from its rewards (host NumPy in, NumPy out).

Per completion [N] (the KL penalty, if any, in the loss):
  grpo         group_advantages (scaled by grpo.scale_rewards)
  rloo         rloo_advantages (the leave-one-out baseline)
  reinforce++  batch_normalized_advantages of the rewards

Per token [N, T] (PPO, or the KL penalty in the reward): each completion's reward sits on its last token, minus
beta * KL(pi_old || pi_ref) on every token with grpo.kl_penalty = "reward" (``token_rewards``); then
  ppo          gae_advantages over the critic's values (whitened over the batch's tokens by default)
  reinforce++  the returns-to-go (GAE with no values, gamma = lambda = 1), z-scored over the batch's tokens
"""

from __future__ import annotations

import numpy as np

from grpo_jax.losses import (
    batch_normalized_advantages,
    gae_advantages,
    group_advantages,
    kl_penalty,
    rloo_advantages,
)
from grpo_jax.trainer.config import GRPOConfig, PPOConfig


def sequence_advantages(grpo: GRPOConfig, rewards_N: np.ndarray, group_size: int) -> np.ndarray:
    """[N] advantages of the critic-free algorithms with the KL penalty in the loss."""
    if grpo.algorithm == "rloo":
        return np.asarray(rloo_advantages(rewards_N, group_size))
    if grpo.algorithm == "reinforce++":
        return np.asarray(batch_normalized_advantages(rewards_N))
    return np.asarray(group_advantages(rewards_N, group_size, scale=grpo.scale_rewards))


def needs_token_advantages(grpo: GRPOConfig) -> bool:
    """Whether the step's advantages are per token and need device values first (critic or log-probs)."""
    return grpo.algorithm == "ppo" or grpo.kl_penalty == "reward"


def token_rewards(rewards_N: np.ndarray, mask_NxT: np.ndarray, old_logprobs_NxT: np.ndarray | None = None,
                  ref_logprobs_NxT: np.ndarray | None = None, *, beta: float = 0.0,
                  kl_estimator: str = "k3") -> np.ndarray:
    """[N, T] float32: reward n on row n's last unmasked token (a row without one gets none), minus
    beta * kl_penalty(old, ref) on every unmasked token when the log-probs are given."""
    mask = np.asarray(mask_NxT, np.float32)
    out = np.zeros(mask.shape, np.float32)
    lengths = mask.sum(axis=1).astype(np.int64)
    rows = np.flatnonzero(lengths > 0)
    out[rows, lengths[rows] - 1] = np.asarray(rewards_N, np.float32)[rows]
    if old_logprobs_NxT is not None and beta > 0:
        kl = np.asarray(kl_penalty(old_logprobs_NxT, ref_logprobs_NxT, estimator=kl_estimator))
        out -= beta * np.where(mask > 0, kl, 0.0).astype(np.float32)
    return out


def token_advantages(grpo: GRPOConfig, ppo: PPOConfig, rewards_NxT: np.ndarray, mask_NxT: np.ndarray,
                     values_NxT: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(advantages [N, T], returns [N, T] for PPO's critic, else None); ``values_NxT`` the critic's (PPO)."""
    if grpo.algorithm == "ppo":
        advantages, returns = gae_advantages(rewards_NxT, values_NxT, mask_NxT, gamma=ppo.gamma, lam=ppo.lam)
        if ppo.whiten_advantages:
            advantages = batch_normalized_advantages(advantages, mask_NxT)
        return np.asarray(advantages), np.asarray(returns)
    returns_to_go, _ = gae_advantages(rewards_NxT, np.zeros_like(rewards_NxT), mask_NxT, gamma=1.0, lam=1.0)
    return np.asarray(batch_normalized_advantages(returns_to_go, mask_NxT)), None
