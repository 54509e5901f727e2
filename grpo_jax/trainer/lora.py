"""What a LoRA run (model.lora_rank > 0) does differently: which parameters it trains, how its sampler sees the
policy, and how its checkpoints point at the base they were trained on.

The trained parameters are the adapters; the base is frozen (grpo_jax.trainer.state.TrainState.frozen).
Checkpoints hold the adapters and their optimizer state only. Their meta records the base instead: where it
came from (model.path, or the seed of a from-scratch base) and a fingerprint of its weights, so that resuming
or exporting against a different base is an error naming it rather than adapters applied to weights they were
not trained for.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from grpo_jax.errors import ConfigError
from grpo_jax.models.lora import merge_adapters, split_adapters
from grpo_jax.models.model import without_adapters
from grpo_jax.models.transformer import Transformer
from grpo_jax.trainer.config import TrainConfig

# relative difference of fingerprints above which two bases differ (a different mesh may sum in another order)
FINGERPRINT_RTOL = 1e-4


def split_trained(model: Transformer, params: Any) -> tuple[Any, Any]:
    """(frozen base or None, trained parameters): under LoRA the base and the adapters, else (None, params)."""
    if model.config.lora is None:
        return None, params
    return split_adapters(params)


@jax.jit
def _abs_sum(tree: Any) -> jax.Array:
    return sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def fingerprint(frozen: Any) -> float | None:
    """The sum of |w| over the frozen base's weights (float32), or None without a base: cheap to compute on
    the mesh, and different for any other checkpoint in practice."""
    return None if frozen is None else float(_abs_sum(frozen))


def base_pointer(config: TrainConfig, base_fingerprint: float) -> dict[str, Any]:
    """The checkpoint meta's record of the base: its path (None: initialised from run.seed) and fingerprint."""
    return {"path": config.model.path, "seed": config.run.seed, "fingerprint": base_fingerprint}


def check_base(meta: dict[str, Any], base_fingerprint: float | None, where: str) -> None:
    """ConfigError when a checkpoint's adapters were trained on another base than the one loaded now."""
    saved = meta.get("lora_base")
    if saved is None or base_fingerprint is None:
        if (saved is None) != (base_fingerprint is None):
            raise ConfigError(f"{where}: the checkpoint {'has no' if saved is None else 'has'} LoRA adapters but "
                              f"the model is built {'with' if saved is None else 'without'} them (model.lora_rank)")
        return
    if not math.isclose(saved["fingerprint"], base_fingerprint, rel_tol=FINGERPRINT_RTOL):
        raise ConfigError(
            f"{where}: the LoRA adapters in this checkpoint were trained on another base model "
            f"(model.path={saved['path']!r}, seed {saved['seed']}: weight fingerprint {saved['fingerprint']:.6g}, "
            f"the base loaded now has {base_fingerprint:.6g}); point model.path at the base the run started from")


@functools.partial(jax.jit, static_argnums=(0,))
def _merged(model: Transformer, params: Any) -> Any:
    return merge_adapters(model.config, params, dtype=model.config.dtype)


def sampling_policy(model: Transformer, params: Any, merged: bool) -> tuple[Transformer, Any]:
    """(model, params) the sampler decodes with: the policy as it is, or under LoRA with ``merged`` the base
    model over a copy of the base whose adapted kernels hold W + scale A B in the compute dtype (made once per
    call; model.lora_merged_sampling). Both give the same tokens up to rounding."""
    if model.config.lora is None or not merged:
        return model, params
    return without_adapters(model), _merged(model, params)
