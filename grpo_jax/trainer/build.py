"""The policy a run trains: model, parameters on the mesh, tokenizer and stop tokens, from a ModelSpec."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from jax.sharding import Mesh

from grpo_jax.errors import ConfigError
from grpo_jax.models import ModelConfig, build_model, init_params, load_pretrained, load_tokenizer
from grpo_jax.models.char_tokenizer import BOS_ID, EOS_ID, PAD_ID, build_char_tokenizer
from grpo_jax.models.config import DTYPES
from grpo_jax.models.lora import check_rank, join_adapters
from grpo_jax.models.model import init_adapters
from grpo_jax.models.transformer import Transformer
from grpo_jax.trainer.config import ModelSpec

LORA_KEY = 0x10A  # the adapters' key is fold_in(key(run.seed), LORA_KEY): apart from a from-scratch base's


def scratch_model_config(spec: ModelSpec, vocab_size: int) -> ModelConfig:
    """The ModelConfig of a from-scratch model (character tokenizer ids for bos / eos / pad)."""
    return ModelConfig(
        model_type=spec.model_type, vocab_size=vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.hidden_size // spec.num_attention_heads, rope_theta=spec.rope_theta,
        tie_word_embeddings=spec.tie_word_embeddings, qkv_bias=spec.model_type == "qwen2",
        qk_norm=spec.model_type == "qwen3", max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        param_dtype=DTYPES[spec.param_dtype], dtype=DTYPES[spec.dtype], remat=spec.remat,
        attention_query_block=spec.attention_query_block,
    )


def stop_token_ids(tokenizer: Any, model_config: ModelConfig, path: str | None,
                   extra: tuple[int, ...]) -> tuple[int, ...]:
    """EOS ids: the tokenizer's, the model config's, generation_config.json's (chat models end turns with
    their own token, e.g. Qwen's <|im_end|>) and ``extra``; sorted, without duplicates."""
    ids: set[int] = set(extra)
    for value in (tokenizer.eos_token_id, model_config.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, tuple) else (value,))
    generation_config = os.path.join(path, "generation_config.json") if path else None
    if generation_config and os.path.isfile(generation_config):
        with open(generation_config, encoding="utf-8") as f:
            value = json.load(f).get("eos_token_id")
        if value is not None:
            ids.update(value if isinstance(value, list) else [value])
    if not ids:
        raise ConfigError("the tokenizer and the model config name no EOS token; "
                          "set sampling.eos_token_ids (extra stop tokens)")
    return tuple(sorted(int(i) for i in ids))


def build_policy(spec: ModelSpec, mesh: Mesh, *, seed: int,
                 extra_eos: tuple[int, ...] = ()) -> tuple[Transformer, Any, Any, tuple[int, ...]]:
    """(model, params placed on ``mesh``, tokenizer, stop token ids) for ``spec``.

    With ``spec.path`` the Hugging Face checkpoint and its tokenizer are loaded (local files only);
    otherwise a model of the given shape is initialised from ``seed`` with a character tokenizer. With LoRA
    (``spec.lora_rank`` > 0) the model carries adapters and ``params`` holds the base and fresh adapters
    (grpo_jax.models.lora); a rank larger than a targeted projection is a ConfigError here, before any compile.
    """
    if spec.path is not None:
        model, params = load_pretrained(spec.path, mesh=mesh, param_dtype=DTYPES[spec.param_dtype],
                                        dtype=DTYPES[spec.dtype], remat=spec.remat,
                                        attention_query_block=spec.attention_query_block)
        tokenizer = load_tokenizer(spec.path)
    else:
        tokenizer = build_char_tokenizer(spec.alphabet)
        model = build_model(scratch_model_config(spec, len(tokenizer)), mesh)
        if spec.lora is not None:  # before the base is initialised: a bad rank costs no compile
            check_rank(model.config, spec.lora)
        params = init_params(model, jax.random.key(seed), mesh)
    if spec.lora is not None:
        check_rank(model.config, spec.lora)
        model = Transformer(model.config.replace(lora=spec.lora), model.mesh_rules)
        params = join_adapters(params, init_adapters(model, jax.random.fold_in(jax.random.key(seed), LORA_KEY), mesh))
    return model, params, tokenizer, stop_token_ids(tokenizer, model.config, spec.path, extra_eos)
