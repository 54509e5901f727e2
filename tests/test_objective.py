"""Closed-form cases for grpo_loss, kl_penalty and aggregate_loss: every option, values worked out by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.losses import LOG_RATIO_BOUND, aggregate_loss, grpo_loss, kl_penalty

MASK = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # 2 and 3 tokens
LOGP = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.5, 0.5, 0.125]]))


@pytest.mark.parametrize(
    "aggregation, max_tokens, expected",
    [
        # on-policy, beta 0: per-token loss is -A; A = (1, -2) -> tokens (-1, -1 | 2, 2, 2)
        ("seq-mean-token-mean", None, (-1 + 2) / 2),
        ("token-mean", None, (-2 + 6) / 5),
        ("seq-mean-token-sum", None, (-2 + 6) / 2),
        ("seq-mean-token-sum-norm", None, (-2 + 6) / (2 * 3)),
        ("seq-mean-token-sum-norm", 4, (-2 + 6) / (2 * 4)),
    ],
)
def test_aggregations_on_policy(aggregation, max_tokens, expected):
    loss, metrics = grpo_loss(
        LOGP, None, None, jnp.array([1.0, -2.0]), MASK, beta=0.0, aggregation=aggregation, max_tokens=max_tokens
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["policy_loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["clip_frac"]) == 0.0
    assert float(metrics["advantage_mean"]) == pytest.approx(-0.5)


def test_aggregate_loss_counts_empty_sequences():
    per_token = jnp.array([[1.0, 3.0], [5.0, 5.0]])
    mask = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    assert float(aggregate_loss(per_token, mask)) == pytest.approx(1.0)  # (2 + 0) / 2 sequences
    assert float(aggregate_loss(per_token, mask, aggregation="token-mean")) == pytest.approx(2.0)
    assert float(aggregate_loss(per_token, jnp.zeros((2, 2)), aggregation="token-mean")) == 0.0


@pytest.mark.parametrize("clip_eps_high, high_value", [(None, 1.2), (0.28, 1.28)])
def test_clipping_branches(clip_eps_high, high_value):
    """One token per sequence; ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, -1, +1."""
    old = jnp.zeros((4, 1))
    logp = jnp.log(jnp.array([[1.5], [1.5], [0.5], [0.5]]))
    adv = jnp.array([1.0, -1.0, -1.0, 1.0])
    mask = jnp.ones((4, 1))
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, clip_eps_high=clip_eps_high, aggregation="token-mean")
    # -min(rA, clip(r)A): clipped above; unclipped 1.5; clipped below 0.8; unclipped -0.5
    per_token = np.array([-high_value, 1.5, 0.8, -0.5])
    assert float(loss) == pytest.approx(per_token.mean(), rel=1e-6)
    assert float(m["clip_frac_high"]) == 0.25 and float(m["clip_frac_low"]) == 0.25
    assert float(m["clip_frac"]) == 0.5
    assert float(m["ratio_max"]) == pytest.approx(1.5) and float(m["ratio_min"]) == pytest.approx(0.5)
    assert float(m["ratio_mean"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "estimator, expected",
    [("k1", math.log(2)), ("k2", 0.5 * math.log(2) ** 2), ("k3", 0.5 + math.log(2) - 1)],
)
def test_kl_estimators(estimator, expected):
    """pi = 0.5, pi_ref = 0.25 on the sampled token: d = log(pi_ref/pi) = -log 2."""
    logp, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    assert float(kl_penalty(logp, ref, estimator=estimator)[0, 0]) == pytest.approx(expected, rel=1e-6)
    loss, m = grpo_loss(logp, None, ref, jnp.array([2.0]), jnp.ones((1, 1)), beta=0.1, kl_estimator=estimator)
    assert float(m["kl"]) == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(-2.0 + 0.1 * expected, rel=1e-6)
    assert float(m["policy_loss"]) == pytest.approx(-2.0)


def test_k3_is_zero_when_policies_agree_and_positive_otherwise():
    x = jnp.log(jnp.array([[0.1, 0.5, 0.9]]))
    np.testing.assert_array_equal(kl_penalty(x, x), 0.0)
    assert bool(jnp.all(kl_penalty(x, x + 0.3) > 0)) and bool(jnp.all(kl_penalty(x, x - 0.3) > 0))


def test_sequence_level_ratio_gspo():
    """Sequence 0 log-ratios (log 4, 0) -> s = exp(log 4 / 2) = 2; sequence 1 (log 0.25) -> s = 0.25."""
    old = jnp.zeros((2, 2))
    logp = jnp.array([[math.log(4.0), 0.0], [math.log(0.25), 123.0]])  # 123 sits under the mask
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    adv = jnp.array([1.0, 1.0])
    loss, m = grpo_loss(logp, old, None, adv, mask, beta=0.0, ratio_level="sequence")
    # seq 0: clipped to 1.2 -> -1.2 on both tokens; seq 1: min(0.25, 0.8) = 0.25 -> -0.25
    assert float(loss) == pytest.approx((-1.2 - 0.25) / 2, rel=1e-6)
    assert float(m["clip_frac_high"]) == pytest.approx(2 / 3)
    assert float(m["ratio_mean"]) == pytest.approx((2 + 2 + 0.25) / 3, rel=1e-6)

    # Gradient equals GSPO's: d/d logp_t of -(s A)/1 averaged = -s A / |y| per token of an unclipped sequence.
    adv = jnp.array([1.0, -1.0])
    grad = jax.grad(lambda lp: grpo_loss(lp, old, None, adv, mask, beta=0.0, ratio_level="sequence")[0])(logp)
    # seq 0, A = +1, s = 2 > 1.2: clipped branch, gradient 0. seq 1, A = -1, s = 0.25 < 0.8: min(-0.25, -0.8)
    # takes the clipped branch too. Use a ratio inside the clip range to see a non-zero gradient:
    np.testing.assert_array_equal(grad, 0.0)
    logp_in = jnp.array([[math.log(1.1), 0.0], [0.0, 0.0]])
    grad = jax.grad(lambda lp: grpo_loss(lp, old, None, adv, mask, beta=0.0, ratio_level="sequence")[0])(logp_in)
    s0 = math.sqrt(1.1)
    # loss = (1/2) * [ mean_t(-s0 * 1) + (+1 * 1) ] ; d/dlogp_0t = (1/2) * (-s0) * (1/2)
    np.testing.assert_allclose(grad, [[-s0 / 4, -s0 / 4], [0.5 * 1.0, 0.0]], rtol=1e-6)


def test_per_token_advantages():
    logp = jnp.zeros((1, 3))
    adv = jnp.array([[2.0, -1.0, 5.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    loss, m = grpo_loss(logp, None, None, adv, mask, beta=0.0)
    assert float(loss) == pytest.approx(-(2.0 - 1.0) / 2)
    assert float(m["advantage_mean"]) == pytest.approx(0.5)


def test_on_policy_gradient_is_minus_advantage_over_length():
    """With ratio 1 and no KL: d loss / d logp_it = -A_i / |o_i| / N (seq-mean-token-mean)."""
    adv = jnp.array([1.0, -2.0])
    grad = jax.grad(lambda lp: grpo_loss(lp, None, None, adv, MASK, beta=0.0)[0])(LOGP)
    np.testing.assert_allclose(grad, [[-1 / 4, -1 / 4, 0], [2 / 6, 2 / 6, 2 / 6]], rtol=1e-6)


def test_log_ratio_is_clamped():
    logp = jnp.array([[500.0, -500.0]])
    loss, m = grpo_loss(logp, jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([-1.0]), jnp.ones((1, 2)))
    assert np.isfinite(float(loss))
    assert float(m["ratio_max"]) == pytest.approx(math.exp(LOG_RATIO_BOUND), rel=1e-5)
    grad = jax.grad(lambda lp: grpo_loss(lp, jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([-1.0]),
                                         jnp.ones((1, 2)))[0])(logp)
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_bf16_inputs_match_fp32_of_the_same_values():
    rng = np.random.RandomState(0)
    lp = jnp.asarray(-rng.rand(4, 5), jnp.bfloat16)
    old = jnp.asarray(-rng.rand(4, 5), jnp.bfloat16)
    ref = jnp.asarray(-rng.rand(4, 5), jnp.bfloat16)
    adv = jnp.asarray(rng.randn(4), jnp.bfloat16)
    mask = jnp.ones((4, 5), jnp.bfloat16)
    loss_bf16, m_bf16 = grpo_loss(lp, old, ref, adv, mask)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    loss_f32, _ = grpo_loss(f32(lp), f32(old), f32(ref), f32(adv), f32(mask))
    assert loss_bf16.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in m_bf16.values())
    assert float(loss_bf16) == float(loss_f32)


def test_metrics_carry_no_gradient():
    adv = jnp.array([1.0, -2.0])
    grad = jax.grad(lambda lp: grpo_loss(lp, None, None, adv, MASK, beta=0.0)[1]["policy_loss"])(LOGP)
    np.testing.assert_array_equal(grad, 0.0)


def test_empty_completions_give_zero_loss_and_finite_metrics():
    loss, m = grpo_loss(jnp.zeros((2, 0)), None, jnp.zeros((2, 0)), jnp.array([1.0, -1.0]), jnp.zeros((2, 0)))
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in m.values()) and float(m["ratio_max"]) == 0.0
