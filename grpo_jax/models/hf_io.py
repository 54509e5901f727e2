"""Hugging Face checkpoints in and out: config.json + *.safetensors (single file or sharded with an index).

Loading never builds a host copy of the whole model, let alone one per device: every tensor is opened
memory-mapped (safetensors' ``safe_open``) and ``jax.make_array_from_callback`` asks, for each device,
only for the slice that device holds under the parameter's sharding; that slice is read from the mapped
file, converted to our layout and dtype, and copied to the device.

Layouts (ours <- Hugging Face, whose nn.Linear weights are [out, in]):
  "same"        embedding [V, D], norm scales, o_proj bias            identical
  "transpose"   MLP kernels [in, out], lm_head [D, V]                  weight.T
  "heads_out"   q/k/v kernels [D, heads, Dh]   <- [heads * Dh, D]      reshape + transpose
  "heads_in"    o kernel [H, Dh, D]            <- [D, H * Dh]          reshape + transpose
  "heads_bias"  q/k/v biases [heads, Dh]       <- [heads * Dh]         reshape
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy, which safetensors' NumPy reader needs)
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from grpo_jax import storage
from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.models.attention import DEFAULT_QUERY_BLOCK
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.gguf_io import find_gguf_file, read_gguf
from grpo_jax.models.lora import merge_adapters
from grpo_jax.models.model import build_model, param_shapes, param_shardings
from grpo_jax.models.transformer import Transformer
from grpo_jax.sharding import DEFAULT_RULES, LogicalRules

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tensors some checkpoints carry that hold nothing we need (recomputed rotary tables).
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")


def parameter_map(config: ModelConfig) -> dict[tuple[str, ...], tuple[str, str]]:
    """Our parameter path -> (Hugging Face tensor name, layout kind), for every parameter of ``config``."""
    names: dict[tuple[str, ...], tuple[str, str]] = {
        ("embedding",): ("model.embed_tokens.weight", "same"),
        ("final_norm", "scale"): ("model.norm.weight", "same"),
    }
    if not config.tie_word_embeddings:
        names[("lm_head",)] = ("lm_head.weight", "transpose")
    for i in range(config.num_hidden_layers):
        ours, hf = f"layers_{i}", f"model.layers.{i}"
        names[(ours, "input_norm", "scale")] = (f"{hf}.input_layernorm.weight", "same")
        names[(ours, "post_attention_norm", "scale")] = (f"{hf}.post_attention_layernorm.weight", "same")
        for proj in ("q", "k", "v"):
            names[(ours, "attn", f"{proj}_kernel")] = (f"{hf}.self_attn.{proj}_proj.weight", "heads_out")
            if config.qkv_bias:
                names[(ours, "attn", f"{proj}_bias")] = (f"{hf}.self_attn.{proj}_proj.bias", "heads_bias")
        names[(ours, "attn", "o_kernel")] = (f"{hf}.self_attn.o_proj.weight", "heads_in")
        if config.o_bias:
            names[(ours, "attn", "o_bias")] = (f"{hf}.self_attn.o_proj.bias", "same")
        if config.qk_norm:
            names[(ours, "attn", "q_norm", "scale")] = (f"{hf}.self_attn.q_norm.weight", "same")
            names[(ours, "attn", "k_norm", "scale")] = (f"{hf}.self_attn.k_norm.weight", "same")
        for proj in ("gate", "up", "down"):
            names[(ours, "mlp", f"{proj}_kernel")] = (f"{hf}.mlp.{proj}_proj.weight", "transpose")
    return names


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The Hugging Face tensor shape that holds our parameter of ``shape`` in layout ``kind``."""
    if kind == "same":
        return shape
    if kind == "transpose":
        return shape[::-1]
    if kind == "heads_out":
        return (shape[1] * shape[2], shape[0])
    if kind == "heads_in":
        return (shape[2], shape[0] * shape[1])
    if kind == "heads_bias":
        return (shape[0] * shape[1],)
    raise ValueError(f"unknown layout kind {kind!r}")


