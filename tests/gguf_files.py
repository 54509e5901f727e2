"""Tiny GGUF files for tests, written the way llama.cpp's converter writes them, from a tiny Hugging Face model.

llama.cpp's conventions (facts of its converter, re-stated here): tensor names ``token_embd``, ``blk.N.attn_q``
and so on; the Llama family's query and key rows reordered per head from two rotary halves to interleaved
pairs; 1-D tensors (norms, biases) kept in F32 and matrices stored in the file's type; metadata keys
``{arch}.embedding_length`` etc. and ``tokenizer.ggml.*``. Nothing here uses grpo_jax.
"""

from __future__ import annotations

import numpy as np

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{LAYER_HF_TO_GGUF[rest]}"


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's row order for Llama queries/keys: per head, halves -> interleaved pairs."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def write_gguf(path, hf_config, state_dict: dict[str, np.ndarray], tensor_type: str = "F32", *,
               architecture: str | None = None, raw: dict | None = None) -> str:
    """Write ``state_dict`` (Hugging Face names, float32 NumPy arrays) as a GGUF file at ``path``.

    ``raw``: GGUF tensor name -> (stored bytes, GGMLQuantizationType), written as given in place of the state
    dict's tensor of that name (for types the gguf package cannot quantize to)."""
    import gguf

    arch = architecture or hf_config.model_type
    writer = gguf.GGUFWriter(str(path), arch)
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    writer.add_block_count(hf_config.num_hidden_layers)
    writer.add_context_length(hf_config.max_position_embeddings)
    writer.add_embedding_length(hf_config.hidden_size)
    writer.add_feed_forward_length(hf_config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    rope = getattr(hf_config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(hf_config.rms_norm_eps)
    writer.add_vocab_size(hf_config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(hf_config.vocab_size)])
    writer.add_token_types([1] * hf_config.vocab_size)
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    qtype = gguf.GGMLQuantizationType[tensor_type]
    raw = raw or {}
    for name, (data, raw_type) in raw.items():
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=raw_type)
    for name, value in state_dict.items():
        if gguf_name(name) in raw:
            continue
        value = np.asarray(value, np.float32)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            value = llama_cpp_permute(value, heads if "q_proj" in name else kv_heads)
        if value.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(name), value)
        else:
            data = gguf.quantize(value, qtype)
            writer.add_tensor(gguf_name(name), data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
