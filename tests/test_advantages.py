"""Closed-form cases for group_advantages and process_advantages (values worked out by hand)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.losses import group_advantages, process_advantages


def test_worked_example_two_plus_two():
    """'2 + 2 = ?' -> 4, 5, 4 with rewards 1, 0, 1: mean 2/3, std sqrt(1/3), advantages (1, -2, 1)/sqrt(3)."""
    rewards = jnp.array([1.0, 0.0, 1.0])
    adv = np.asarray(group_advantages(rewards, 3))
    assert float(rewards.mean()) == pytest.approx(0.667, abs=5e-4)
    np.testing.assert_allclose(np.round(adv, 3), [0.577, -1.155, 0.577])
    assert adv[0] == adv[2] > 0 > adv[1]


def test_scales_on_two_groups():
    rewards = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0, 3.0])
    # group 1: centred (1, -2, 1)/3, std sqrt(1/3); group 2: mean 1, centred (-1, -1, 2), ddof=1 std sqrt(3)
    centred = np.array([1 / 3, -2 / 3, 1 / 3, -1, -1, 2])
    stds = np.array([math.sqrt(1 / 3)] * 3 + [math.sqrt(3)] * 3)
    np.testing.assert_allclose(group_advantages(rewards, 3, eps=0.0), centred / stds, rtol=1e-6)
    batch_std = np.std([1, 0, 1, 0, 0, 3], ddof=1)
    np.testing.assert_allclose(
        group_advantages(rewards, 3, scale="batch", eps=0.0),
        centred / batch_std,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        group_advantages(rewards, 3, scale="none"), centred, rtol=1e-6
    )


def test_eps_is_added_to_the_std():
    adv = group_advantages(jnp.array([0.0, 2.0]), 2, eps=0.5)  # std sqrt(2)
    np.testing.assert_allclose(adv, [-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)], rtol=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [0.1, 1.0, -7.3, 1e6])
def test_equal_rewards_give_exactly_zero(scale, value):
    """0.1 * 3 / 3 != 0.1 in floating point; the result must still be exactly 0, never NaN or noise/eps."""
    rewards = jnp.array([value] * 3 + [0.0, 1.0, 0.0])
    adv = np.asarray(group_advantages(rewards, 3, scale=scale, eps=0.0 if scale != "batch" else 1e-6))
    assert np.all(adv[:3] == 0.0)
    assert np.all(np.isfinite(adv)) and np.all(adv[3:] != 0)


def test_whole_batch_equal_with_batch_scale_is_zero():
    adv = group_advantages(jnp.full((6,), 0.3), 3, scale="batch", eps=0.0)
    assert np.all(np.asarray(adv) == 0.0)


def test_bf16_and_int_rewards_are_computed_in_float32():
    r = [1, 0, 1, 1]
    expect = group_advantages(jnp.array(r, jnp.float32), 2)
    for dtype in (jnp.bfloat16, jnp.int32):
        adv = group_advantages(jnp.array(r, dtype), 2)
        assert adv.dtype == jnp.float32
        np.testing.assert_array_equal(adv, expect)


def test_process_advantages_closed_form():
    """One group of two completions, T = 4.

    completion 0: steps ending at tokens 1 and 3 with rewards 1 and 0;
    completion 1: one step ending at token 2 with reward 2 (second slot is padding, end -1).
    Group step rewards (1, 0, 2): mean 1, ddof=1 std 1 -> normalised (0, -1, 1).
    Token advantages = sum of normalised rewards of own steps ending at or after the token.
    """
    step_rewards = jnp.array([[1.0, 0.0], [2.0, 99.0]])
    ends = jnp.array([[1, 3], [2, -1]])
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    adv = process_advantages(step_rewards, ends, mask, 2, eps=0.0)
    np.testing.assert_allclose(adv, [[-1, -1, -1, -1], [1, 1, 1, 0]], atol=1e-7)


def test_process_advantages_unsorted_steps_and_tokens_after_last_step():
    step_rewards = jnp.array([[3.0, 1.0], [1.0, 1.0]])
    ends = jnp.array([[2, 0], [1, -1]])  # steps given out of order; completion 0 has tokens after its last step
    mask = jnp.ones((2, 5))
    adv = process_advantages(step_rewards, ends, mask, 2, eps=0.0)
    # valid rewards (3, 1, 1): mean 5/3, std sqrt(((4/3)^2 + 2 (2/3)^2) / 2) = sqrt(4/3)
    s = math.sqrt(4 / 3)
    hi, lo = (4 / 3) / s, (-2 / 3) / s
    np.testing.assert_allclose(adv, [[hi + lo, hi, hi, 0, 0], [lo, lo, 0, 0, 0]], rtol=1e-6, atol=1e-7)


def test_process_advantages_group_without_signal_is_zero():
    step_rewards = jnp.array([[0.5, 0.5], [0.5, 0.0], [1.0, 0.0], [0.0, 0.0]])
    ends = jnp.array([[0, 2], [1, -1], [0, -1], [-1, -1]])  # group 2 has a single valid step
    adv = np.asarray(process_advantages(step_rewards, ends, jnp.ones((4, 3)), 2))
    assert np.all(adv == 0.0)
