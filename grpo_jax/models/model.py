"""Functions over (model, params): building, random init, parameter shardings and the padded forward."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from grpo_jax.models.config import ModelConfig
from grpo_jax.models.lora import split_adapters
from grpo_jax.models.transformer import Transformer
from grpo_jax.sharding import DEFAULT_RULES, LogicalRules, MeshRules, logical_sharding


def build_model(config: ModelConfig, mesh: Mesh | None = None, rules: LogicalRules = DEFAULT_RULES) -> Transformer:
    """The Flax module for ``config``; with a mesh its activations are sharded by the logical rules."""
    return Transformer(config, None if mesh is None else MeshRules(mesh, rules))


def _abstract_variables(model: Transformer) -> Any:
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda i: model.init(jax.random.key(0), i, i, i), ids)["params"]


def param_logical_axes(model: Transformer) -> dict:
    """Pytree (same structure as params) of per-dimension logical axis names, e.g. ("embed", "mlp")."""
    return jax.tree.map(
        lambda boxed: tuple(boxed.names), _abstract_variables(model),
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )


def param_shapes(model: Transformer) -> dict:
    """Pytree of jax.ShapeDtypeStruct for every parameter (nothing is allocated)."""
    return nn.meta.unbox(_abstract_variables(model))


def param_shardings(model: Transformer, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> dict:
    """Pytree of NamedSharding: where each parameter lives on ``mesh`` under the logical ``rules``."""
    shapes = param_shapes(model)
    return jax.tree.map(
        lambda axes, s: logical_sharding(axes, s.shape, mesh, rules),
        param_logical_axes(model), shapes, is_leaf=lambda x: isinstance(x, tuple),
    )


def init_params(model: Transformer, key: jax.Array, mesh: Mesh | None = None, *, part=None) -> dict:
    """Random parameters (normal(0.02) weights, unit norms, zero biases; LoRA's A uniform, B zero) as a plain
    pytree; ``part`` (a function of the tree, e.g. ``lambda p: split_adapters(p)[1]``) returns a part of it:
    the rest is traced but never computed, since XLA drops what a program does not return.

    With a mesh, each parameter is created directly in its sharded layout (jit with out_shardings).
    """
    select = part or (lambda tree: tree)

    def init(rng):
        ids = jnp.zeros((1, 1), jnp.int32)
        return select(nn.meta.unbox(model.init(rng, ids, ids, ids)["params"]))

    if mesh is None:
        return jax.jit(init)(key)
    rules = model.mesh_rules.rules if model.mesh_rules is not None else DEFAULT_RULES
    return jax.jit(init, out_shardings=select(param_shardings(model, mesh, rules)))(key)


def init_adapters(model: Transformer, key: jax.Array, mesh: Mesh | None = None) -> dict:
    """Fresh LoRA adapters for ``model`` (whose config sets ``lora``): A uniform(+-1/sqrt(in)), B zero, so the
    adapted model starts equal to its base; sharded by the logical rules like the kernels they adapt."""
    if model.config.lora is None:
        raise ValueError("init_adapters: the model has no LoRA adapters (its config's `lora` is None)")
    return init_params(model, key, mesh, part=lambda tree: split_adapters(tree)[1])


def without_adapters(model: Transformer) -> Transformer:
    """The base model of a LoRA model (the same module for a model without adapters): it computes the base's
    logits from the base's parameters, e.g. the reference policy's from the frozen weights of LoRA training."""
    if model.config.lora is None:
        return model
    return Transformer(model.config.replace(lora=None), model.mesh_rules)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Rotary positions [B, T] for a (left-)padded batch: the index of each real token among its row's."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def forward(model: Transformer, params: dict, input_ids: jax.Array, attention_mask: jax.Array,
            *, return_hidden: bool = False) -> jax.Array:
    """Logits [B, T, V] float32 for a padded batch (positions derived from ``attention_mask`` [B, T]).

    Padding may be on either side; a left-padded row gives the same logits at its real tokens as the
    same row unpadded. Logits at padding positions are finite but meaningless. Token ids must lie in
    [0, vocab_size): checked for concrete ids; under jit an out-of-range id yields NaN logits.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"forward: `input_ids` {input_ids.shape} and `attention_mask` {attention_mask.shape} must both be [B, T]"
        )
    if not isinstance(input_ids, jax.core.Tracer):
        ids = np.asarray(jax.device_get(input_ids))
        if ids.size and (ids.min() < 0 or ids.max() >= model.config.vocab_size):
            raise ValueError(
                f"forward: token ids must lie in [0, vocab_size={model.config.vocab_size}), got values in "
                f"[{ids.min()}, {ids.max()}] (under jit out-of-range ids give NaN logits)"
            )
    out, _ = model.apply(
        {"params": params}, input_ids, positions_from_mask(attention_mask), attention_mask,
        return_hidden=return_hidden,
    )
    return out
