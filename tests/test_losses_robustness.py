"""Edge cases found in review: garbage in padded slots, NaN-free gradients, fp32 cancellation, empty inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.losses import (
    aggregate_loss,
    group_advantages,
    grpo_loss,
    kl_penalty,
    process_advantages,
    token_logprobs,
)


def _batch(seed=0, n=4, t=5):
    rng = np.random.RandomState(seed)
    logp = -rng.rand(n, t).astype(np.float32)
    old = logp + 0.2 * rng.randn(n, t).astype(np.float32)
    ref = logp + 0.2 * rng.randn(n, t).astype(np.float32)
    mask = (np.arange(t)[None] < np.array([5, 3, 1, 0])[:, None]).astype(np.float32)
    return logp, old, ref, rng.randn(n).astype(np.float32), mask


@pytest.mark.parametrize("garbage", [np.nan, -np.inf, np.inf])
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_garbage_in_padded_slots_does_not_leak(garbage, ratio_level):
    logp, old, ref, adv, mask = _batch()
    clean_loss, clean_metrics = grpo_loss(logp, old, ref, adv, mask, ratio_level=ratio_level)
    dirty = [np.where(mask > 0, x, garbage).astype(np.float32) for x in (logp, old, ref)]
    loss, metrics = grpo_loss(*dirty, adv, mask, ratio_level=ratio_level)
    assert float(loss) == float(clean_loss)
    for k in clean_metrics:
        assert float(metrics[k]) == float(clean_metrics[k]), k
    grad = jax.grad(lambda lp: grpo_loss(lp, dirty[1], dirty[2], adv, mask, ratio_level=ratio_level)[0])(dirty[0])
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[mask == 0] == 0)


def test_padding_label_ids_give_finite_logprobs():
    logits = jnp.asarray(np.random.RandomState(0).randn(1, 3, 7), jnp.float32)
    lp = token_logprobs(logits, jnp.array([[2, -100, -100]]))
    assert np.all(np.isfinite(lp))
    loss, _ = grpo_loss(lp, None, None, jnp.array([1.0]), jnp.array([[1.0, 0.0, 0.0]]), beta=0.0)
    assert float(loss) == pytest.approx(-1.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_gradients_through_all_equal_groups_are_finite(scale):
    rewards = jnp.array([0.5, 0.5, 0.5, 0.0, 1.0, 0.0])
    weights = jnp.arange(6.0)
    grad = jax.grad(lambda r: jnp.sum(weights * group_advantages(r, 3, scale=scale)))(rewards)
    assert np.all(np.isfinite(grad))
    grad_all_equal = jax.grad(lambda r: jnp.sum(weights * group_advantages(r, 3, scale=scale)))(jnp.ones(6))
    assert np.all(np.isfinite(grad_all_equal))


def test_process_advantages_gradient_is_finite_without_signal():
    ends = jnp.array([[0, 1], [1, -1]])
    grad = jax.grad(lambda r: jnp.sum(process_advantages(r, ends, jnp.ones((2, 2)), 2)))(jnp.ones((2, 2)))
    assert np.all(np.isfinite(grad))


def test_k3_is_nonnegative_near_zero():
    rng = np.random.RandomState(0)
    logp = jnp.asarray(-rng.rand(1000), jnp.float32)
    ref = logp + jnp.asarray(rng.randn(1000) * 1e-4, jnp.float32)
    k3 = np.asarray(kl_penalty(logp, ref))
    assert np.all(k3 >= 0)
    d = np.asarray(ref, np.float64) - np.asarray(logp, np.float64)
    # d itself is rounded in float32 (relative error ~1e-7 * |logp| / |d| ~ 1e-3 here), and k3 ~ d^2 / 2
    np.testing.assert_allclose(k3, np.expm1(d) - d, rtol=1e-2, atol=1e-12)


def test_empty_inputs_are_finite():
    for aggregation in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert float(aggregate_loss(jnp.zeros((2, 0)), jnp.zeros((2, 0)), aggregation=aggregation)) == 0.0
        assert float(aggregate_loss(jnp.zeros((0, 3)), jnp.zeros((0, 3)), aggregation=aggregation)) == 0.0
    loss, metrics = grpo_loss(jnp.zeros((0, 3)), None, None, jnp.zeros((0,)), jnp.zeros((0, 3)), beta=0.0)
    assert float(loss) == 0.0 and all(math.isfinite(float(v)) for v in metrics.values())


def test_sequence_ratio_gradient_is_zero_on_clamped_tokens():
    old = jnp.zeros((1, 2))
    logp = jnp.array([[60.0, 0.1]])  # token 0's log-ratio is clamped at 20
    grad = jax.grad(lambda lp: grpo_loss(lp, old, None, jnp.array([-1.0]), jnp.ones((1, 2)), beta=0.0,
                                         ratio_level="sequence", clip_eps=1e9)[0])(logp)
    assert float(grad[0, 0]) == 0.0 and float(grad[0, 1]) != 0.0


def test_scalar_hyperparameters_may_be_arrays_or_traced():
    logp, old, ref, adv, mask = _batch(1)
    expect, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.04, clip_eps=0.2)
    as_arrays, _ = grpo_loss(logp, old, ref, adv, mask, beta=np.float32(0.04), clip_eps=jnp.float32(0.2))
    traced = jax.jit(lambda b, e: grpo_loss(logp, old, ref, adv, mask, beta=b, clip_eps=e)[0])(0.04, 0.2)
    np.testing.assert_allclose([as_arrays, traced], [expect, expect], rtol=1e-6)
    with pytest.raises(ValueError, match="`ref_logprobs` is None"):
        jax.jit(lambda b: grpo_loss(logp, old, None, adv, mask, beta=b)[0])(0.0)
    adv_np = group_advantages(np.array([1.0, 0.0, 1.0, 1.0], np.float32), np.int64(2))
    np.testing.assert_allclose(adv_np, [0.7071061, -0.7071061, 0.0, 0.0], rtol=1e-6)
