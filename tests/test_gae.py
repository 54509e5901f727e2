"""gae_advantages against a plain NumPy re-derivation (a loop per row over its own length), and its two
limits: lambda = 1 is the discounted return minus V, lambda = 0 the one-step TD error."""

import jax
import numpy as np
import pytest

from grpo_jax.losses import gae_advantages


def numpy_gae(rewards, values, lengths, gamma, lam):
    advantages = np.zeros_like(rewards, dtype=np.float64)
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            running = rewards[i, t] + gamma * next_value - values[i, t] + gamma * lam * running
            advantages[i, t] = running
    returns = np.zeros_like(advantages)
    for i, n in enumerate(lengths):
        returns[i, :n] = advantages[i, :n] + values[i, :n]
    return advantages, returns


def batch(seed=0, n=5, t=7):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    lengths[0] = t  # one full row
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    # garbage on padding: it must not leak into any real token's advantage
    rewards = rng.standard_normal((n, t)).astype(np.float32)
    values = rng.standard_normal((n, t)).astype(np.float32)
    return rewards, values, mask, lengths


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_matches_numpy_reference(gamma, lam):
    rewards, values, mask, lengths = batch()
    advantages, returns = jax.jit(lambda r, v, m: gae_advantages(r, v, m, gamma=gamma, lam=lam))(rewards, values, mask)
    ref_adv, ref_ret = numpy_gae(rewards.astype(np.float64), values.astype(np.float64), lengths, gamma, lam)
    np.testing.assert_allclose(advantages, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, ref_ret, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(advantages)[mask == 0] == 0) and np.all(np.asarray(returns)[mask == 0] == 0)


def test_rows_sharded_over_eight_devices_match_one_device():
    from jax.sharding import NamedSharding, PartitionSpec

    from grpo_jax.sharding import make_mesh

    rewards, values, mask, _ = batch(seed=2, n=16)
    mesh = make_mesh({"data": 8})
    rows = NamedSharding(mesh, PartitionSpec("data"))
    sharded = jax.jit(gae_advantages)(*(jax.device_put(x, rows) for x in (rewards, values, mask)))
    single = gae_advantages(rewards, values, mask)
    for a, b in zip(sharded, single, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_limits_monte_carlo_and_td():
    rewards, values, mask, lengths = batch(seed=1)
    gamma = 0.9
    mc, _ = gae_advantages(rewards, values, mask, gamma=gamma, lam=1.0)
    td, _ = gae_advantages(rewards, values, mask, gamma=gamma, lam=0.0)
    for i, n in enumerate(lengths):
        for t in range(n):
            discounted = sum(gamma ** (k - t) * rewards[i, k] for k in range(t, n))
            assert mc[i, t] == pytest.approx(discounted - values[i, t], abs=1e-5)
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            assert td[i, t] == pytest.approx(rewards[i, t] + gamma * next_value - values[i, t], abs=1e-5)


def test_outcome_reward_with_zero_values_is_the_reward_on_every_token():
    """gamma = lambda = 1, V = 0, reward only on the last token: every token's advantage is the outcome
    reward, GRPO's per-token advantage without the group baseline."""
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    rewards = np.array([[0, 0, 1, 0], [0, -1, 0, 0]], np.float32)
    advantages, returns = gae_advantages(rewards, np.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    np.testing.assert_array_equal(advantages, [[1, 1, 1, 0], [-1, -1, 0, 0]])
    np.testing.assert_array_equal(returns, advantages)


@pytest.mark.parametrize("kwargs,match", [({"gamma": 1.5}, "gamma"), ({"lam": -0.1}, "lam"),
                                          ({"lam": float("nan")}, "lam")])
def test_bad_settings_are_named(kwargs, match):
    rewards, values, mask, _ = batch()
    with pytest.raises(ValueError, match=match):
        gae_advantages(rewards, values, mask, **kwargs)


def test_shape_mismatch_is_named():
    rewards, values, mask, _ = batch()
    with pytest.raises(ValueError, match="values_NxT"):
        gae_advantages(rewards, values[:, :-1], mask)
