"""Log-probabilities of given tokens under temperature-scaled logits, computed in float32.

Two entry points with the same values:
  * ``token_logprobs(logits, tokens)`` when the logits [B, T, V] already exist;
  * ``token_logprobs_from_hidden(hidden, unembedding, tokens)`` from the final hidden states [B, T, D] and
    the unembedding matrix [D, V]. It walks over the time axis in chunks and, when there are several,
    rematerialises each chunk's logits in the backward pass, so neither pass ever holds the full [B, T, V]
    float32 logits of a sequence longer than one chunk: peak
    extra memory is about ``B * chunk_size * V * 4`` bytes (per device: B is the local batch when rows
    are sharded). With Qwen's 151,936-token vocabulary, B = 16 and chunk_size = 128 that is 1.2 GB
    instead of 9.9 GB per 1,024 tokens of sequence.

The sampler draws from softmax(logits / temperature), so passing the sampling temperature here gives the
log-probabilities of the distribution actually sampled from (what GRPO's importance ratio needs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from grpo_jax import _validation as v
from grpo_jax.matmul import dense


def _check_temperature(fn: str, temperature: float) -> None:
    v.require_positive(fn, "temperature", temperature)


def _logprobs_of(logits_f32: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[token] = logit[token] - logsumexp(logits), without a [.., V] log-softmax array."""
    # mode="clip": an id outside [0, V) (e.g. a -100 padding label) yields a finite value to be masked,
    # never NaN; a NaN in a padded slot would survive a multiplication by a 0 mask.
    picked = jnp.take_along_axis(logits_f32, tokens[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
    return picked - jax.nn.logsumexp(logits_f32, axis=-1)


def token_logprobs(logits: jax.Array, tokens: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Log-probability of each token under softmax(logits / temperature).

    Args:
      logits: [B, T, V] float (any float dtype; upcast to float32), logits[b, t] predicts tokens[b, t].
      tokens: [B, T] int, token ids in [0, V); ids outside are clipped into range (padding ids such as
        -100 give a finite value, to be masked by the caller).
      temperature: > 0.

    Returns:
      [B, T] float32 log-probabilities.
    """
    fn = "token_logprobs"
    v.require_rank(fn, "logits", logits, (3,), "[B, T, V]")
    v.require_floating(fn, "logits", logits)
    v.require_rank(fn, "tokens", tokens, (2,), "[B, T]")
    v.require_integer(fn, "tokens", tokens)
    if v.shape_of(tokens) != v.shape_of(logits)[:2]:
        raise ValueError(
            f"{fn}: `tokens` has shape {v.shape_of(tokens)} but `logits` has shape {v.shape_of(logits)}; "
            "tokens must be [B, T] matching logits' first two axes"
        )
    _check_temperature(fn, temperature)
    return _logprobs_of(jnp.asarray(logits, jnp.float32) / temperature, tokens)


def token_logprobs_from_hidden(
    hidden: jax.Array,
    unembedding: jax.Array,
    tokens: jax.Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = 128,
    return_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """``token_logprobs(hidden @ unembedding, tokens)`` without materialising the [B, T, V] logits.

    Args:
      hidden: [B, T, D] final hidden states (after the last norm), any float dtype.
      unembedding: [D, V] output projection (the LM head kernel; pass ``embedding.T`` for tied embeddings).
        The matmul runs in the inputs' dtype with float32 accumulation; log-softmax is float32.
      tokens: [B, T] int token ids in [0, V).
      temperature: > 0.
      chunk_size: most time steps per chunk (chunks are balanced: T is split into ceil(T / chunk_size)
        equal parts). Extra memory ~ B * chunk_size * V * 4 bytes forward, about twice that backward.
      return_entropy: also return the entropy of each position's distribution softmax(logits / temperature),
        in nats (a training diagnostic), computed from the same chunk of logits.

    Returns:
      [B, T] float32 log-probabilities (and [B, T] float32 entropies with ``return_entropy``).
      Differentiable w.r.t. ``hidden`` and ``unembedding``; with more than one chunk the backward pass
      recomputes each chunk's logits instead of storing them.
    """
    fn = "token_logprobs_from_hidden"
    v.require_rank(fn, "hidden", hidden, (3,), "[B, T, D]")
    v.require_floating(fn, "hidden", hidden)
    v.require_rank(fn, "unembedding", unembedding, (2,), "[D, V]")
    v.require_floating(fn, "unembedding", unembedding)
    v.require_rank(fn, "tokens", tokens, (2,), "[B, T]")
    v.require_integer(fn, "tokens", tokens)
    b, t, d = v.shape_of(hidden)
    if v.shape_of(unembedding)[0] != d:
        raise ValueError(
            f"{fn}: `unembedding` has shape {v.shape_of(unembedding)} but `hidden` has width D={d}; "
            "unembedding must be [D, V] (pass embedding.T for tied embeddings)"
        )
    if v.shape_of(tokens) != (b, t):
        raise ValueError(f"{fn}: `tokens` has shape {v.shape_of(tokens)} but `hidden` is [B, T]=({b}, {t})")
    _check_temperature(fn, temperature)
    chunk_size = v.as_int(fn, "chunk_size", chunk_size, minimum=1)

    if t == 0:
        empty = jnp.zeros((b, 0), jnp.float32)
        return (empty, empty) if return_entropy else empty
    n_chunks = -(-t // min(chunk_size, t))
    chunk = -(-t // n_chunks)  # balanced chunks: T = 129 with chunk_size 128 runs 2 x 65, not 2 x 128
    pad = n_chunks * chunk - t
    hidden_padded = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    tokens_padded = jnp.pad(tokens, ((0, 0), (0, pad)))
    # [n_chunks, B, chunk, ...]: every chunk spans the whole batch, so a batch-sharded input stays
    # evenly spread over devices chunk by chunk.
    hidden_chunks = hidden_padded.reshape(b, n_chunks, chunk, d).swapaxes(0, 1)
    token_chunks = tokens_padded.reshape(b, n_chunks, chunk).swapaxes(0, 1)

    def one_chunk(unembedding_DxV: jax.Array, hidden_BxCxD: jax.Array, tokens_BxC: jax.Array):  # C = chunk
        logits_BxCxV = dense(hidden_BxCxD, unembedding_DxV, preferred_element_type=jnp.float32) / temperature
        if not return_entropy:
            return _logprobs_of(logits_BxCxV, tokens_BxC)
        # -sum p log p, with log p from logits shifted by their maximum (log p of the top token is then
        # -log(1 + small), exact in float32). lse - sum p * logits, the same in exact arithmetic, subtracts two
        # large, nearly equal numbers: logits [1000, 990, 0] gave 0.016 nats against 5.0e-4. The token's
        # log-probability is read from the same log p: no second logsumexp pass over [B, chunk, V].
        shifted = logits_BxCxV - jax.lax.stop_gradient(jnp.max(logits_BxCxV, axis=-1, keepdims=True))
        log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
        entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
        picked = jnp.take_along_axis(log_p, tokens_BxC[..., None].astype(jnp.int32), axis=-1, mode="clip")[..., 0]
        return picked, entropy

    # With several chunks, each chunk's logits are recomputed in the backward pass rather than kept from the
    # forward (memory B * chunk * V, not B * T * V). A single chunk's logits are needed all at once either way,
    # so recomputing them would only cost another LM-head matmul.
    chunk_fn = jax.checkpoint(one_chunk) if n_chunks > 1 else one_chunk
    # [n_chunks, B, chunk] log-probabilities (and entropies)
    per_chunk = jax.lax.map(lambda xs: chunk_fn(unembedding, *xs), (hidden_chunks, token_chunks))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n_chunks * chunk)[:, :t]  # noqa: E731
    return jax.tree.map(unchunk, per_chunk)
