"""Memory arithmetic for a model config: parameter count, training state bytes, KV cache bytes per token.

docs/memory.md tabulates these for the supported checkpoints; the scaling work builds on them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from grpo_jax.models.config import ModelConfig


def parameter_count(config: ModelConfig) -> int:
    """Number of parameters (the same as summing the sizes of ``init_params``)."""
    d, f, dh = config.hidden_size, config.intermediate_size, config.head_dim
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    attention = d * (heads + 2 * kv_heads) * dh + heads * dh * d  # q, k, v and o projections
    attention += (heads + 2 * kv_heads) * dh if config.qkv_bias else 0
    attention += d if config.o_bias else 0
    attention += 2 * dh if config.qk_norm else 0
    layer = attention + 3 * d * f + 2 * d  # SwiGLU's three matrices, two norms
    embeddings = config.vocab_size * d * (1 if config.tie_word_embeddings else 2)
    return embeddings + config.num_hidden_layers * layer + d  # + final norm


def kv_cache_bytes_per_token(config: ModelConfig, dtype: Any = jnp.bfloat16) -> int:
    """Bytes one token occupies in the KV cache: keys and values, every layer, every kv head."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * jnp.dtype(dtype).itemsize


def training_bytes_per_parameter(param_dtype: Any = jnp.float32, reference_dtype: Any | None = jnp.bfloat16) -> int:
    """Bytes per parameter of GRPO training state: params + grads (param dtype) + AdamW's two moments
    (float32) + a frozen reference copy (``reference_dtype``; None when beta = 0 needs no reference)."""
    p = jnp.dtype(param_dtype).itemsize
    reference = 0 if reference_dtype is None else jnp.dtype(reference_dtype).itemsize
    return p + p + 2 * 4 + reference
