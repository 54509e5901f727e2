"""token_logprobs and its chunked variant: closed-form values, gradients, and memory at Qwen's vocabulary."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.losses import token_logprobs, token_logprobs_from_hidden

QWEN_VOCAB = 151_936


def test_closed_form_with_temperature():
    logits = jnp.log(jnp.array([[[1.0, 3.0], [2.0, 2.0]]]))  # probabilities (1/4, 3/4) and (1/2, 1/2)
    tokens = jnp.array([[1, 0]])
    np.testing.assert_allclose(token_logprobs(logits, tokens), [[math.log(0.75), math.log(0.5)]], rtol=1e-6)
    # temperature 0.5 squares the odds: (1, 9) -> p = 0.9
    np.testing.assert_allclose(token_logprobs(logits, tokens, temperature=0.5)[0, 0], math.log(0.9), rtol=1e-6)


def test_bf16_logits_accumulate_in_float32():
    rng = np.random.RandomState(0)
    logits = jnp.asarray(rng.randn(2, 3, 1000) * 5, jnp.bfloat16)
    tokens = jnp.asarray(rng.randint(0, 1000, (2, 3)))
    lp = token_logprobs(logits, tokens)
    assert lp.dtype == jnp.float32
    np.testing.assert_allclose(lp, token_logprobs(logits.astype(jnp.float32), tokens), rtol=1e-6)


def _naive(hidden, w, tokens, temperature=1.0):
    return token_logprobs(jnp.einsum("btd,dv->btv", hidden, w), tokens, temperature=temperature)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 64])
def test_chunked_equals_naive_values_and_gradients(chunk_size):
    rng = np.random.RandomState(1)
    b, t, d, v = 3, 7, 8, 50
    hidden = jnp.asarray(rng.randn(b, t, d), jnp.float32)
    w = jnp.asarray(rng.randn(d, v), jnp.float32)
    tokens = jnp.asarray(rng.randint(0, v, (b, t)))
    weights = jnp.asarray(rng.randn(b, t), jnp.float32)
    chunked = token_logprobs_from_hidden(hidden, w, tokens, temperature=0.7, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, _naive(hidden, w, tokens, 0.7), rtol=1e-6, atol=1e-6)

    def objective(f):
        return lambda h, w: jnp.sum(weights * f(h, w))

    g_chunked = jax.grad(objective(lambda h, w: token_logprobs_from_hidden(
        h, w, tokens, temperature=0.7, chunk_size=chunk_size)), argnums=(0, 1))(hidden, w)
    g_naive = jax.grad(objective(lambda h, w: _naive(h, w, tokens, 0.7)), argnums=(0, 1))(hidden, w)
    for a, b_ in zip(g_chunked, g_naive, strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-6)


def _temp_bytes(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes


def test_qwen_vocabulary_fits_without_full_logits():
    """Forward and backward at V = 151,936 never hold the [B, T, V] float32 logits (compiled temp memory)."""
    b, t, d, chunk = 2, 256, 16, 16
    full_logits_bytes = b * t * QWEN_VOCAB * 4  # 311 MB
    hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, QWEN_VOCAB), jnp.float32)
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def loss(h, w, tok):
        return jnp.sum(token_logprobs_from_hidden(h, w, tok, chunk_size=chunk))

    def naive_loss(h, w, tok):
        return jnp.sum(_naive(h, w, tok))

    chunked_grad = _temp_bytes(jax.grad(loss, argnums=(0, 1)), hidden, w, tokens)
    naive_grad = _temp_bytes(jax.grad(naive_loss, argnums=(0, 1)), hidden, w, tokens)
    assert naive_grad >= full_logits_bytes  # the measurement can see the full logits when they exist
    assert chunked_grad < full_logits_bytes / 4, (chunked_grad, full_logits_bytes)


def test_qwen_vocabulary_values():
    rng = np.random.RandomState(2)
    b, t, d = 1, 5, 8
    hidden = jnp.asarray(rng.randn(b, t, d), jnp.float32)
    w = jnp.asarray(rng.randn(d, QWEN_VOCAB) * 0.5, jnp.float32)
    tokens = jnp.asarray([[0, 17, QWEN_VOCAB - 1, 151_643, 12]])
    np.testing.assert_allclose(
        token_logprobs_from_hidden(hidden, w, tokens, chunk_size=2), _naive(hidden, w, tokens), rtol=1e-6, atol=1e-5
    )


def test_entropy_of_a_peaked_distribution():
    """logits [1000, 990, 0, 0]: about 5e-4 nats. As lse - sum p * logits, float32 gave 0.016 (two large, nearly
    equal terms)."""
    w = np.zeros((2, 4), np.float32)
    w[0] = [1000.0, 990.0, 0.0, 0.0]
    _, ent = token_logprobs_from_hidden(jnp.ones((1, 1, 2), jnp.float32).at[..., 1].set(0.0), jnp.asarray(w),
                                        jnp.zeros((1, 1), jnp.int32), return_entropy=True)
    z = w[0].astype(np.float64)
    logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
    np.testing.assert_allclose(float(ent[0, 0]), -(np.exp(logp) * logp).sum(), rtol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_entropy_matches_numpy(temperature):
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(3, 7, 5)).astype(np.float32)
    w = rng.normal(size=(5, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, size=(3, 7))
    lp, ent = token_logprobs_from_hidden(jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(tokens),
                                         temperature=temperature, chunk_size=3, return_entropy=True)
    z = (hidden.astype(np.float64) @ w.astype(np.float64)) / temperature
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    expected_entropy = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(np.asarray(ent), expected_entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(lp), np.take_along_axis(logp, tokens[..., None], -1)[..., 0], atol=1e-5)
    assert ent.shape == (3, 7) and float(ent.min()) > 0.0
    # the log-probabilities read from the entropy's log-softmax have the plain path's gradient

    def summed(w_, with_entropy):
        out = token_logprobs_from_hidden(jnp.asarray(hidden), w_, jnp.asarray(tokens), temperature=temperature,
                                         chunk_size=3, return_entropy=with_entropy)
        return jnp.sum(out[0] if with_entropy else out)

    plain, with_entropy = (jax.grad(summed)(jnp.asarray(w), e) for e in (False, True))
    np.testing.assert_allclose(np.asarray(with_entropy), np.asarray(plain), rtol=1e-5, atol=1e-6)
