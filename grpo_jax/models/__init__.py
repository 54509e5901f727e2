"""grpo_jax.models: a Flax decoder for the Llama / Qwen2 / Qwen3 families and Hugging Face checkpoint I/O."""

from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.hf_io import load_pretrained, save_pretrained
from grpo_jax.models.model import (
    build_model,
    forward,
    init_params,
    param_logical_axes,
    param_shapes,
    param_shardings,
    positions_from_mask,
)
from grpo_jax.models.tokenizer import load_tokenizer, render_prompt
from grpo_jax.models.transformer import KVCache, Transformer, init_cache, unembedding_matrix

__all__ = [
    "KVCache",
    "ModelConfig",
    "Transformer",
    "UnsupportedModelError",
    "build_model",
    "forward",
    "init_cache",
    "init_params",
    "load_pretrained",
    "load_tokenizer",
    "param_logical_axes",
    "param_shapes",
    "param_shardings",
    "positions_from_mask",
    "render_prompt",
    "save_pretrained",
    "unembedding_matrix",
]
