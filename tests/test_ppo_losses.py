"""PPO's and the critic-free baselines' pure functions against plain NumPy re-derivations (loops, float64):
value_loss (clipped and not), ppo_loss (grpo_loss's surrogate + value_coef * value loss, and its gradient),
rloo_advantages and batch_normalized_advantages; their sharded results agree with one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax.losses import (
    batch_normalized_advantages,
    grpo_loss,
    ppo_loss,
    rloo_advantages,
    value_loss,
)
from grpo_jax.sharding import make_mesh
from tests.numpy_reference import ref_grpo_loss


def numpy_value_loss(values, old, returns, mask, clip):
    total, count, clipped_larger = 0.0, 0, 0
    for i in range(values.shape[0]):
        for t in range(values.shape[1]):
            if mask[i, t] == 0:
                continue
            v, o, r = float(values[i, t]), float(old[i, t]), float(returns[i, t])
            unclipped = (v - r) ** 2
            term = unclipped
            if clip is not None:
                clipped = (o + min(max(v - o, -clip), clip) - r) ** 2
                term = max(unclipped, clipped)
                clipped_larger += clipped > unclipped
            total += term
            count += 1
    return 0.5 * total / max(count, 1), clipped_larger / max(count, 1)


def critic_batch(seed=0, n=6, t=5):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    old = rng.standard_normal((n, t)).astype(np.float32)
    values = (old + 0.4 * rng.standard_normal((n, t))).astype(np.float32)  # some beyond the clip range
    returns = rng.standard_normal((n, t)).astype(np.float32)
    values[mask == 0] = np.nan  # padding may hold anything
    return values, old, returns, mask


@pytest.mark.parametrize("clip", [0.2, 0.05, None])
def test_value_loss_matches_numpy(clip):
    values, old, returns, mask = critic_batch()
    loss, metrics = jax.jit(lambda *a: value_loss(*a, value_clip=clip))(values, old, returns, mask)
    ref_loss, ref_frac = numpy_value_loss(values, old, returns, mask, clip)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["value_clip_frac"], ref_frac, rtol=1e-6)
    assert (ref_frac > 0) == (clip is not None)  # the clip is active on some tokens
    keep = mask > 0
    np.testing.assert_allclose(metrics["value_error"], np.abs(values - returns)[keep].mean(), rtol=1e-5)


def test_value_loss_gradient_is_zero_where_the_clipped_term_wins():
    # token 0: V moved towards R beyond V_old + clip; the clipped term is larger and constant in V: no gradient
    values, old, returns, mask = (np.array([[0.9, 0.0]], np.float32), np.array([[0.0, 0.0]], np.float32),
                                  np.array([[1.0, 1.0]], np.float32), np.ones((1, 2), np.float32))
    grad = jax.grad(lambda v: value_loss(v, old, returns, mask, value_clip=0.2)[0])(values)
    np.testing.assert_allclose(grad, [[0.0, -0.5]])  # token 1: d/dV 0.5 * mean((V - R)^2) = (0 - 1) / 2


def test_ppo_loss_is_the_surrogate_plus_the_weighted_value_loss():
    rng = np.random.default_rng(3)
    values, old_values, returns, mask = critic_batch(seed=3)
    values = np.where(mask > 0, values, 0.0).astype(np.float32)
    n, t = mask.shape
    logp = (-rng.uniform(0.1, 2.0, (n, t))).astype(np.float32)
    old_logp = (logp + 0.3 * rng.standard_normal((n, t))).astype(np.float32)
    ref_logp = (logp + 0.2 * rng.standard_normal((n, t))).astype(np.float32)
    advantages = rng.standard_normal((n, t)).astype(np.float32)
    kw = dict(clip_eps=0.2, beta=0.05, kl_estimator="k3", aggregation="token-mean")
    loss, metrics = ppo_loss(logp, old_logp, ref_logp, advantages, values, old_values, returns, mask,
                             value_coef=0.7, value_clip=0.2, **kw)
    ref_policy, _ = ref_grpo_loss(logp, old_logp, ref_logp, advantages, mask, **kw)
    ref_value, _ = numpy_value_loss(values, old_values, returns, mask, 0.2)
    np.testing.assert_allclose(loss, ref_policy + 0.7 * ref_value, rtol=1e-5)
    np.testing.assert_allclose(metrics["value_loss"], ref_value, rtol=1e-5)
    # the gradient splits: the log-probs get grpo_loss's, the values 0.7 x value_loss's
    g_logp, g_values = jax.grad(lambda lp, v: ppo_loss(lp, old_logp, ref_logp, advantages, v, old_values, returns,
                                                       mask, value_coef=0.7, **kw)[0], argnums=(0, 1))(logp, values)
    np.testing.assert_allclose(g_logp, jax.grad(lambda lp: grpo_loss(lp, old_logp, ref_logp, advantages, mask,
                                                                     **kw)[0])(logp), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_values, 0.7 * jax.grad(lambda v: value_loss(v, old_values, returns, mask)[0])(values),
                               rtol=1e-5, atol=1e-7)


def test_rloo_matches_leave_one_out_means():
    rewards = np.array([1.0, 0.0, 1.0, 0.5, 3.0, 3.0, 3.0, 3.0], np.float32)
    expected = []
    for g in range(2):
        group = rewards[4 * g:4 * g + 4].astype(np.float64)
        expected += [group[j] - np.mean(np.delete(group, j)) for j in range(4)]
    np.testing.assert_allclose(jax.jit(rloo_advantages, static_argnums=1)(rewards, 4), expected, rtol=1e-6)
    assert np.all(np.asarray(rloo_advantages(rewards, 4))[4:] == 0)  # equal rewards: exactly 0
    with pytest.raises(ValueError, match="not divisible by group_size=3"):
        rloo_advantages(rewards, 3)


def numpy_z_score(x, mask):
    kept = [float(x[idx]) for idx in np.ndindex(x.shape) if mask[idx] > 0]
    mean = sum(kept) / len(kept)
    var = sum((k - mean) ** 2 for k in kept) / len(kept)
    out = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        if mask[idx] > 0:
            out[idx] = (float(x[idx]) - mean) / np.sqrt(var + 1e-8)
    return out


def test_batch_normalized_per_completion_and_per_token():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 1.0], np.float32)
    np.testing.assert_allclose(batch_normalized_advantages(rewards), numpy_z_score(rewards, np.ones(5)), rtol=1e-5)
    values, _, _, mask = critic_batch(seed=5)
    out = jax.jit(batch_normalized_advantages)(values, mask)
    np.testing.assert_allclose(out, numpy_z_score(values, mask), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[mask == 0] == 0)
    assert np.all(np.asarray(batch_normalized_advantages(np.full(4, 2.0, np.float32))) == 0)  # no signal, no NaN
    with pytest.raises(ValueError, match="mask"):
        batch_normalized_advantages(values, mask[:, :2])


def test_sharded_rows_match_one_device():
    mesh = make_mesh({"data": 8})
    rows = NamedSharding(mesh, PartitionSpec("data"))
    values, old, returns, mask = critic_batch(seed=7, n=16)
    values = np.where(mask > 0, values, 0.0).astype(np.float32)
    placed = [jax.device_put(x, rows) for x in (values, old, returns, mask)]
    np.testing.assert_allclose(jax.jit(value_loss)(*placed)[0], value_loss(values, old, returns, mask)[0], rtol=1e-6)
    np.testing.assert_allclose(jax.jit(batch_normalized_advantages)(placed[0], placed[3]),
                               batch_normalized_advantages(values, mask), rtol=1e-5, atol=1e-6)
    rewards = jnp.asarray(np.random.default_rng(0).uniform(size=16), jnp.float32)
    np.testing.assert_allclose(jax.jit(rloo_advantages, static_argnums=1)(jax.device_put(rewards, rows), 4),
                               rloo_advantages(rewards, 4), rtol=1e-6)
