"""Causal grouped-query attention over key slots, with long query runs split into rematerialised blocks.

Shapes: B rows, T queries in this call, S key slots, K key/value heads, G query heads per key/value head
(H = K * G), Dh head_dim.

Masking is by slot (see grpo_jax.models.transformer): query t sits in slot ``cache_index + t`` and may
attend slot s when ``s <= cache_index + t`` and ``kv_mask[b, s]``. A query that may attend nothing (a
left-padding position) gets an unspecified finite output; nothing reads it, because no real query
attends a padding slot and the losses mask padding out.

Memory. Plain attention holds fp32 scores [B, K, G, T, S], and autodiff keeps the probabilities of every
layer for the backward pass: quadratic in the sequence length, they dominate a long sequence's gradient
(docs/benchmarks.md, "Attention in query blocks", sizes them). ``attend`` splits the T queries into blocks
of ``query_block`` and wraps each block in ``jax.checkpoint``, so the backward pass recomputes a block's
scores from the queries, keys and values it already keeps: what is saved for the backward pass is O(T),
for one extra QK^T matmul per block. (XLA may still overlap several blocks' recomputations; its CPU
scheduler does, so the peak holds a few blocks' scores: docs/benchmarks.md.) A call with T <= query_block
is one block and is not rematerialised.

A shared prefix. Rows that continue the same prompt (a GRPO group: the completions of one prompt) may pass
its keys and values once, as ``prefix``, instead of each row holding a copy in ``key``/``value``: every
query also attends the prefix's slots (all of them, under the prefix mask), in the same softmax as its own
slots. In a decode step (one query per row) the prefix's scores are one matmul per prompt over all of
its rows' queries, and the step reads the prompt's keys and values once per prompt, not once per row.
With more queries per row the prefix is copied to the rows inside the call, which is faster on the CPU
than a separate prefix matmul joined to the rows' scores (docs/benchmarks.md).

Causal key ranges. When ``cache_index`` is a Python int (every call but a decode step), a block reads
only the key slots its last query may see, ``[0, cache_index + block end)``: the blocks skip the upper
triangle (about half the scores of a long sequence), and a prefill into a longer cache skips its empty
slots. With a traced ``cache_index`` every block reads all S slots.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# A shared prefix for ``attend``: keys [Bp, K, P, Dh], values [Bp, K, P, Dh], mask [Bp, P].
Prefix = tuple[jax.Array, jax.Array, jax.Array]

_MASKED = float(jnp.finfo(jnp.float32).min)  # finite, so a query with nothing to attend stays NaN-free

# Queries per block by default: the fastest of the block sizes compared on a long sequence's gradient
# (docs/benchmarks.md, "Attention in query blocks").
DEFAULT_QUERY_BLOCK = 128


def attend(q: jax.Array, key: jax.Array, value: jax.Array, kv_mask: jax.Array, cache_index: Any,
           query_block: int, prefix: Prefix | None = None) -> jax.Array:
    """Softmax(q k^T / sqrt(Dh)) v under the slot mask (and over a shared prefix's slots, when given).

    Args:
      q: [B, T, K, G, Dh] queries (compute dtype).
      key, value: [B, K, S, Dh] (compute dtype).
      kv_mask: [B, S] bool/int, which key slots hold real tokens.
      cache_index: the slot of query 0: a Python int, or a traced int scalar (decoding).
      query_block: queries per rematerialised block (positive int; see the module docstring).
      prefix: None, or (key [Bp, K, P, Dh], value [Bp, K, P, Dh], mask [Bp, P]) with B a multiple of Bp:
        slots every query of rows ``i * B // Bp ... (i + 1) * B // Bp - 1`` attends besides its own (prefix
        row i), wherever the mask is set.
    Returns:
      [B, T, K, G, Dh] in the compute dtype.
    """
    t, s = q.shape[1], key.shape[2]
    if prefix is not None and q.shape[0] % prefix[0].shape[0]:
        raise ValueError(f"attend: {q.shape[0]} query rows are not a multiple of the prefix's {prefix[0].shape[0]}")
    if prefix is not None and t > 1:
        # Many queries per row (the shared-prompt training pass): the prefix is copied into each row's first
        # slots, which on the CPU is faster than its own matmul and softmax concatenation (docs/benchmarks.md).
        # Decode steps keep it shared.
        key, value, kv_mask, cache_index = _prefix_as_own_slots(prefix, key, value, kv_mask, cache_index)
        prefix, s = None, key.shape[2]
    static = isinstance(cache_index, (int, np.integer))
    if t <= query_block:
        end = min(s, int(cache_index) + t) if static else s
        return _attend_slots(q, key[:, :, :end], value[:, :, :end], kv_mask[:, :end], cache_index, prefix)

    outputs = []
    for start in range(0, t, query_block):
        stop = min(t, start + query_block)
        end = min(s, int(cache_index) + stop) if static else s

        def block(q, key, value, kv_mask, first_slot, start=start, stop=stop, end=end):  # no prefix: copied above
            return _attend_slots(q[:, start:stop], key[:, :, :end], value[:, :, :end], kv_mask[:, :end],
                                 first_slot + start)

        outputs.append(jax.checkpoint(block)(q, key, value, kv_mask, cache_index))
    return jnp.concatenate(outputs, axis=1)


def _prefix_as_own_slots(prefix: Prefix, key: jax.Array, value: jax.Array, kv_mask: jax.Array,
                         cache_index: Any) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    """(key, value, kv_mask, cache_index) with the prefix's P slots copied in front of every row's own."""
    prefix_key, prefix_value, prefix_mask = prefix
    rows, p = key.shape[0] // prefix_key.shape[0], prefix_key.shape[2]
    copy = lambda x, own, axis: jnp.concatenate([jnp.repeat(x.astype(own.dtype), rows, axis=0), own], axis=axis)  # noqa: E731
    return (copy(prefix_key, key, 2), copy(prefix_value, value, 2), copy(prefix_mask, kv_mask, 1),
            cache_index + p)


def _attend_slots(q: jax.Array, key: jax.Array, value: jax.Array, kv_mask: jax.Array,
                  first_slot: Any, prefix: Prefix | None = None) -> jax.Array:
    """Attention of queries in slots ``first_slot ... first_slot + T - 1`` over key slots 0 ... S - 1 (and
    the prefix's slots, for any T; ``attend`` passes a prefix here only for single-query calls).

    Shapes as ``attend``; here S may be the first slots of the cache. Scores and softmax are fp32."""
    batch, t, kv_heads, heads_per_kv, dh = q.shape
    s = key.shape[2]
    if t == 1:  # decoding: a matrix-vector product per row, memory-bound; a fused multiply-reduce reads the
        # cache once, where a batched matmul of [G, Dh] x [Dh, S] tiles is dominated by overhead
        scores = jnp.sum(q[:, 0, :, :, None, :].astype(jnp.float32) * key[:, :, None].astype(jnp.float32),
                         axis=-1)[:, :, :, None, :]
    else:
        scores = jnp.einsum("btkgd,bksd->bkgts", q, key, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(dh))  # [B, K, G, T, S]
    query_slot = first_slot + jnp.arange(t)
    allowed_BxTxS = (jnp.arange(s)[None, :] <= query_slot[:, None])[None] & kv_mask[:, None, :].astype(bool)
    scores = jnp.where(allowed_BxTxS[:, None, None], scores, _MASKED)
    if prefix is not None:  # the prefix's slots first, in the same softmax: scores become [B, K, G, T, P + S]
        prefix_key, prefix_value, prefix_mask = prefix
        bp, p = prefix_key.shape[0], prefix_key.shape[2]
        rows = batch // bp  # R, query rows per prefix row
        # one [R * T * G, Dh] x [Dh, P] matmul per prefix row and kv head
        q_BpxRxTxKxGxDh = q.reshape(bp, rows, t, kv_heads, heads_per_kv, dh)
        prefix_scores = jnp.einsum("brtkgd,bkpd->brkgtp", q_BpxRxTxKxGxDh, prefix_key,
                                   preferred_element_type=jnp.float32)
        prefix_scores_BxKxGxTxP = prefix_scores.reshape(batch, kv_heads, heads_per_kv, t, p)
        prefix_scores_BxKxGxTxP = prefix_scores_BxKxGxTxP / jnp.sqrt(jnp.float32(dh))
        seen_BxP = jnp.repeat(prefix_mask.astype(bool), rows, axis=0)
        scores = jnp.concatenate(
            [jnp.where(seen_BxP[:, None, None, None, :], prefix_scores_BxKxGxTxP, _MASKED), scores], axis=-1)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    shared = None
    if prefix is not None:
        prefix_probs_BpxRxKxGxTxP = probs[..., :p].reshape(bp, rows, kv_heads, heads_per_kv, t, p)
        shared = jnp.einsum("brkgtp,bkpd->brtkgd", prefix_probs_BpxRxKxGxTxP, prefix_value)
        probs, shared = probs[..., p:], shared.reshape(batch, t, kv_heads, heads_per_kv, dh)
    if t == 1:
        out = jnp.sum(probs[:, :, :, 0, :, None] * value[:, :, None], axis=-2)[:, None]  # [B, 1, K, G, Dh]
    else:
        out = jnp.einsum("bkgts,bksd->btkgd", probs, value)
    return out if shared is None else out + shared