def read_block(kind: str, source: Any, index: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Our-layout block ``index`` of a parameter of ``shape``, reading only what it needs from ``source``.

    ``source`` is anything sliceable in the Hugging Face layout: a safetensors slice or a NumPy array.
    Head axes are read as whole heads (contiguous rows) and then cut, which is exact for any index.
    """
    idx = tuple(slice(*s.indices(n)) for s, n in zip(index, shape, strict=True))
    if kind == "same":
        return np.asarray(source[idx])
    if kind == "transpose":
        return np.asarray(source[idx[1], idx[0]]).T
    if kind == "heads_out":  # ours [D, N, Dh] <- hf [N * Dh, D]
        s_d, s_n, s_h = idx
        dh = shape[2]
        block = np.asarray(source[s_n.start * dh: s_n.stop * dh, s_d])
        return block.reshape(-1, dh, block.shape[1]).transpose(2, 0, 1)[:, :, s_h]
    if kind == "heads_in":  # ours [N, Dh, D] <- hf [D, N * Dh]
        s_n, s_h, s_d = idx
        dh = shape[1]
        block = np.asarray(source[s_d, s_n.start * dh: s_n.stop * dh])
        return block.reshape(block.shape[0], -1, dh).transpose(1, 2, 0)[:, s_h, :]
    if kind == "heads_bias":  # ours [N, Dh] <- hf [N * Dh]
        s_n, s_h = idx
        dh = shape[1]
        return np.asarray(source[s_n.start * dh: s_n.stop * dh]).reshape(-1, dh)[:, s_h]
    raise ValueError(f"unknown layout kind {kind!r}")


def to_hf_layout(kind: str, array: np.ndarray) -> np.ndarray:
    """Our full parameter -> the Hugging Face tensor (inverse of ``read_block`` over the full index)."""
    if kind == "same":
        return array
    if kind == "transpose":
        return array.T
    if kind == "heads_out":
        return array.transpose(1, 2, 0).reshape(array.shape[1] * array.shape[2], array.shape[0])
    if kind == "heads_in":
        return array.transpose(2, 0, 1).reshape(array.shape[2], array.shape[0] * array.shape[1])
    if kind == "heads_bias":
        return array.reshape(-1)
    raise ValueError(f"unknown layout kind {kind!r}")


# ---- reading ----------------------------------------------------------------------------------------


def _weight_files(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file, from the index when there is one, else from every *.safetensors."""
    index_file = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index_file):
        try:
            with open(index_file, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{index_file} is not a valid safetensors index (needs a 'weight_map'): {e}") from e
        missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(path, f))})
        if missing:
            raise InputNotFoundError(f"{index_file} names weight files that do not exist: {missing}")
        return {name: os.path.join(path, f) for name, f in weight_map.items()}
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise InputNotFoundError(f"no *.safetensors weights (and no {INDEX_FILE}) in checkpoint directory {path!r}")
    mapping: dict[str, str] = {}
    with _opened({os.path.join(path, f) for f in files}) as handles:
        for file, handle in handles.items():
            mapping.update({name: file for name in handle.keys()})
    return mapping


@contextlib.contextmanager
def _opened(files: set[str]) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        handles = {}
        for file in sorted(files):
            try:
                handles[file] = stack.enter_context(safe_open(file, framework="numpy"))
            except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
                raise ConfigError(f"{file} is not a readable safetensors file ({type(e).__name__}: {e})") from e
        yield handles


