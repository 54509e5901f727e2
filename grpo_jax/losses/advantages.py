"""Group-relative advantages: GRPO's replacement for a learned critic.

Layout: completions are *group-contiguous*. With ``B`` prompts and ``G`` completions each, ``N = B * G`` and
row ``i * G + j`` is completion ``j`` of prompt ``i``. The sampler, the rewards and the loss all use it.

Both functions compute in float32 whatever the input dtype, are pure, and work under ``jax.jit``,
``jax.grad`` and on sharded inputs. A group whose rewards are all equal carries no signal and gets
advantage exactly 0, never NaN, whatever ``eps`` is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v

ADVANTAGE_SCALES = ("group", "batch", "none")


def _check_group_size(fn: str, n: int, group_size: int) -> int:
    group_size = v.as_int(fn, "group_size", group_size, minimum=2,
                          what=" (GRPO needs at least two completions per prompt to compare)")
    if n % group_size:
        raise ValueError(
            f"{fn}: the batch of {n} completions is not divisible by group_size={group_size}; "
            "rows must be whole groups laid out group-contiguously (row i*G + j = completion j of prompt i)"
        )
    return group_size


def _safe_std(sum_sq: jax.Array, dof: jax.Array | float, no_signal: jax.Array) -> jax.Array:
    """sqrt(sum_sq / dof), with 1 where there is no signal: no 0/0 and no sqrt'(0) = inf in gradients."""
    return jnp.sqrt(jnp.where(no_signal, 1.0, sum_sq / jnp.maximum(dof, 1.0)))


def group_advantages(
    rewards: jax.Array, group_size: int, *, scale: str = "group", eps: float = 1e-6
) -> jax.Array:
    """One advantage per completion, relative to the other completions of the same prompt.

    Args:
      rewards: [N], N = B * G, group-contiguous. Any real dtype (bf16, ints, ...); computed in float32.
      group_size: G >= 2, completions per prompt.
      scale: how the centred rewards ``r - mean(group)`` are scaled:
        "group": divided by (group std + eps), std unbiased (ddof=1) as in TRL and verl (GRPO paper);
        "batch": divided by (std of all N rewards + eps), ddof=1 (TRL's ``scale_rewards="batch"``);
        "none": not scaled (Dr. GRPO, arXiv 2503.20783).
      eps: added to the std in the denominator.

    Returns:
      [N] float32 advantages. Each group's advantages sum to 0; a group of equal rewards gets exactly 0.

    Raises ValueError on a non-[N] input, N not divisible by G, G < 2, an unknown ``scale``, or NaN/inf
    rewards (that last check needs concrete values and is skipped under ``jit``).
    """
    fn = "group_advantages"
    v.require_rank(fn, "rewards", rewards, (1,), "a 1-D array [N] of one reward per completion")
    group_size = _check_group_size(fn, v.shape_of(rewards)[0], group_size)
    v.require_choice(fn, "scale", scale, ADVANTAGE_SCALES)
    v.require_positive(fn, "eps", eps, allow_zero=True)
    v.require_finite(fn, "rewards", rewards)

    r = jnp.asarray(rewards, jnp.float32)
    groups = r.reshape(-1, group_size)  # [B, G]
    centred = groups - jnp.mean(groups, axis=1, keepdims=True)
    # Decide "no signal" by comparing rewards, not by a float tolerance on the std: exact and cheap.
    all_equal = jnp.max(groups, axis=1, keepdims=True) == jnp.min(groups, axis=1, keepdims=True)
    if scale == "group":
        sum_sq = jnp.sum(centred * centred, axis=1, keepdims=True)
        denom = _safe_std(sum_sq, group_size - 1.0, all_equal) + eps
    elif scale == "batch":
        batch_centred = r - jnp.mean(r)
        batch_sum_sq = jnp.sum(batch_centred * batch_centred)
        denom = _safe_std(batch_sum_sq, r.shape[0] - 1.0, batch_sum_sq == 0) + eps
    else:
        denom = jnp.ones((), jnp.float32)
    # Every denominator is >= eps and finite in both branches, so values and gradients stay NaN-free.
    safe = jnp.where(all_equal | (denom == 0), 1.0, denom)
    return jnp.where(all_equal, 0.0, centred / safe).reshape(-1)


