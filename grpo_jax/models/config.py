"""ModelConfig: the architecture of one decoder-only transformer, read from and written to config.json.

Parsing goes through transformers' own config classes (``AutoConfig``), which know every historical
spelling of the fields (``rope_theta``/``rope_scaling`` vs ``rope_parameters`` and so on); we then accept
only what our model implements exactly. Anything else is an error naming the field, never silently
different logits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.models.attention import DEFAULT_QUERY_BLOCK
from grpo_jax.models.lora import LoraConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class UnsupportedModelError(ConfigError):
    """The checkpoint asks for an architecture or an option this model does not implement."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (Hugging Face names where they exist) and our run-time options.

    Architecture (from config.json):
      model_type: "llama", "qwen2" or "qwen3".
      vocab_size V, hidden_size D, intermediate_size F (MLP), num_hidden_layers L,
      num_attention_heads H, num_key_value_heads K (H % K == 0: grouped-query attention), head_dim
      (defaults to D // H), rms_norm_eps, tie_word_embeddings.
      rope_theta; rope_scaling: None or a dict for rope_type "llama3" (factor, low_freq_factor,
        high_freq_factor, original_max_position_embeddings).
      qkv_bias: biases on q/k/v projections (Qwen2: always; Llama/Qwen3: attention_bias).
      o_bias: bias on the output projection (Llama/Qwen3 attention_bias).
      qk_norm: per-head RMSNorm on queries and keys before rotary (Qwen3).
      max_position_embeddings, bos/eos/pad token ids: carried through to the exported config.
    Run-time options (not in config.json):
      param_dtype: dtype parameters are stored in (float32 for training).
      dtype: compute dtype of matmuls and activations (bfloat16 on accelerators); norms, softmax and
        the final logits are float32.
      lora: None, or the low-rank adapters on the projections (grpo_jax.models.lora); never in config.json,
        which describes the base.
      remat: rematerialise each layer's activations in the backward pass (saves memory, costs a forward).
      attention_query_block: a call with more queries than this runs attention in blocks of this many
        queries, each rematerialised in the backward pass, so no [T, S] score matrix is kept
        (grpo_jax.models.attention). Values are unchanged; it trades one QK^T recompute for O(T) memory.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted (key, value) pairs, hashable
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | tuple[int, ...] | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    param_dtype: Any = jnp.float32
    dtype: Any = jnp.float32
    remat: bool = False
    attention_query_block: int = DEFAULT_QUERY_BLOCK
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        # Normalise mutable inputs so the config is hashable (it is a static attribute of the Flax module).
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        for name in ("bos_token_id", "eos_token_id"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type={self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "attention_query_block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig: `{name}` must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelConfig: num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig: rotary embeddings need an even head_dim, got {self.head_dim}")
        if self.rope_scaling is not None:
            rope_type = self.rope_type
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise UnsupportedModelError(
                    f"rope_scaling type {rope_type!r} is not implemented; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
                )
            if rope_type == "llama3":
                missing = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
                missing -= set(self.rope_scaling_dict)
                if missing:
                    raise ValueError(f"ModelConfig: llama3 rope_scaling lacks {sorted(missing)}")

    @property
    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def rope_type(self) -> str:
        scaling = self.rope_scaling_dict
        return scaling.get("rope_type", scaling.get("type", "default"))

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face config.json <-> ModelConfig -------------------------------------------------

    @classmethod
    def from_hf(cls, hf_config: Any, **runtime: Any) -> ModelConfig:
        """From a transformers ``PretrainedConfig`` (llama / qwen2 / qwen3); ``runtime`` sets dtype etc."""
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type={model_type!r} is not supported (mixture-of-experts and other architectures are "
                f"not implemented); supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act={hf_config.hidden_act!r} is not implemented; only 'silu'")
        if getattr(hf_config, "use_sliding_window", False):
            raise UnsupportedModelError("use_sliding_window=true: sliding-window attention is not implemented")
        layer_types = getattr(hf_config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise UnsupportedModelError(
                f"layer_types {sorted(set(layer_types))}: only full attention is implemented"
            )
        if getattr(hf_config, "mlp_bias", False):
            raise UnsupportedModelError("mlp_bias=true is not implemented")
        if getattr(hf_config, "num_experts", None) or getattr(hf_config, "num_local_experts", None):
            raise UnsupportedModelError("mixture-of-experts layers are not implemented")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        rope_theta = rope.pop("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_type {rope_type!r} is not implemented; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise UnsupportedModelError("partial_rotary_factor != 1 is not implemented")
        heads = hf_config.num_attention_heads
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads,
            rms_norm_eps=float(hf_config.rms_norm_eps),
            rope_theta=float(rope_theta),
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(getattr(hf_config, "max_position_embeddings", 32768)),
            bos_token_id=getattr(hf_config, "bos_token_id", None),
            eos_token_id=getattr(hf_config, "eos_token_id", None),
            pad_token_id=getattr(hf_config, "pad_token_id", None),
            **runtime,
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **runtime: Any) -> ModelConfig:
        """Read ``path/config.json`` (a local directory; nothing is downloaded)."""
        from transformers import AutoConfig

        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise InputNotFoundError(f"no config.json in checkpoint directory {os.fspath(path)!r}")
        try:
            with open(config_file, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_file} is not valid JSON: {e}") from e
        if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{config_file}: model_type={raw.get('model_type')!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        return cls.from_hf(AutoConfig.from_pretrained(os.fspath(path), local_files_only=True), **runtime)

    def to_hf(self, *, dtype: str = "float32") -> Any:
        """A transformers ``PretrainedConfig`` of the same architecture (for config.json)."""
        from transformers import AutoConfig

        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters = {**self.rope_scaling_dict, "rope_theta": self.rope_theta}
        kwargs: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope_parameters,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            # transformers' strict config types want lists where we keep hashable tuples
            bos_token_id=list(self.bos_token_id) if isinstance(self.bos_token_id, tuple) else self.bos_token_id,
            eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            pad_token_id=self.pad_token_id,
            hidden_act="silu",
            dtype=dtype,
        )
        if self.model_type == "qwen2":
            if self.o_bias or not self.qkv_bias:
                raise UnsupportedModelError("qwen2 checkpoints have q/k/v biases and no o_proj bias")
        else:
            if self.qkv_bias != self.o_bias:
                raise UnsupportedModelError(f"{self.model_type}: attention_bias puts a bias on all of q/k/v/o")
            kwargs["attention_bias"] = self.qkv_bias
        if (self.model_type == "qwen3") != self.qk_norm:
            raise UnsupportedModelError("q/k RMSNorm is exactly the qwen3 family's")
        # transformers loads by model_type, but serving stacks (vLLM) pick the model class by this field
        kwargs["architectures"] = [HF_ARCHITECTURES[self.model_type]]
        return AutoConfig.for_model(self.model_type, **kwargs)
