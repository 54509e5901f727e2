"""LoRA adapters in and out as a PEFT adapter directory: adapter_config.json + adapter_model.safetensors.

Why: an adapter of a few megabytes is what one ships, serves (vLLM, PEFT) or trains on from, without a copy
of the base model; ``peft.PeftModel.from_pretrained(base, path)`` on the base's Hugging Face checkpoint
computes what our LoRA model computes.

What: per layer i and targeted projection p (PEFT names, grpo_jax.models.lora.TARGETS), two float32 tensors

    base_model.model.model.layers.{i}.{self_attn|mlp}.{p}.lora_A.weight   [r, in]
    base_model.model.model.layers.{i}.{self_attn|mlp}.{p}.lora_B.weight   [out, r]

in the layout of torch's nn.Linear ([out, in]), so that PEFT's update is x A^T B^T = x ours_A ours_B:
lora_A.weight is our A [*in_shape, r] flattened to [in, r] and transposed, lora_B.weight our B
[r, *out_shape] flattened to [r, out] and transposed. The flattening of head axes is Hugging Face's
(head h, feature d -> h * Dh + d) on both sides: q/k/v's output [N, Dh], o's input [H, Dh].
The scale alpha / r is PEFT's too (``use_rslora`` false), so the tensors are A and B unscaled.

``load_peft_adapter`` reads such a directory back into our adapter tree (the inverse, bit-exact) and refuses
one whose rank, alpha, targets or options would make it compute something else than ``config.lora`` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from grpo_jax import storage
from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.lora import TARGETS, LoraConfig, split_adapters

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_HF_MODULE = {"attn": "self_attn", "mlp": "mlp"}
# adapter_config.json options that change what the adapter computes: only these values are ours
_REQUIRED = {"peft_type": "LORA", "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "bias": "none",
             "lora_bias": False, "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
             "alpha_pattern": {}}


def _shapes(config: ModelConfig, target: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(in_shape, out_shape) of a projection in our layout: A is in_shape + (r,), B is (r,) + out_shape."""
    d, f, dh = config.hidden_size, config.intermediate_size, config.head_dim
    h, k = config.num_attention_heads, config.num_key_value_heads
    return {"q_proj": ((d,), (h, dh)), "k_proj": ((d,), (k, dh)), "v_proj": ((d,), (k, dh)),
            "o_proj": ((h, dh), (d,)), "gate_proj": ((d,), (f,)), "up_proj": ((d,), (f,)),
            "down_proj": ((f,), (d,))}[target]


def _adapters(config: ModelConfig, lora: LoraConfig) -> Iterator[tuple[tuple[str, ...], str, tuple[int, ...]]]:
    """(our path, PEFT tensor name, our shape) of every adapter tensor ``lora`` gives the model."""
    r = lora.rank
    for i in range(config.num_hidden_layers):
        for target in lora.targets:
            module, projection = TARGETS[target]
            prefix = f"base_model.model.model.layers.{i}.{_HF_MODULE[module]}.{target}"
            in_shape, out_shape = _shapes(config, target)
            yield (f"layers_{i}", module, f"{projection}_lora_a"), f"{prefix}.lora_A.weight", in_shape + (r,)
            yield (f"layers_{i}", module, f"{projection}_lora_b"), f"{prefix}.lora_B.weight", (r,) + out_shape


