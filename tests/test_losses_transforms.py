"""jit, grad and an 8-device sharded batch give the same values as eager single-device execution."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grpo_jax.losses import (
    group_advantages,
    grpo_loss,
    process_advantages,
    token_logprobs,
    token_logprobs_from_hidden,
)

N, T, G = 16, 6, 4  # 16 rows over 8 devices: every group of 4 spans two devices


def _inputs(seed=0):
    rng = np.random.RandomState(seed)
    logp = -rng.rand(N, T).astype(np.float32) * 3
    old = logp + rng.randn(N, T).astype(np.float32) * 0.3
    ref = logp + rng.randn(N, T).astype(np.float32) * 0.3
    lengths = rng.randint(0, T + 1, N)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    rewards = rng.randint(0, 2, N).astype(np.float32)
    return logp, old, ref, rewards, mask


OPTIONS = [
    dict(),
    dict(aggregation="token-mean", clip_eps_high=0.28, kl_estimator="k2"),
    dict(ratio_level="sequence", aggregation="seq-mean-token-sum-norm", max_tokens=8, beta=0.0),
    dict(aggregation="seq-mean-token-sum", kl_estimator="k1"),
]


def _loss_of_rewards(logp, old, ref, rewards, mask, **options):
    adv = group_advantages(rewards, G)
    return grpo_loss(logp, old, ref if options.get("beta", 0.04) > 0 else None, adv, mask, **options)


@pytest.mark.parametrize("options", OPTIONS)
def test_jit_and_sharded_match_eager(options, mesh8):
    logp, old, ref, rewards, mask = _inputs()
    fn = functools.partial(_loss_of_rewards, **options)
    with jax.disable_jit():
        eager_loss, eager_metrics = fn(logp, old, ref, rewards, mask)
    jit_loss, jit_metrics = jax.jit(fn)(logp, old, ref, rewards, mask)

    rows = NamedSharding(mesh8, P("data"))
    sharded_args = [jax.device_put(x, rows) for x in (logp, old, ref, rewards, mask)]
    assert len(sharded_args[0].sharding.device_set) == 8
    sharded_fn = jax.jit(fn, in_shardings=(rows,) * 5, out_shardings=NamedSharding(mesh8, P()))
    sharded_loss, sharded_metrics = sharded_fn(*sharded_args)

    for result in ((jit_loss, jit_metrics), (sharded_loss, sharded_metrics)):
        chex.assert_trees_all_close(result, (eager_loss, eager_metrics), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", OPTIONS)
def test_sharded_gradient_matches_eager(options, mesh8):
    logp, old, ref, rewards, mask = _inputs(1)

    def loss(lp):
        return _loss_of_rewards(lp, old, ref, rewards, mask, **options)[0]

    with jax.disable_jit():
        eager = jax.grad(loss)(jnp.asarray(logp))
    rows = NamedSharding(mesh8, P("data"))
    sharded = jax.jit(jax.grad(loss), in_shardings=rows, out_shardings=rows)(jax.device_put(logp, rows))
    assert sharded.sharding.is_equivalent_to(rows, 2)
    np.testing.assert_allclose(sharded, eager, rtol=1e-6, atol=1e-8)
    assert np.abs(np.asarray(eager)).sum() > 0


def test_advantages_sharded_match_eager(mesh8):
    _, _, _, rewards, mask = _inputs(2)
    rows = NamedSharding(mesh8, P("data"))
    for scale in ("group", "batch", "none"):
        eager = group_advantages(rewards, G, scale=scale)
        sharded = jax.jit(functools.partial(group_advantages, group_size=G, scale=scale))(
            jax.device_put(rewards, rows)
        )
        np.testing.assert_allclose(sharded, eager, rtol=1e-6)

    rng = np.random.RandomState(3)
    step_rewards = rng.rand(N, 3).astype(np.float32)
    ends = rng.randint(-1, T, (N, 3))
    eager = process_advantages(step_rewards, ends, mask, G)
    sharded = jax.jit(functools.partial(process_advantages, group_size=G))(
        *(jax.device_put(x, rows) for x in (step_rewards, ends, mask))
    )
    np.testing.assert_allclose(sharded, eager, rtol=1e-6, atol=1e-7)


def test_logprobs_sharded_match_eager(mesh8):
    rng = np.random.RandomState(4)
    hidden = rng.randn(N, T, 8).astype(np.float32)
    w = rng.randn(8, 40).astype(np.float32)
    tokens = rng.randint(0, 40, (N, T))
    rows = NamedSharding(mesh8, P("data"))
    replicated = NamedSharding(mesh8, P())
    eager = token_logprobs(jnp.einsum("btd,dv->btv", hidden, w), tokens)
    fn = functools.partial(token_logprobs_from_hidden, chunk_size=4)
    sharded = jax.jit(fn, in_shardings=(rows, replicated, rows), out_shardings=rows)(
        jax.device_put(hidden, rows), jax.device_put(w, replicated), jax.device_put(tokens, rows)
    )
    np.testing.assert_allclose(sharded, eager, rtol=1e-6, atol=1e-6)
    logits = jax.device_put(np.einsum("btd,dv->btv", hidden, w), rows)
    np.testing.assert_allclose(jax.jit(token_logprobs)(logits, jax.device_put(tokens, rows)), eager, rtol=1e-6,
                               atol=1e-6)
