"""The decoder-only transformer of the Llama / Qwen2 / Qwen3 families, in Flax (linen), with a KV cache.

Pure apply: parameters are a plain nested dict of arrays; ``Transformer.apply({"params": params}, ...)``
has no side effects. Every parameter is declared with logical axis names (embed, heads, kv_heads,
head_dim, mlp, vocab) and activations are constrained by (batch, length, embed, heads, ...): one rule
table (grpo_jax.sharding.DEFAULT_RULES) maps them onto the mesh.

Shapes: B batch rows, T tokens in this call, S key slots (T without a cache, the cache length with one),
D hidden, H query heads, K key/value heads (H % K == 0), Dh head_dim, F intermediate, V vocabulary.

Attention masking is by *slot*: the token at query row t of this call sits in slot ``cache_index + t``
and may attend slot s when s <= cache_index + t and ``kv_mask[b, s]``. Without a cache, cache_index = 0
and kv_mask is the attention (padding) mask, i.e. ordinary causal attention that ignores padding. With
a cache, the same rule covers prefill (T prompt tokens written at cache_index) and decoding (T = 1).
Rotary positions are passed explicitly, so a left-padded row rotates its first real token by 0.

With ``config.lora`` set, the targeted projections also carry low-rank adapters (grpo_jax.models.lora).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from grpo_jax.matmul import dense
from grpo_jax.models.attention import attend
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.lora import adapter_update
from grpo_jax.models.rope import apply_rotary, rotary_angles
from grpo_jax.sharding import MeshRules, constrain

# One layer's cache: {"k": [B, K, S, Dh], "v": [B, K, S, Dh]}; the model's: a tuple over layers.
KVCache = tuple[dict[str, jax.Array], ...]

_INIT = nn.initializers.normal(stddev=0.02)


def _param(module: nn.Module, name: str, init, shape: tuple[int, ...], axes: tuple[str, ...]) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, module.config.param_dtype)


def _plus_adapter(y: jax.Array, update: jax.Array | None) -> jax.Array:
    """A projection's output plus its LoRA update (grpo_jax.models.lora), when the projection has one."""
    return y if update is None else y + update


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale, normalised in float32 (as transformers does)."""

    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,))
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        return normed.astype(x.dtype) * scale.astype(x.dtype)


class Attention(nn.Module):
    config: ModelConfig
    mesh_rules: MeshRules | None = None

    @nn.compact
    def __call__(self, x, cos, sin, kv_mask, cache, cache_index, prefix=None, prefix_mask=None):
        cfg = self.config
        d, dh = cfg.hidden_size, cfg.head_dim
        num_heads, num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        dtype = cfg.dtype

        def project(name, heads, axes):
            kernel = _param(self, f"{name}_kernel", _INIT, (d, heads, dh), ("embed", axes, "head_dim"))
            y = _plus_adapter(dense(x, kernel.astype(dtype).reshape(d, heads * dh)),
                              adapter_update(self, name, x, (d,), ("embed",), (heads, dh), (axes, "head_dim")))
            y = y.reshape(*x.shape[:2], heads, dh)
            if cfg.qkv_bias:
                bias = _param(self, f"{name}_bias", nn.initializers.zeros, (heads, dh), (axes, "head_dim"))
                y = y + bias.astype(dtype)
            return constrain(y, ("batch", "length", axes, "head_dim"), self.mesh_rules)

        q = project("q", num_heads, "heads")
        key, value = project("k", num_kv_heads, "kv_heads"), project("v", num_kv_heads, "kv_heads")
        if cfg.qk_norm:
            q = RMSNorm(cfg, "head_dim", name="q_norm")(q)
            key = RMSNorm(cfg, "head_dim", name="k_norm")(key)
        q, key = apply_rotary(q, cos, sin), apply_rotary(key, cos, sin)

        # Keys/values as [B, K, S, Dh]: batch and kv-head leading, so both attention matmuls contract over a
        # contiguous minor axis and a decode step reads the cache without transposing it.
        key, value = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)
        new_cache = None
        if cache is not None:
            if isinstance(cache_index, int) and cache_index + key.shape[2] > cache["k"].shape[2]:
                raise ValueError(
                    f"KV cache overflow: writing {key.shape[2]} token(s) at slot {cache_index} of a cache with "
                    f"{cache['k'].shape[2]} slots (a traced cache_index is not checked: XLA would clamp it)"
                )
            stored_k, stored_v = key.astype(cache["k"].dtype), value.astype(cache["v"].dtype)
            cache_axes = ("batch", "kv_heads", "length", "head_dim")
            new_cache = {
                "k": constrain(jax.lax.dynamic_update_slice(cache["k"], stored_k, (0, 0, cache_index, 0)),
                               cache_axes, self.mesh_rules),
                "v": constrain(jax.lax.dynamic_update_slice(cache["v"], stored_v, (0, 0, cache_index, 0)),
                               cache_axes, self.mesh_rules),
            }
            if isinstance(cache_index, int) and cache_index == 0:
                # A prefill may attend exactly the slots it writes: use them as written, not a slice of the
                # updated cache (the slice's gradient crashes XLA's CPU dot kernel, YNNPACK; docs/benchmarks.md).
                key, value, kv_mask = stored_k.astype(dtype), stored_v.astype(dtype), kv_mask[:, :key.shape[2]]
            else:
                key, value = new_cache["k"].astype(dtype), new_cache["v"].astype(dtype)

        b, t = x.shape[:2]
        heads_per_kv = num_heads // num_kv_heads  # grouped-query: each kv head serves this many query heads
        q = q.reshape(b, t, num_kv_heads, heads_per_kv, dh)
        shared = None if prefix is None else (prefix["k"].astype(dtype), prefix["v"].astype(dtype), prefix_mask)
        out = attend(q, key, value, kv_mask, cache_index, cfg.attention_query_block, shared)
        out = out.reshape(b, t, num_heads, dh)
        out = constrain(out, ("batch", "length", "heads", "head_dim"), self.mesh_rules)

        o_kernel = _param(self, "o_kernel", _INIT, (num_heads, dh, d), ("heads", "head_dim", "embed"))
        out = out.reshape(b, t, num_heads * dh)
        y = _plus_adapter(dense(out, o_kernel.astype(dtype).reshape(num_heads * dh, d)),
                          adapter_update(self, "o", out, (num_heads, dh), ("heads", "head_dim"), (d,), ("embed",)))
        if cfg.o_bias:
            y = y + _param(self, "o_bias", nn.initializers.zeros, (d,), ("embed",)).astype(dtype)
        return y, new_cache


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: ModelConfig
    mesh_rules: MeshRules | None = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, f, dtype = cfg.hidden_size, cfg.intermediate_size, cfg.dtype
        gate = _param(self, "gate_kernel", _INIT, (d, f), ("embed", "mlp"))
        up = _param(self, "up_kernel", _INIT, (d, f), ("embed", "mlp"))
        down = _param(self, "down_kernel", _INIT, (f, d), ("mlp", "embed"))
        gated = _plus_adapter(dense(x, gate.astype(dtype)),
                              adapter_update(self, "gate", x, (d,), ("embed",), (f,), ("mlp",)))
        lifted = _plus_adapter(dense(x, up.astype(dtype)),
                               adapter_update(self, "up", x, (d,), ("embed",), (f,), ("mlp",)))
        hidden = constrain(jax.nn.silu(gated) * lifted, ("batch", "length", "mlp"), self.mesh_rules)
        return _plus_adapter(dense(hidden, down.astype(dtype)),
                             adapter_update(self, "down", hidden, (f,), ("mlp",), (d,), ("embed",)))


class DecoderLayer(nn.Module):
    config: ModelConfig
    mesh_rules: MeshRules | None = None

    @nn.compact
    def __call__(self, x, cos, sin, kv_mask, cache, cache_index, prefix=None, prefix_mask=None):
        attn_out, new_cache = Attention(self.config, self.mesh_rules, name="attn")(
            RMSNorm(self.config, name="input_norm")(x), cos, sin, kv_mask, cache, cache_index, prefix, prefix_mask
        )
        x = x + attn_out
        x = x + MLP(self.config, self.mesh_rules, name="mlp")(RMSNorm(self.config, name="post_attention_norm")(x))
        return constrain(x, ("batch", "length", "embed"), self.mesh_rules), new_cache


class Transformer(nn.Module):
    """Decoder-only LM. ``__call__`` returns (logits [B, T, V] float32 — or hidden [B, T, D] — , new cache).

    Args of ``__call__``:
      input_ids: [B, T] int token ids.
      positions: [B, T] int rotary positions (for a left-padded row: cumsum(mask) - 1).
      kv_mask: [B, S] bool/int, which key slots hold real tokens (S = T without cache).
      cache: None, or a KVCache from ``init_cache`` with S slots per layer.
      cache_index: int (may be traced): the slot of this call's first token; cache_index + T must not
        exceed the cache's S slots (checked for a Python int; a traced index past the end is clamped by
        XLA, which would overwrite the last slots).
      return_hidden: return the final-norm hidden states [B, T, D] (compute dtype) instead of logits.
      prefix, prefix_mask: None, or the KVCache of a shared prompt, Bp rows of P slots (what a call with
        ``cache=init_cache(config, Bp, P), cache_index=0`` returns for it), and its [Bp, P] mask, with B a
        multiple of Bp: every token of rows ``i * B // Bp ... (i + 1) * B // Bp - 1`` also attends prompt
        row i's real slots, which come before all of its own (``grpo_jax.models.attention``). GRPO's G
        completions of a prompt share its keys and values this way instead of holding G copies.
    """

    config: ModelConfig
    mesh_rules: MeshRules | None = None

    @nn.compact
    def __call__(self, input_ids, positions, kv_mask, cache: KVCache | None = None, cache_index: Any = 0,
                 return_hidden: bool = False, prefix: KVCache | None = None, prefix_mask: Any = None):
        cfg = self.config
        if (prefix is None) != (prefix_mask is None):
            raise ValueError("Transformer: `prefix` and `prefix_mask` go together (the shared prompt's KV cache "
                             "and its [Bp, P] mask)")
        embedding = _param(self, "embedding", _INIT, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        x = jnp.take(embedding, input_ids, axis=0).astype(cfg.dtype)
        x = constrain(x, ("batch", "length", "embed"), self.mesh_rules)
        cos, sin = rotary_angles(cfg, positions)
        layer_cls = nn.remat(DecoderLayer) if cfg.remat else DecoderLayer
        new_cache = []
        for i in range(cfg.num_hidden_layers):
            x, layer_cache = layer_cls(cfg, self.mesh_rules, name=f"layers_{i}")(
                x, cos, sin, kv_mask, None if cache is None else cache[i], cache_index,
                None if prefix is None else prefix[i], prefix_mask
            )
            new_cache.append(layer_cache)
        x = RMSNorm(cfg, name="final_norm")(x)
        out_cache = None if cache is None else tuple(new_cache)
        if return_hidden:
            return x, out_cache
        if cfg.tie_word_embeddings:
            unembedding = embedding.T
        else:
            unembedding = _param(self, "lm_head", _INIT, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))
        logits = dense(x, unembedding.astype(cfg.dtype), preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"), self.mesh_rules), out_cache


def unembedding_matrix(config: ModelConfig, params: dict) -> jax.Array:
    """The [D, V] output projection (the transposed embedding when tied), for token_logprobs_from_hidden."""
    return params["embedding"].T if config.tie_word_embeddings else params["lm_head"]


def init_cache(config: ModelConfig, batch: int, max_length: int, dtype: Any = None) -> KVCache:
    """An empty KV cache: per layer k and v of shape [batch, K, max_length, Dh] (compute dtype by default)."""
    shape = (batch, config.num_key_value_heads, max_length, config.head_dim)
    dtype = config.dtype if dtype is None else dtype
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_hidden_layers))