def process_advantages(
    step_rewards: jax.Array,
    step_end_positions: jax.Array,
    mask: jax.Array,
    group_size: int,
    *,
    eps: float = 1e-6,
) -> jax.Array:
    """Per-token advantages for process supervision (DeepSeekMath, arXiv 2402.03300, section 4.1.3).

    A reward model (or rule) scores the *steps* of each completion. All valid step rewards of one group
    (its G completions together) are normalised by that group's mean and std (ddof=1, + eps); a token's
    advantage is the sum of the normalised rewards of its own completion's steps that end at or after it.

    Input layout (N = B * G rows, group-contiguous; S = most steps in any completion, T = completion length):
      step_rewards: [N, S] float, reward of step s of completion n; padding entries are ignored.
      step_end_positions: [N, S] int, index in [0, T) of the *last* token of step s within the completion;
        -1 marks a padding entry (a completion with fewer than S steps). Steps need not be sorted.
        Out-of-range values are an error when checked eagerly; under jit (values unknown) they are
        clipped into [0, T) and values below -1 count as padding.
      mask: [N, T] completion mask (1 for real tokens, 0 for padding); the result is 0 where mask is 0.
      group_size: G >= 2.
      eps: added to the group std.

    Returns:
      [N, T] float32 advantages. Tokens after a completion's last step end get 0. A group whose valid step
      rewards are all equal (or which has fewer than two) gets 0 everywhere.
    """
    fn = "process_advantages"
    v.require_rank(fn, "step_rewards", step_rewards, (2,), "a 2-D array [N, S] of step rewards")
    v.require_same_shape(fn, "step_end_positions", step_end_positions, "step_rewards", step_rewards)
    v.require_integer(fn, "step_end_positions", step_end_positions)
    v.require_rank(fn, "mask", mask, (2,), "a 2-D completion mask [N, T]")
    n, _ = v.shape_of(step_rewards)
    t = v.shape_of(mask)[1]
    if v.shape_of(mask)[0] != n:
        raise ValueError(
            f"{fn}: `mask` has {v.shape_of(mask)[0]} rows but `step_rewards` has {n}; both are [N, ...]"
        )
    group_size = _check_group_size(fn, n, group_size)
    v.require_positive(fn, "eps", eps, allow_zero=True)
    if v.is_concrete(step_end_positions):  # value checks need concrete values: skipped under jit/grad/vmap
        ends = jnp.asarray(step_end_positions)
        if bool(jnp.any(ends >= t)) or bool(jnp.any(ends < -1)):
            raise ValueError(
                f"{fn}: `step_end_positions` must lie in [0, T={t}) or be -1 for padding, got values in "
                f"[{int(ends.min())}, {int(ends.max())}]"
            )
        v.require_finite(fn, "step_rewards", jnp.where(ends >= 0, step_rewards, 0.0))

    ends = jnp.asarray(step_end_positions)
    valid = ends >= 0  # [N, S]
    r = jnp.where(valid, jnp.asarray(step_rewards, jnp.float32), 0.0)
    s = r.shape[1]
    groups_r = r.reshape(-1, group_size * s)  # [B, G*S]
    groups_valid = valid.reshape(-1, group_size * s)
    count = jnp.sum(groups_valid, axis=1, keepdims=True).astype(jnp.float32)
    mean = jnp.sum(groups_r, axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    sum_sq = jnp.sum(jnp.where(groups_valid, (groups_r - mean) ** 2, 0.0), axis=1, keepdims=True)
    big = jnp.finfo(jnp.float32).max
    hi = jnp.max(jnp.where(groups_valid, groups_r, -big), axis=1, keepdims=True)
    lo = jnp.min(jnp.where(groups_valid, groups_r, big), axis=1, keepdims=True)
    no_signal = (count < 2) | (hi == lo)
    denom = jnp.where(no_signal, 1.0, _safe_std(sum_sq, count - 1.0, no_signal) + eps)
    normalised = jnp.where(no_signal | ~groups_valid, 0.0, (groups_r - mean) / denom).reshape(n, s)

    # Place each step's normalised reward at its end token, then a reverse cumulative sum gives, at each
    # token, the sum over steps ending at or after it.
    rows = jnp.arange(n)[:, None]
    at_end = jnp.zeros((n, t), jnp.float32).at[rows, jnp.clip(ends, 0, t - 1)].add(normalised)
    suffix_sum = jnp.flip(jnp.cumsum(jnp.flip(at_end, axis=1), axis=1), axis=1)
    return suffix_sum * jnp.asarray(mask, jnp.float32)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024, arXiv 2402.14740): each completion's reward minus
    the mean reward of the *other* G - 1 completions of its prompt, unscaled.

    Equal to G / (G - 1) * (r - group mean), so a group of equal rewards gets exactly 0. ``rewards`` [N],
    N = B * G group-contiguous, G >= 2; returns [N] float32. Errors as ``group_advantages``."""
    fn = "rloo_advantages"
    v.require_rank(fn, "rewards", rewards, (1,), "a 1-D array [N] of one reward per completion")
    group_size = _check_group_size(fn, v.shape_of(rewards)[0], group_size)
    v.require_finite(fn, "rewards", rewards)
    groups = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    centred = groups - jnp.mean(groups, axis=1, keepdims=True)
    all_equal = jnp.max(groups, axis=1, keepdims=True) == jnp.min(groups, axis=1, keepdims=True)
    return jnp.where(all_equal, 0.0, centred * (group_size / (group_size - 1))).reshape(-1)


def batch_normalized_advantages(values: jax.Array, mask: jax.Array | None = None, *, eps: float = 1e-8) -> jax.Array:
    """``values`` z-scored over the whole batch: (x - mean) / sqrt(var + eps), mean and (biased) variance over
    all entries, or over the unmasked ones (``mask`` > 0) of an [N, T] array; masked entries get 0.

    REINFORCE++ (Hu 2025, arXiv 2501.03262) uses it as its baseline: on [N] outcome rewards (no group needed,
    G may be 1), or on [N, T] per-token returns when the KL penalty is in the reward. PPO whitens its GAE
    advantages [N, T] the same way. A batch of equal values gets exactly 0. Returns float32, ``values``' shape.
    """
    fn = "batch_normalized_advantages"
    v.require_rank(fn, "values", values, (1, 2), "[N] per completion or [N, T] per token")
    if mask is None:
        mask = jnp.ones(v.shape_of(values), jnp.float32)
    v.require_same_shape(fn, "mask", mask, "values", values)
    v.require_positive(fn, "eps", eps, allow_zero=True)
    m = jnp.asarray(mask, jnp.float32)
    x = jnp.where(m > 0, jnp.asarray(values, jnp.float32), 0.0)
    count = jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(x * m) / count
    centred = (x - mean) * m
    var = jnp.sum(centred * centred) / count
    no_signal = var == 0  # equal values: 0, not 0/0 when eps is 0
    return jnp.where(no_signal, 0.0, centred / jnp.sqrt(jnp.where(no_signal, 1.0, var + eps)))
