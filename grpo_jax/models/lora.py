"""LoRA: low-rank adapters on the model's projections, over a frozen base (Hu et al., arXiv 2106.09685).

A targeted projection y = x W (W [in, out], in our layout possibly split over heads) becomes

    y = x W + (alpha / r) * (x A) B,        A [in, r], B [r, out]

with A drawn uniform(+-1/sqrt(in)) and B zero (PEFT's default initialisation), so an adapter starts as the
identity change: the LoRA model at initialisation computes exactly its base's logits. There is no adapter
dropout: GRPO's importance ratio compares the training forward with the sampler's log-probabilities of the
same tokens, and a random dropout mask would make the ratio of an unchanged policy differ from 1.

Parameters stay one plain pytree: the adapters are leaves beside the kernel they adapt, named
``<proj>_lora_a`` / ``<proj>_lora_b`` (e.g. layers_0/attn/q_lora_a), in float32 whatever the base's dtype.
``split_adapters`` cuts a tree into (base, adapters) and ``join_adapters`` puts them back together without
copying any array; ``merge_adapters`` folds them into the base's kernels (W + scale A B) for export.

Targets use PEFT's module names, so that the adapter directory ``grpo-jax export --adapter-only`` writes
loads with ``peft.PeftModel.from_pretrained``: q_proj, k_proj, v_proj, o_proj (attention), gate_proj,
up_proj, down_proj (MLP).

Shapes: A has the kernel's input dimensions then r, B has r then the kernel's output dimensions:
q/k/v: A [D, r], B [r, N, Dh]; o: A [H, Dh, r], B [r, D]; gate/up: A [D, r], B [r, F]; down: A [F, r],
B [r, D]. The rank axis is the logical axis "lora_rank" (replicated); the others shard as the kernel's do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.errors import ConfigError
from grpo_jax.matmul import dense

if TYPE_CHECKING:
    from grpo_jax.models.config import ModelConfig

# PEFT's module name -> (our sub-module, our projection name)
TARGETS: dict[str, tuple[str, str]] = {
    "q_proj": ("attn", "q"), "k_proj": ("attn", "k"), "v_proj": ("attn", "v"), "o_proj": ("attn", "o"),
    "gate_proj": ("mlp", "gate"), "up_proj": ("mlp", "up"), "down_proj": ("mlp", "down"),
}
DEFAULT_TARGETS = tuple(TARGETS)  # every attention and MLP projection
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r (> 0), alpha (the update is scaled by alpha / r) and the targeted projections (PEFT names)."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA: the rank must be a positive int, got {self.rank!r}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"LoRA: alpha must be a positive number, got {self.alpha!r}")
        check_targets(self.targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def targets_projection(self, module: str, projection: str) -> bool:
        return any(TARGETS[t] == (module, projection) for t in self.targets)


def check_targets(targets: tuple[str, ...]) -> None:
    """ConfigError for an empty target list, a duplicate, or a name that matches no projection."""
    if not targets:
        raise ConfigError(f"model.lora_targets is empty; name projections among {', '.join(TARGETS)}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ConfigError(f"model.lora_targets: {unknown} match no projection of the model; "
                          f"the projections are {', '.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"model.lora_targets names a projection twice: {list(targets)}")


def projection_dims(config: ModelConfig, target: str) -> tuple[int, int]:
    """(input features, output features) of the projection ``target`` (a PEFT name) in ``config``."""
    d, f, dh = config.hidden_size, config.intermediate_size, config.head_dim
    return {"q_proj": (d, config.num_attention_heads * dh), "k_proj": (d, config.num_key_value_heads * dh),
            "v_proj": (d, config.num_key_value_heads * dh), "o_proj": (config.num_attention_heads * dh, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}[target]


def check_rank(config: ModelConfig, lora: LoraConfig) -> None:
    """ConfigError when the rank exceeds a targeted projection's smaller side (the update could not have it)."""
    for target in lora.targets:
        fan_in, fan_out = projection_dims(config, target)
        if lora.rank > min(fan_in, fan_out):
            raise ConfigError(f"model.lora_rank={lora.rank} is larger than the {target} projection "
                              f"([{fan_in}, {fan_out}]), whose updates have rank at most {min(fan_in, fan_out)}; "
                              "lower the rank or leave that projection out of model.lora_targets")


