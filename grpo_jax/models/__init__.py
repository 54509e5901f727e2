"""grpo_jax.models: a Flax decoder for the Llama / Qwen2 / Qwen3 families and Hugging Face checkpoint I/O."""

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.hf_io import load_pretrained, save_pretrained
from grpo_jax.models.lora import LoraConfig, join_adapters, merge_adapters, split_adapters
from grpo_jax.models.model import (
    build_model,
    forward,
    init_adapters,
    init_params,
    param_logical_axes,
    param_shapes,
    param_shardings,
    positions_from_mask,
    without_adapters,
)
from grpo_jax.models.tokenizer import load_tokenizer, render_prompt
from grpo_jax.models.transformer import KVCache, Transformer, init_cache, unembedding_matrix

__all__ = [
    "KVCache",
    "LoraConfig",
    "ModelConfig",
    "Transformer",
    "UnsupportedModelError",
    "build_model",
    "forward",
    "init_adapters",
    "init_cache",
    "init_params",
    "join_adapters",
    "load_pretrained",
    "load_tokenizer",
    "merge_adapters",
    "param_logical_axes",
    "param_shapes",
    "param_shardings",
    "positions_from_mask",
    "render_prompt",
    "save_pretrained",
    "split_adapters",
    "unembedding_matrix",
    "without_adapters",
]
