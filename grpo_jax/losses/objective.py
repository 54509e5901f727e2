"""The GRPO objective: PPO's clipped surrogate on group-relative advantages, plus a KL penalty.

Per token t of completion i (N completions, T tokens, advantages A per sequence or per token):

    log_ratio = clip(log pi - log pi_old, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    ratio     = exp(log_ratio)                               (ratio_level="token", GRPO / PPO)
              | exp(mean_t' log_ratio_it') per sequence      (ratio_level="sequence", GSPO arXiv 2507.18071)
    policy    = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    loss_t    = policy + beta * KL_t(pi || pi_ref)           (KL estimator: see grpo_jax.losses.kl)

and the scalar loss aggregates loss_t over unmasked tokens (see grpo_jax.losses.aggregation).

LOG_RATIO_BOUND = 20: exp(20) ~ 4.9e8, so ratio * A cannot overflow float32 for any |A| < 1e29. The clamp
acts only on tokens whose probability changed by more than that factor since sampling, where the gradient
becomes 0, at token and at sequence level. Such tokens are outside the clip range, whose gradient is 0 too,
except a ratio above e^20 with a negative advantage: there PPO's min keeps the unclipped term, and the clamp
deliberately drops its gradient (a stabiliser in the spirit of dual-clip PPO) instead of following it.

Padded slots (mask 0) are replaced by 0 before any arithmetic, so they may hold anything (NaN, -inf, the
log-probability of a -100 padding id) without reaching the loss, the metrics or the gradient.

For the sequence-level ratio we use GSPO-token's form, ratio_it = sg(s_i) * pi_it / sg(pi_it): its value is
the sequence ratio s_i on every token, and its gradient equals GSPO's sequence gradient for any
aggregation that weighs a sequence's tokens equally, while also accepting per-token advantages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v
from grpo_jax.losses.aggregation import AGGREGATIONS, aggregate_loss, masked_mean
from grpo_jax.losses.kl import KL_ESTIMATORS, kl_penalty

RATIO_LEVELS = ("token", "sequence")
LOG_RATIO_BOUND = 20.0


def _check_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, beta_is_zero) -> None:
    fn = "grpo_loss"
    v.require_rank(fn, "logprobs", logprobs, (2,), "[N, T] log-probabilities of the completion tokens")
    v.require_floating(fn, "logprobs", logprobs)
    v.require_same_shape(fn, "mask", mask, "logprobs", logprobs)
    if old_logprobs is not None:
        v.require_same_shape(fn, "old_logprobs", old_logprobs, "logprobs", logprobs)
        v.require_floating(fn, "old_logprobs", old_logprobs)
    if ref_logprobs is None:
        if not beta_is_zero:
            raise ValueError(
                f"{fn}: `ref_logprobs` is None but beta={beta} > 0; pass reference log-probabilities or set beta=0"
            )
    else:
        v.require_same_shape(fn, "ref_logprobs", ref_logprobs, "logprobs", logprobs)
        v.require_floating(fn, "ref_logprobs", ref_logprobs)
    n, t = v.shape_of(logprobs)
    adv_shape = v.shape_of(advantages)
    if adv_shape not in ((n,), (n, t)):
        raise ValueError(
            f"{fn}: `advantages` has shape {adv_shape}; expected [N]=({n},) per sequence or "
            f"[N, T]=({n}, {t}) per token, matching `logprobs` {v.shape_of(logprobs)}"
        )
    v.require_finite(fn, "advantages", advantages)


def grpo_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array | None,
    ref_logprobs: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.04,
    kl_estimator: str = "k3",
    ratio_level: str = "token",
    aggregation: str = "seq-mean-token-mean",
    max_tokens: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO loss (to minimise) and its diagnostics. Pure; jit-, grad- and sharding-compatible.

    Args:
      logprobs: [N, T] log pi(token) under the policy being optimised (differentiate through this).
      old_logprobs: [N, T] log pi_old(token) under the sampling policy, or None for exactly on-policy
        updates (mu = 1), where pi_old = stop_gradient(pi) and the ratio is 1.
      ref_logprobs: [N, T] log pi_ref(token) under the frozen reference policy; may be None when beta == 0.
      advantages: [N] per completion (outcome supervision, from group_advantages) or [N, T] per token
        (process supervision, from process_advantages).
      mask: [N, T] 1 for completion tokens that count, 0 for padding (bool or float).
      clip_eps: eps_low, the lower clip 1 - eps_low (and the upper one unless clip_eps_high is set);
        Python or array scalar, like clip_eps_high.
      clip_eps_high: eps_high for the upper clip 1 + eps_high (DAPO's clip-higher, e.g. 0.28); None = clip_eps.
      beta: weight of the KL penalty (DeepSeekMath: 0.04; 0 disables it and the reference model). A Python
        or array scalar; a traced one (a schedule inside jit) is allowed and then needs ref_logprobs.
      kl_estimator: "k3" (default), "k1" or "k2"; see grpo_jax.losses.kl.
      ratio_level: "token" (GRPO/PPO) or "sequence" (GSPO's length-normalised sequence ratio).
      aggregation: "seq-mean-token-mean", "token-mean", "seq-mean-token-sum" or "seq-mean-token-sum-norm";
        see grpo_jax.losses.aggregation.
      max_tokens: normaliser of "seq-mean-token-sum-norm" (Dr. GRPO's generation budget); default T.

    All float inputs may be bf16 or fp32; everything is computed in float32.

    Returns:
      loss: float32 scalar.
      metrics: float32 scalars, no gradient:
        "loss": the loss; "policy_loss": the aggregated surrogate term alone;
        "kl": mean per-token KL estimate over unmasked tokens (0 when ref_logprobs is None);
        "clip_frac_low" / "clip_frac_high": fraction of unmasked tokens whose surrogate takes the clipped
          branch below (ratio < 1 - eps_low with A < 0) / above (ratio > 1 + eps_high with A > 0);
          "clip_frac": their sum;
        "ratio_mean", "ratio_max", "ratio_min": the importance ratio over unmasked tokens;
        "advantage_mean": mean advantage (per sequence for [N], over unmasked tokens for [N, T]).
    """
    fn = "grpo_loss"
    v.require_positive(fn, "clip_eps", clip_eps)
    if clip_eps_high is not None:
        v.require_positive(fn, "clip_eps_high", clip_eps_high)
    v.require_positive(fn, "beta", beta, allow_zero=True)
    v.require_choice(fn, "kl_estimator", kl_estimator, KL_ESTIMATORS)
    v.require_choice(fn, "ratio_level", ratio_level, RATIO_LEVELS)
    v.require_choice(fn, "aggregation", aggregation, AGGREGATIONS)
    # A traced beta (a schedule inside jit) counts as positive: the KL term is kept and needs ref_logprobs.
    beta_is_zero = v.is_concrete(beta) and float(beta) == 0.0
    _check_inputs(logprobs, old_logprobs, ref_logprobs, advantages, mask, beta, beta_is_zero)
    eps_low = clip_eps
    eps_high = eps_low if clip_eps_high is None else clip_eps_high

    m = jnp.asarray(mask, jnp.float32)
    valid = m > 0

    def real(x):  # padded slots may hold anything (NaN, -inf, -100 ids' logprobs): never let them in
        return jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)

    logp = real(logprobs)
    old = jax.lax.stop_gradient(logp) if old_logprobs is None else real(old_logprobs)
    adv = jnp.asarray(advantages, jnp.float32)
    adv_t = adv[:, None] if adv.ndim == 1 else real(adv)  # [N, 1] or [N, T]

    log_ratio = jnp.clip(logp - old, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    if ratio_level == "sequence":
        seq_log_ratio = jnp.sum(log_ratio * m, axis=1, keepdims=True) / jnp.maximum(
            jnp.sum(m, axis=1, keepdims=True), 1.0
        )
        # GSPO-token: value = the sequence's log-ratio, gradient = each token's (clamped) log-ratio.
        log_ratio = jax.lax.stop_gradient(seq_log_ratio) + log_ratio - jax.lax.stop_gradient(log_ratio)
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    policy_per_token = -jnp.minimum(ratio * adv_t, clipped_ratio * adv_t)

    kl = jnp.zeros_like(logp) if ref_logprobs is None else kl_penalty(logp, real(ref_logprobs), estimator=kl_estimator)
    per_token = policy_per_token if beta_is_zero else policy_per_token + beta * kl
    loss = aggregate_loss(per_token, m, aggregation=aggregation, max_tokens=max_tokens)

    sg = jax.lax.stop_gradient
    is_low = (ratio < 1.0 - eps_low) & (adv_t < 0)
    is_high = (ratio > 1.0 + eps_high) & (adv_t > 0)
    any_token = jnp.any(valid)
    n = logp.shape[0]
    metrics = {
        "loss": loss,
        "policy_loss": aggregate_loss(policy_per_token, m, aggregation=aggregation, max_tokens=max_tokens),
        "kl": masked_mean(kl, m),
        "clip_frac_low": masked_mean(is_low, m),
        "clip_frac_high": masked_mean(is_high, m),
        "ratio_mean": masked_mean(ratio, m),
        "ratio_max": jnp.where(any_token, jnp.max(jnp.where(valid, ratio, -jnp.inf), initial=-jnp.inf), 0.0),
        "ratio_min": jnp.where(any_token, jnp.min(jnp.where(valid, ratio, jnp.inf), initial=jnp.inf), 0.0),
        "advantage_mean": jnp.sum(adv) / max(n, 1) if adv.ndim == 1 else masked_mean(adv, m),
    }
    metrics["clip_frac"] = metrics["clip_frac_low"] + metrics["clip_frac_high"]
    return loss, {k: sg(val) for k, val in metrics.items()}