def adapter_update(module: nn.Module, projection: str, x: jax.Array, in_shape: tuple[int, ...],
                   in_axes: tuple[str, ...], out_shape: tuple[int, ...], out_axes: tuple[str, ...]) -> jax.Array | None:
    """scale * (x A) B [..., prod(out_shape)] for ``module``'s projection when LoRA targets it, else None.

    Declares the adapter's parameters ``<projection>_lora_a`` (in_shape + (r,)) and ``_lora_b`` ((r,) +
    out_shape) on ``module`` (an Attention or MLP, whose ``config.lora`` says what is targeted). ``x`` is
    [..., prod(in_shape)] in the compute dtype; the result is in the compute dtype.
    """
    config = module.config
    lora = config.lora
    if lora is None or not lora.targets_projection(module.name, projection):
        return None
    fan_in, rank = math.prod(in_shape), lora.rank
    bound = 1.0 / math.sqrt(fan_in)
    a = module.param(f"{projection}_lora_a",
                     nn.with_logical_partitioning(_uniform(bound), in_axes + ("lora_rank",)),
                     in_shape + (rank,), jnp.float32)
    b = module.param(f"{projection}_lora_b",
                     nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank",) + out_axes),
                     (rank,) + out_shape, jnp.float32)
    low = dense(x, a.astype(config.dtype).reshape(fan_in, rank)) * jnp.asarray(lora.scale, config.dtype)
    return dense(low, b.astype(config.dtype).reshape(rank, math.prod(out_shape)))


def _uniform(bound: float):
    """uniform(-bound, bound): PEFT's A initialisation (kaiming_uniform with a = sqrt(5), bound 1/sqrt(in))."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


# ---- the parameter tree ------------------------------------------------------------------------------

def is_adapter(path: tuple[str, ...]) -> bool:
    return path[-1].endswith(ADAPTER_SUFFIXES)


def _filtered(tree: dict, keep) -> dict:
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            sub = _filtered(value, lambda path, name=name: keep((name,) + path))
            if sub:
                out[name] = sub
        elif keep((name,)):
            out[name] = value
    return out


def split_adapters(params: dict) -> tuple[dict, dict]:
    """(base, adapters): the same arrays (not copies) in two nested dicts; adapters is {} without LoRA."""
    return _filtered(params, lambda p: not is_adapter(p)), _filtered(params, is_adapter)


def join_adapters(base: dict, adapters: dict | None) -> dict:
    """The one tree holding ``base``'s and ``adapters``' arrays (the inverse of ``split_adapters``; no copy)."""
    if not adapters:
        return base
    out = dict(base)
    for name, value in adapters.items():
        out[name] = join_adapters(out.get(name, {}), value) if isinstance(value, dict) else value
    return out


def merged_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float, dtype: Any = None) -> jax.Array:
    """W + scale * A B in ``kernel``'s shape and in ``dtype`` (default: the kernel's), summed in float32."""
    rank = a.shape[-1]
    delta = jnp.matmul(a.astype(jnp.float32).reshape(-1, rank), b.astype(jnp.float32).reshape(rank, -1))
    merged = kernel.astype(jnp.float32) + scale * delta.reshape(kernel.shape)
    return merged.astype(kernel.dtype if dtype is None else dtype)


def merge_adapters(config: ModelConfig, params: dict, dtype: Any = None) -> dict:
    """The base tree (no adapter leaves) with every adapted kernel replaced by W + scale * A B (in ``dtype``,
    default the kernel's): the plain model with these parameters computes what the LoRA model computes with
    ``params``. Kernels without adapters are the same arrays as in ``params``."""
    base, adapters = split_adapters(params)
    if not adapters:
        return base
    scale = config.lora.scale

    def merge(base_node: dict, adapter_node: dict) -> dict:
        out = dict(base_node)
        for name, value in adapter_node.items():
            if isinstance(value, dict):
                out[name] = merge(base_node[name], value)
            elif name.endswith("_lora_a"):
                projection = name[: -len("_lora_a")]
                kernel = base_node[f"{projection}_kernel"]
                out[f"{projection}_kernel"] = merged_kernel(kernel, value, adapter_node[f"{projection}_lora_b"],
                                                            scale, dtype)
        return out

    return merge(base, adapters)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
