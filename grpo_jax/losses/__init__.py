"""grpo_jax.losses: the pure-functional GRPO objective. Import it without the rest of grpo_jax.

Completions are group-contiguous everywhere: with B prompts and G completions each, row i*G + j of any
[N, ...] array (N = B*G) is completion j of prompt i.

    group_advantages(rewards [N], G)              -> [N] outcome advantages
    process_advantages(step_rewards, ends, mask, G) -> [N, T] process-supervision advantages
    rloo_advantages(rewards [N], G)               -> [N] leave-one-out advantages (RLOO)
    batch_normalized_advantages(x [N] or [N, T])  -> x z-scored over the batch (REINFORCE++, PPO whitening)
    gae_advantages(rewards, values, mask)         -> [N, T] GAE advantages and value targets (PPO)
    token_logprobs(logits [B,T,V], tokens [B,T])  -> [B, T] log-probabilities
    token_logprobs_from_hidden(hidden, W, tokens) -> same, chunked, never holding [B, T, V]
    grpo_loss(logprobs, old, ref, advantages, mask) -> (loss, metrics)
    value_loss(values, old_values, returns, mask) -> (loss, metrics) PPO's clipped critic loss
    ppo_loss(..., advantages, values, old_values, returns, mask) -> grpo_loss's surrogate + value loss
    kl_penalty, aggregate_loss                    -> the building blocks of grpo_loss
"""

from grpo_jax.losses.advantages import (
    ADVANTAGE_SCALES,
    batch_normalized_advantages,
    group_advantages,
    process_advantages,
    rloo_advantages,
)
from grpo_jax.losses.aggregation import AGGREGATIONS, aggregate_loss, masked_mean
from grpo_jax.losses.gae import gae_advantages
from grpo_jax.losses.kl import KL_ESTIMATORS, KL_LOG_RATIO_BOUND, kl_penalty
from grpo_jax.losses.logprobs import token_logprobs, token_logprobs_from_hidden
from grpo_jax.losses.objective import LOG_RATIO_BOUND, RATIO_LEVELS, grpo_loss
from grpo_jax.losses.ppo import ppo_loss
from grpo_jax.losses.value import value_loss

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "KL_LOG_RATIO_BOUND",
    "LOG_RATIO_BOUND",
    "RATIO_LEVELS",
    "aggregate_loss",
    "batch_normalized_advantages",
    "gae_advantages",
    "grpo_loss",
    "group_advantages",
    "kl_penalty",
    "masked_mean",
    "ppo_loss",
    "process_advantages",
    "rloo_advantages",
    "token_logprobs",
    "token_logprobs_from_hidden",
    "value_loss",
]
