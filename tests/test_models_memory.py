"""Memory arithmetic: the parameter count agrees with the initialised model and with transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import FAMILIES, hf_config

from grpo_jax.models import ModelConfig, build_model, param_shapes
from grpo_jax.models.memory import kv_cache_bytes_per_token, parameter_count, training_bytes_per_parameter


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameter_count_matches_model_and_transformers(family):
    config = ModelConfig.from_hf(hf_config(family))
    shapes = param_shapes(build_model(config))
    assert parameter_count(config) == sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(hf_config(family))
    assert parameter_count(config) == hf_model.num_parameters()


def test_kv_cache_and_training_bytes():
    config = ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
                         tie_word_embeddings=True, qkv_bias=True)  # Qwen2.5-1.5B
    assert parameter_count(config) == 1_543_714_304
    assert kv_cache_bytes_per_token(config) == 2 * 28 * 2 * 128 * 2
    assert kv_cache_bytes_per_token(config, jnp.float32) == 2 * kv_cache_bytes_per_token(config)
    assert training_bytes_per_parameter() == 18
    assert training_bytes_per_parameter(reference_dtype=None) == 16