def _same_tensor(files: dict[str, str], a: str, b: str) -> bool:
    """Whether two tensors of the checkpoint hold identical values (read memory-mapped, on the host)."""
    with _opened({files[a], files[b]}) as handles:
        x, y = handles[files[a]].get_slice(a), handles[files[b]].get_slice(b)
        return tuple(x.get_shape()) == tuple(y.get_shape()) and np.array_equal(x[:], y[:])


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def load_pretrained(
    path: str | os.PathLike,
    *,
    mesh: Mesh | None = None,
    param_dtype: Any = jnp.float32,
    dtype: Any = None,
    remat: bool = False,
    rules: LogicalRules = DEFAULT_RULES,
    attention_query_block: int = DEFAULT_QUERY_BLOCK,
) -> tuple[Transformer, dict]:
    """Load a local checkpoint into (model, params): a Hugging Face directory or a GGUF file.

    Args:
      path: directory with config.json and model.safetensors or model-*.safetensors + index (local only);
        or a ``.gguf`` file, or a directory holding one (llama.cpp's format; quantized tensors are
        dequantized, grpo_jax.models.gguf_io).
      mesh: place each parameter with its sharding on this mesh (logical ``rules``); None = one device.
      param_dtype: dtype the parameters are stored in (float32 for training).
      dtype: compute dtype (default: param_dtype; bfloat16 is the usual choice on accelerators).
      remat: rematerialise each layer's activations in the backward pass.
      attention_query_block: queries per rematerialised attention block (ModelConfig).

    Raises FileNotFoundError (no config.json / weights), ValueError (corrupt file, a tensor missing, extra
    or of the wrong shape for the config; GGUFError for a GGUF file) and UnsupportedModelError (an
    architecture or option we do not implement).
    """
    path = os.fspath(path)
    runtime = dict(param_dtype=param_dtype, dtype=param_dtype if dtype is None else dtype, remat=remat,
                   attention_query_block=attention_query_block)
    gguf_file = find_gguf_file(path)
    if gguf_file is not None:
        config, arrays = read_gguf(gguf_file, **runtime)
        return _placed(config, arrays, gguf_file, mesh, rules)
    config = ModelConfig.from_pretrained(path, **runtime)
    files = _weight_files(path)
    if config.tie_word_embeddings and "lm_head.weight" in files and not _same_tensor(
        files, "lm_head.weight", "model.embed_tokens.weight"
    ):
        # transformers does the same: a stored head that differs from the embedding is used, untied
        logger.warning("%s: tie_word_embeddings=true but lm_head.weight differs from the embedding; "
                       "loading them untied, as transformers does", path)
        config = config.replace(tie_word_embeddings=False)
    if config.tie_word_embeddings:  # an identical copy of the embedding (checked above) is not a stray tensor
        files = {name: file for name, file in files.items() if name != "lm_head.weight"}
    needed = {hf for hf, _ in parameter_map(config).values()}
    with _opened({files[hf] for hf in needed if hf in files}) as handles:
        tensors = {name: handles[file].get_slice(name) if name in needed else None for name, file in files.items()}
        return _placed(config, tensors, path, mesh, rules)


def _shape(tensor: Any) -> tuple[int, ...]:
    return tuple(tensor.get_shape()) if hasattr(tensor, "get_shape") else tuple(tensor.shape)


def _placed(config: ModelConfig, tensors: Mapping[str, Any], where: str, mesh: Mesh | None,
            rules: LogicalRules) -> tuple[Transformer, dict]:
    """(model, params) from ``tensors`` (Hugging Face name -> anything sliceable in Hugging Face layout: a
    safetensors slice or a NumPy array; None for a name present but not read), each parameter read block by
    block onto the devices that hold it. ``where`` names the checkpoint in errors."""
    model = build_model(config, mesh, rules)
    shapes = param_shapes(model)
    if mesh is not None:
        shardings = param_shardings(model, mesh, rules)
    names = parameter_map(config)

    expected = {hf for hf, _ in names.values()}
    missing = sorted(expected - set(tensors))
    if missing:
        raise ConfigError(f"checkpoint {where!r} lacks {len(missing)} tensor(s) the config needs, e.g. {missing[:3]}")
    unexpected = sorted(n for n in set(tensors) - expected if not _IGNORED.match(n))
    if unexpected:
        raise ConfigError(
            f"checkpoint {where!r} has {len(unexpected)} tensor(s) this {config.model_type} config does not use, "
            f"e.g. {unexpected[:3]}: the config and the weights disagree"
        )

    params: dict = {}
    for our_path, (hf_name, kind) in names.items():
        shape = tuple(_get(shapes, our_path).shape)
        tensor = tensors[hf_name]
        want = hf_shape(kind, shape)
        if _shape(tensor) != want:
            raise ConfigError(f"tensor {hf_name!r} has shape {_shape(tensor)} but the config needs {want} "
                             f"(checkpoint {where})")
        sharding = _get(shardings, our_path) if mesh is not None else SingleDeviceSharding(jax.devices()[0])

        def read(index, tensor=tensor, kind=kind, shape=shape):
            return read_block(kind, tensor, index, shape).astype(config.param_dtype)

        _set(params, our_path, jax.make_array_from_callback(shape, sharding, read))
    return model, params