def _to_peft(path: tuple[str, ...], array: np.ndarray, rank: int) -> np.ndarray:
    """Ours (A [*in, r] or B [r, *out]) -> PEFT's nn.Linear layout (lora_A [r, in], lora_B [out, r])."""
    flat = array.reshape(-1, rank) if path[-1].endswith("_lora_a") else array.reshape(rank, -1)
    return np.ascontiguousarray(flat.T)


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def save_peft_adapter(config: ModelConfig, params: dict, path: str | os.PathLike, *,
                      base_model_name_or_path: str | None) -> None:
    """Write ``params``' LoRA adapters (base leaves are ignored) as a PEFT adapter directory at ``path``.

    ``base_model_name_or_path`` is recorded in adapter_config.json (where PEFT and vLLM look for the base).
    Files are written under temporary names and renamed when both are complete; existing ones are replaced.
    """
    lora = config.lora
    if lora is None:
        raise ConfigError("the model has no LoRA adapters (model.lora_rank is unset): there is no adapter to save")
    _, adapters = split_adapters(params)
    tensors: dict[str, np.ndarray] = {}
    for our_path, name, shape in _adapters(config, lora):
        try:
            leaf = _get(adapters, our_path)
        except KeyError:
            raise ValueError(f"params lack the LoRA adapter {'/'.join(our_path)} that config.lora targets") from None
        host = np.asarray(jax.device_get(leaf), dtype=np.float32)
        if host.shape != shape:
            raise ValueError(f"LoRA adapter {'/'.join(our_path)} has shape {host.shape}, config.lora needs {shape}")
        tensors[name] = _to_peft(our_path, host, lora.rank)
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else float(lora.alpha)
    adapter_config = {
        **_REQUIRED, "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": alpha,
        "target_modules": list(lora.targets), "lora_dropout": 0.0, "init_lora_weights": True,
        "base_model_name_or_path": base_model_name_or_path, "revision": None, "inference_mode": True,
        "layers_pattern": None, "auto_mapping": None,
    }

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    weights_tmp, config_tmp = os.path.join(path, WEIGHTS_FILE + ".tmp"), os.path.join(path, CONFIG_FILE + ".tmp")
    save_file(tensors, weights_tmp, metadata={"format": "pt"})
    os.chmod(weights_tmp, storage.default_mode())  # safetensors creates its file 0o600; the export is for others
    with open(config_tmp, "w", encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(weights_tmp, os.path.join(path, WEIGHTS_FILE))
    os.replace(config_tmp, os.path.join(path, CONFIG_FILE))


def load_peft_adapter(config: ModelConfig, path: str | os.PathLike) -> dict:
    """The adapter tree (our layout, float32 NumPy arrays on the host) of the PEFT adapter directory ``path``.

    ``join_adapters(base, load_peft_adapter(config, path))`` is the LoRA model's parameter tree; place it on
    devices as any host tree. Raises InputNotFoundError when the directory or one of its two files is missing,
    and ConfigError when it is not a LoRA adapter ``config.lora`` describes (another rank, alpha or target
    list, an option we do not implement, or tensors missing, extra or of the wrong shape).
    """
    lora = config.lora
    if lora is None:
        raise ConfigError("the model has no LoRA adapters (model.lora_rank is unset): set them to load an adapter")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputNotFoundError(f"LoRA adapter directory {path!r} does not exist")
    config_file, weights_file = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    for file in (config_file, weights_file):
        if not os.path.isfile(file):
            raise InputNotFoundError(f"no {os.path.basename(file)} in LoRA adapter directory {path!r} "
                                     f"(a PEFT adapter has {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        with open(config_file, encoding="utf-8") as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{config_file} is not valid JSON: {e}") from e
    if not isinstance(saved, dict):
        raise ConfigError(f"{config_file} holds no JSON object")

    wrong = {key: saved[key] for key, value in _REQUIRED.items() if key in saved and saved[key] != value}
    if wrong:
        raise ConfigError(f"{config_file}: {wrong} is not supported; grpo_jax reads plain LoRA adapters "
                          f"({', '.join(f'{k}={v!r}' for k, v in _REQUIRED.items())})")
    if saved.get("r") != lora.rank:
        raise ConfigError(f"{config_file} has rank r={saved.get('r')!r} but model.lora_rank={lora.rank}")
    if saved.get("lora_alpha") != lora.alpha:
        raise ConfigError(f"{config_file} has lora_alpha={saved.get('lora_alpha')!r} "
                          f"but model.lora_alpha={lora.alpha}")
    targets = saved.get("target_modules")
    if not isinstance(targets, list) or sorted(targets) != sorted(lora.targets):
        raise ConfigError(f"{config_file} has target_modules={targets!r} but model.lora_targets="
                          f"{list(lora.targets)}; they must name the same projections")

    expected = {name: (our_path, shape) for our_path, name, shape in _adapters(config, lora)}
    try:
        with safe_open(weights_file, framework="numpy") as handle:
            names = set(handle.keys())
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            if missing or extra:
                raise ConfigError(f"{weights_file} does not match model.lora_*: {len(missing)} tensor(s) missing "
                                  f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")
            tensors = {name: handle.get_tensor(name) for name in expected}
    except ConfigError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
        raise ConfigError(f"{weights_file} is not a readable safetensors file ({type(e).__name__}: {e})") from e

    adapters: dict = {}
    for name, (our_path, shape) in expected.items():
        a_side = our_path[-1].endswith("_lora_a")
        flat = (int(np.prod(shape[:-1])), lora.rank) if a_side else (lora.rank, int(np.prod(shape[1:])))
        tensor = tensors[name]
        if tensor.shape != flat[::-1]:
            raise ConfigError(f"{weights_file}: tensor {name!r} has shape {tensor.shape} but the model needs "
                              f"{flat[::-1]}")
        node = adapters
        for key in our_path[:-1]:
            node = node.setdefault(key, {})
        node[our_path[-1]] = np.ascontiguousarray(tensor.astype(np.float32).T).reshape(shape)
    return adapters
