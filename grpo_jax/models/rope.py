"""Rotary position embeddings (RoFormer, arXiv 2104.09864) in the Llama / Qwen "rotate half" layout.

Frequencies: inv_freq[i] = rope_theta ** (-2i / head_dim), i < head_dim / 2, optionally rescaled by
Llama 3's rope_scaling (long wavelengths divided by ``factor``, short ones kept, a smooth blend in between;
arXiv 2407.21783). The pair (x[i], x[i + head_dim/2]) is rotated by angle position * inv_freq[i].
All angle arithmetic is float32; positions are explicit per token so left-padded rows rotate correctly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.models.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """[head_dim / 2] float32 rotation frequencies (radians per position), rope_scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if config.rope_type == "llama3":
        s = config.rope_scaling_dict
        factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old_context = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        inv_freq = np.where(medium, blended, scaled)
    return inv_freq.astype(np.float32)


def rotary_angles(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, head_dim] (float32) for integer ``positions`` [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inverse_frequencies(config))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` [B, T, heads, head_dim] by angles ``cos``/``sin`` [B, T, head_dim]; keeps x's dtype."""
    half = x.shape[-1] // 2
    rotated_half = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated_half * sin