# ---- writing ----------------------------------------------------------------------------------------


def _dtype_name(dtype: Any) -> str:
    return jnp.dtype(dtype).name


def save_pretrained(
    model: Transformer,
    params: dict,
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 5 * 1024**3,
) -> None:
    """Write config.json and safetensors that transformers loads (``AutoModelForCausalLM.from_pretrained``).

    Args:
      dtype: dtype of the written tensors (default: the parameters' own); recorded in config.json.
      max_shard_bytes: largest file; bigger models are split into model-0000k-of-0000n.safetensors with
        model.safetensors.index.json, as transformers writes them.

    A LoRA model is written merged (grpo_jax.models.lora.merge_adapters): a plain checkpoint of the base's
    architecture. Files are written under temporary names and renamed when all are complete, so an interrupted export
    never leaves a directory that looks complete; existing files of the same names are replaced.
    The exported tensors are gathered into host memory first (4 bytes per parameter in fp32); params on a
    mesh are fetched from their devices.
    """
    path = os.fspath(path)
    config = model.config
    if config.lora is not None:  # the merged model: W + scale A B in place of each adapted kernel
        params = merge_adapters(config, params)
    names = parameter_map(config)
    leaves = [_get(params, p) for p in names]
    out_dtype = jnp.dtype(dtype if dtype is not None else leaves[0].dtype)
    hf_config = config.to_hf(dtype=_dtype_name(out_dtype))

    tensors: dict[str, np.ndarray] = {}
    for (_our_path, (hf_name, kind)), leaf in zip(names.items(), leaves, strict=True):
        host = np.asarray(jax.device_get(leaf)).astype(out_dtype)
        tensors[hf_name] = np.ascontiguousarray(to_hf_layout(kind, host))

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes

    os.makedirs(path, exist_ok=True)
    file_names = (
        [SINGLE_FILE] if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    pending: list[tuple[str, str]] = []
    for file_name, shard in zip(file_names, shards, strict=True):
        tmp = os.path.join(path, file_name + ".tmp")
        save_file(shard, tmp, metadata={"format": "pt"})
        os.chmod(tmp, storage.default_mode())  # safetensors creates its file 0o600; the export is for others too
        pending.append((tmp, os.path.join(path, file_name)))
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
            "weight_map": {name: f for f, shard in zip(file_names, shards, strict=True) for name in shard},
        }
        tmp = os.path.join(path, INDEX_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
        pending.append((tmp, os.path.join(path, INDEX_FILE)))
    hf_config.save_pretrained(os.path.join(path, ".config.tmp"))
    pending.append((os.path.join(path, ".config.tmp", "config.json"), os.path.join(path, "config.json")))
    # Weight files of an earlier export to the same directory would mix with these: removed first, so that
    # an export interrupted here leaves weights missing (an error on load), never old ones read as new
    for name in stale_weight_files(os.listdir(path), [os.path.basename(final) for _, final in pending]):
        os.remove(os.path.join(path, name))
    for tmp, final in pending:
        os.replace(tmp, final)
    os.rmdir(os.path.join(path, ".config.tmp"))


_SHARD_FILE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def stale_weight_files(existing: Iterable[str], written: Collection[str]) -> list[str]:
    """The weight files and index among ``existing`` (names in an export directory) that an export writing
    ``written`` does not replace. Left there they would be read instead of the new weights: this loader and
    transformers prefer an index to the single file, and transformers the single file to shards."""
    return [name for name in existing if name not in written
            and (name in (SINGLE_FILE, INDEX_FILE) or _SHARD_FILE.fullmatch(name))]
