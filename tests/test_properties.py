"""Property tests (hypothesis) of the advantages and of the clipped surrogate's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from grpo_jax.losses import AGGREGATIONS, group_advantages, grpo_loss, process_advantages

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Shapes are drawn from small fixed sets so that eager JAX reuses its compiled kernels across examples.
GROUP_SIZES = st.sampled_from([2, 4, 8])
NUM_GROUPS = st.sampled_from([1, 3])
reward_values = st.floats(min_value=-100, max_value=100, allow_nan=False, width=32)


@st.composite
def reward_batches(draw):
    g, b = draw(GROUP_SIZES), draw(NUM_GROUPS)
    # Mix continuous rewards with small discrete sets, which create ties and all-equal groups.
    elements = st.one_of(reward_values, st.sampled_from([0.0, 1.0]))
    rewards = draw(st.lists(elements, min_size=b * g, max_size=b * g))
    return np.asarray(rewards, np.float32), g


@SETTINGS
@given(reward_batches(), st.sampled_from(["group", "batch", "none"]))
def test_each_group_sums_to_zero(batch, scale):
    rewards, g = batch
    adv = np.asarray(group_advantages(rewards, g, scale=scale), np.float64).reshape(-1, g)
    scale_of_values = 1 + np.abs(adv).max()
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-5 * g * scale_of_values)


@SETTINGS
@given(reward_batches(), st.floats(min_value=-50, max_value=50, width=32), st.sampled_from(["group", "batch", "none"]))
def test_adding_a_constant_changes_nothing(batch, c, scale):
    rewards, g = batch
    spread = np.ptp(rewards.reshape(-1, g), axis=1)
    # Groups with a tiny non-zero spread turn float32 rounding of r + c into large relative changes: excluded.
    assume(np.all((spread == 0) | (spread > 1e-2)))
    base = np.asarray(group_advantages(rewards, g, scale=scale))
    shifted = np.asarray(group_advantages(rewards + np.float32(c), g, scale=scale))
    # rounding of r + c perturbs centred rewards by ~ulp(|r| + |c|): absolute for "none", over the std otherwise
    rounding = 1e-6 * (np.abs(rewards).max() + abs(c) + 1)
    tol = rounding if scale == "none" else rounding / np.maximum(spread.repeat(g), 1e-2) * 4
    assert np.all(np.abs(base - shifted) <= tol + 1e-6)


@SETTINGS
@given(reward_batches(), st.floats(min_value=0.015625, max_value=64, width=32))
def test_scaling_by_positive_c_leaves_group_advantages_unchanged(batch, c):
    rewards, g = batch
    spread = np.ptp(rewards.reshape(-1, g), axis=1)
    # Groups with tiny but non-zero spread sit where eps (1e-6) is comparable to the std: excluded.
    assume(np.all((spread == 0) | (spread > 1e-2)))
    base = np.asarray(group_advantages(rewards, g, eps=0.0))
    scaled = np.asarray(group_advantages(rewards * np.float32(c), g, eps=0.0))
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-4)
    # all-equal groups stay exactly zero under any scaling
    equal = np.repeat(spread == 0, g)
    assert np.all(scaled[equal] == 0.0)


@SETTINGS
@given(st.data())
def test_process_advantages_group_step_rewards_sum_to_zero(data):
    """The normalised step rewards of a group sum to 0: visible at token 0 when every step ends at >= 0."""
    g, s, t = 4, 3, 6
    rewards = np.asarray(data.draw(st.lists(reward_values, min_size=g * s, max_size=g * s)), np.float32).reshape(g, s)
    ends = np.asarray(data.draw(st.lists(st.integers(-1, t - 1), min_size=g * s, max_size=g * s))).reshape(g, s)
    adv = np.asarray(process_advantages(rewards, ends, np.ones((g, t), np.float32), g), np.float64)
    # token 0 of each completion sums all its valid steps (every valid end is >= 0)
    assert abs(adv[:, 0].sum()) <= 1e-4 * (1 + np.abs(adv).max()) * g * s


@st.composite
def clipped_cases(draw):
    n, t = 3, 4
    log_ratio = np.asarray(draw(st.lists(st.floats(-1.5, 1.5, width=32), min_size=n * t, max_size=n * t)), np.float32)
    adv = np.asarray(draw(st.lists(st.floats(-3, 3, width=32), min_size=n, max_size=n)), np.float32)
    mask = np.asarray(draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=n * t, max_size=n * t)), np.float32)
    eps_low = draw(st.sampled_from([0.1, 0.2]))
    eps_high = draw(st.sampled_from([None, 0.28]))
    aggregation = draw(st.sampled_from(AGGREGATIONS))
    ratio_level = draw(st.sampled_from(["token", "sequence"]))
    return log_ratio.reshape(n, t), adv, mask.reshape(n, t), eps_low, eps_high, aggregation, ratio_level


@SETTINGS
@given(clipped_cases())
def test_gradient_is_zero_exactly_where_the_clipped_branch_is_taken(case):
    log_ratio, adv, mask, eps_low, eps_high, aggregation, ratio_level = case
    old = np.full_like(log_ratio, -2.0)
    logp = jnp.asarray(old + log_ratio)
    hi = eps_low if eps_high is None else eps_high

    def loss(lp):
        return grpo_loss(lp, old, None, adv, mask, clip_eps=eps_low, clip_eps_high=eps_high, beta=0.0,
                         aggregation=aggregation, ratio_level=ratio_level)[0]

    grad = np.asarray(jax.grad(loss)(logp))
    token_log_ratio = np.asarray(logp) - old  # the same float32 values the loss sees
    if ratio_level == "token":
        ratio = np.exp(token_log_ratio)
    else:  # GSPO: one ratio per sequence, exp of the masked mean log-ratio, on every token
        seq = (token_log_ratio * mask).sum(1, keepdims=True) / np.maximum(mask.sum(1, keepdims=True), 1)
        ratio = np.broadcast_to(np.exp(seq), mask.shape)
    a = adv[:, None]
    clipped = ((ratio > 1 + hi) & (a > 0)) | ((ratio < 1 - eps_low) & (a < 0))
    assert np.all(grad[clipped] == 0.0)
    # and elsewhere on unmasked tokens with a non-zero advantage, the gradient is not zero
    # |A| > 1e-6: the gradient of a tiny advantage underflows float32 (XLA flushes subnormals to zero)
    live = ~clipped & (mask > 0) & (np.abs(a) > 1e-6)
    live &= np.abs(ratio - (1 + hi)) > 1e-3  # away from the kink, where min() splits its gradient
    live &= np.abs(ratio - (1 - eps_low)) > 1e-3
    assert np.all(grad[live] != 0.0)
