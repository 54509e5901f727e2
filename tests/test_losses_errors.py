"""Bad input gets an error that names the argument and says what was expected."""

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
    token_logprobs_from_hidden,
)

LP = jnp.zeros((4, 3))
MASK = jnp.ones((4, 3))
ADV = jnp.zeros((4,))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(group_size=3), r"batch of 4 completions is not divisible by group_size=3"),
        (dict(group_size=1), r"`group_size` must be an int >= 2"),
        (dict(group_size=2.0), r"`group_size` must be an int >= 2"),
        (dict(group_size=2, scale="std"), r"unknown scale='std'; expected one of 'group', 'batch', 'none'"),
        (dict(group_size=2, eps=-1.0), r"`eps` must be a finite number >= 0"),
    ],
)
def test_group_advantages_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        group_advantages(jnp.zeros(4), **kwargs)


def test_group_advantages_rejects_nan_and_wrong_rank():
    with pytest.raises(ValueError, match=r"group_advantages: `rewards` contains 1 non-finite value.*\[\(2,\)\]"):
        group_advantages(jnp.array([1.0, 0.0, jnp.nan, 1.0]), 2)
    with pytest.raises(ValueError, match=r"`rewards` must be a 1-D array \[N\].*shape \(2, 2\)"):
        group_advantages(jnp.zeros((2, 2)), 2)


def test_nan_check_does_not_break_jit():
    adv = jax.jit(lambda r: group_advantages(r, 2))(jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(adv, [0.7071061, -0.7071061], rtol=1e-6)


@pytest.mark.parametrize(
    "args, kwargs, pattern",
    [
        ((LP, LP[:, :2], None, ADV, MASK), {}, r"`old_logprobs` has shape \(4, 2\) but `logprobs` has shape \(4, 3\)"),
        ((LP, None, LP, ADV, MASK[:3]), {}, r"`mask` has shape \(3, 3\) but `logprobs` has shape \(4, 3\)"),
        ((LP, None, LP[:2], ADV, MASK), {}, r"`ref_logprobs` has shape \(2, 3\)"),
        ((LP, None, LP, jnp.zeros(3), MASK), {}, r"`advantages` has shape \(3,\); expected \[N\]=\(4,\)"),
        ((LP[0], None, LP, ADV, MASK), {}, r"`logprobs` must be \[N, T\]"),
        ((LP, None, None, ADV, MASK), {}, r"`ref_logprobs` is None but beta=0.04 > 0"),
        ((LP, None, LP, ADV, MASK), dict(aggregation="mean"), r"unknown aggregation='mean'; expected one of"),
        ((LP, None, LP, ADV, MASK), dict(kl_estimator="k4"), r"unknown kl_estimator='k4'; expected one of 'k1'"),
        ((LP, None, LP, ADV, MASK), dict(ratio_level="seq"), r"unknown ratio_level='seq'"),
        ((LP, None, LP, ADV, MASK), dict(clip_eps=0.0), r"`clip_eps` must be a finite number > 0"),
        ((LP, None, LP, ADV, MASK), dict(clip_eps_high=-0.1), r"`clip_eps_high` must be a finite number > 0"),
        ((LP, None, LP, ADV, MASK), dict(beta=-1.0), r"`beta` must be a finite number >= 0"),
        ((LP, None, LP, ADV, MASK), dict(aggregation="seq-mean-token-sum-norm", max_tokens=0),
         r"`max_tokens` must be an int >= 1 or None, got 0"),
        ((LP, None, LP, ADV.at[1].set(jnp.nan), MASK), {}, r"`advantages` contains 1 non-finite"),
        ((LP.astype(jnp.int32), None, None, ADV, MASK), dict(beta=0.0), r"`logprobs` must be a floating-point"),
    ],
)
def test_grpo_loss_arguments(args, kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        grpo_loss(*args, **kwargs)


def test_building_blocks_arguments():
    with pytest.raises(ValueError, match=r"unknown estimator='kl'"):
        kl_penalty(LP, LP, estimator="kl")
    with pytest.raises(ValueError, match=r"unknown aggregation='sum'"):
        aggregate_loss(LP, MASK, aggregation="sum")


def test_process_advantages_arguments():
    sr, ends, mask = jnp.zeros((4, 2)), jnp.zeros((4, 2), jnp.int32), jnp.ones((4, 5))
    with pytest.raises(ValueError, match=r"`step_end_positions` must lie in \[0, T=5\) or be -1.*\[0, 5\]"):
        process_advantages(sr, ends.at[0, 0].set(5), mask, 2)
    with pytest.raises(ValueError, match=r"`step_end_positions` has shape \(4, 3\) but `step_rewards`"):
        process_advantages(sr, jnp.zeros((4, 3), jnp.int32), mask, 2)
    with pytest.raises(TypeError, match=r"`step_end_positions` must be an integer array"):
        process_advantages(sr, ends.astype(jnp.float32), mask, 2)
    with pytest.raises(ValueError, match=r"`mask` has 3 rows but `step_rewards` has 4"):
        process_advantages(sr, ends, mask[:3], 2)
    with pytest.raises(ValueError, match=r"not divisible by group_size=3"):
        process_advantages(sr, ends, mask, 3)
    with pytest.raises(ValueError, match=r"`step_rewards` contains 1 non-finite"):
        process_advantages(sr.at[2, 1].set(jnp.inf), ends, mask, 2)


def test_logprobs_arguments():
    logits = jnp.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"`tokens` has shape \(2, 4\) but `logits` has shape \(2, 3, 5\)"):
        token_logprobs(logits, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(TypeError, match=r"`tokens` must be an integer array"):
        token_logprobs(logits, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number > 0, got 0"):
        token_logprobs(logits, jnp.zeros((2, 3), jnp.int32), temperature=0)
    hidden, w = jnp.zeros((2, 3, 4)), jnp.zeros((5, 7))
    with pytest.raises(ValueError, match=r"`unembedding` has shape \(5, 7\) but `hidden` has width D=4"):
        token_logprobs_from_hidden(hidden, w, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"`chunk_size` must be an int >= 1, got 0"):
        token_logprobs_from_hidden(hidden, w[:4], jnp.zeros((2, 3), jnp.int32), chunk_size=0)
