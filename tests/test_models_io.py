"""Hugging Face checkpoints in and out: round trips, sharded files, and clear errors on bad checkpoints."""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hf_checkpoints import make_checkpoint, torch_logits  # noqa: E402

from grpo_jax.models import (  # noqa: E402
    UnsupportedModelError,
    forward,
    load_pretrained,
    save_pretrained,
)

IDS = np.random.RandomState(0).randint(0, 96, (2, 12))


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    make_checkpoint(path, "qwen2_bias_tied")
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_checkpoint(path, "llama_gqa2_untied")
    return path


def _logits(model, params):
    return np.asarray(forward(model, params, jnp.asarray(IDS), jnp.ones(IDS.shape, jnp.int32)))


@pytest.mark.parametrize("family", ["qwen2_bias_tied", "llama3_scaled_mqa_tied", "qwen3_qknorm_gqa4"])
def test_export_loads_in_transformers_with_the_same_logits(family, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    make_checkpoint(tmp_path / "src", family)
    model, params = load_pretrained(tmp_path / "src")
    # train-like change so the export is not a byte copy of the input
    params = jax.tree.map(lambda p: p * 1.01, params)
    save_pretrained(model, params, tmp_path / "out")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(exported, IDS), _logits(model, params), atol=1e-4, rtol=0)


def test_load_export_load_is_bit_exact(qwen2_dir, tmp_path):
    model, params = load_pretrained(qwen2_dir)
    save_pretrained(model, params, tmp_path)
    model2, params2 = load_pretrained(tmp_path)
    assert model2.config == model.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_sharded_export_with_index(llama_dir, tmp_path):
    model, params = load_pretrained(llama_dir)
    save_pretrained(model, params, tmp_path, max_shard_bytes=20_000)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    _, params2 = load_pretrained(tmp_path)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
    # exporting again as one file replaces the shards and the index
    save_pretrained(model, params, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_bf16_export_and_load(qwen2_dir, tmp_path):
    model, params = load_pretrained(qwen2_dir)
    save_pretrained(model, params, tmp_path, dtype=jnp.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    _, params16 = load_pretrained(tmp_path, param_dtype=jnp.bfloat16)
    assert params16["embedding"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(params16["embedding"]), np.asarray(params["embedding"].astype(jnp.bfloat16))
    )
    _, params32 = load_pretrained(tmp_path)  # bf16 file, fp32 parameters
    assert params32["embedding"].dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(params32["embedding"]), np.asarray(params["embedding"].astype(jnp.bfloat16).astype(jnp.float32))
    )


# ---- errors --------------------------------------------------------------------------------------------


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_config(qwen2_dir, tmp_path):
    path = _copy(qwen2_dir, tmp_path / "c")
    os.remove(path / "config.json")
    with pytest.raises(FileNotFoundError, match="no config.json in checkpoint directory"):
        load_pretrained(path)


def test_missing_weights(qwen2_dir, tmp_path):
    path = _copy(qwen2_dir, tmp_path / "c")
    os.remove(path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no \*.safetensors weights"):
        load_pretrained(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors(qwen2_dir, tmp_path, damage):
    path = _copy(qwen2_dir, tmp_path / "c")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x13\x37" * 64 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        load_pretrained(path)


def test_weight_shape_disagrees_with_config(qwen2_dir, tmp_path):
    path = _copy(qwen2_dir, tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = 40
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tensor 'model.layers.0.mlp.gate_proj.weight' has shape \(48, 32\) but "
                                         r"the config needs \(40, 32\)"):
        load_pretrained(path)


def test_missing_tensor_and_extra_tensor(llama_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = _copy(llama_dir, tmp_path / "c")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 tensor\(s\) the config needs.*layers.1.mlp.up_proj"):
        load_pretrained(path)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
    tensors["model.layers.1.block_sparse_moe.gate.weight"] = np.zeros((4, 32), np.float32)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 tensor\(s\) this llama config does not use.*block_sparse_moe"):
        load_pretrained(path)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(model_type="gpt2"), r"model_type='gpt2' is not supported; supported: llama, qwen2, qwen3"),
        (dict(model_type="qwen2_moe"), r"model_type='qwen2_moe' is not supported"),
        (dict(use_sliding_window=True, sliding_window=16), r"sliding-window attention is not implemented"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
         r"rope_type 'yarn' is not implemented; supported: default, llama3"),
        (dict(hidden_act="gelu"), r"hidden_act='gelu' is not implemented"),
        (dict(layer_types=["full_attention", "sliding_attention"]), r"only full attention is implemented"),
    ],
)
def test_unsupported_architectures(qwen2_dir, tmp_path, change, pattern):
    path = _copy(qwen2_dir, tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config.update(change)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=pattern):
        load_pretrained(path)


@pytest.mark.parametrize(
    "attribute, value, pattern",
    [
        ("mlp_bias", True, r"mlp_bias=true is not implemented"),
        ("num_experts", 8, r"mixture-of-experts layers are not implemented"),
    ],
)
def test_unsupported_options_on_a_supported_model_type(attribute, value, pattern):
    from hf_checkpoints import hf_config

    from grpo_jax.models import ModelConfig

    config = hf_config("llama_gqa2_untied")
    setattr(config, attribute, value)
    with pytest.raises(UnsupportedModelError, match=pattern):
        ModelConfig.from_hf(config)
    config = hf_config("llama_gqa2_untied")
    config.rope_parameters = {**config.rope_parameters, "partial_rotary_factor": 0.5}
    with pytest.raises(UnsupportedModelError, match=r"partial_rotary_factor != 1 is not implemented"):
        ModelConfig.from_hf(config)


def test_legacy_config_keys_are_understood(qwen2_dir, tmp_path):
    """Hub checkpoints written by transformers 4 say rope_theta / rope_scaling / torch_dtype."""
    path = _copy(qwen2_dir, tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    config.update(rope_theta=theta, rope_scaling=None, torch_dtype="bfloat16", use_sliding_window=False,
                  sliding_window=131072, max_window_layers=21)
    (path / "config.json").write_text(json.dumps(config))
    model, _ = load_pretrained(path)
    assert model.config.rope_theta == theta and model.config.rope_scaling is None


def test_list_eos_ids_survive_export(tmp_path):
    """Llama-3 Instruct configs list several eos ids; export must keep them as transformers expects."""
    make_checkpoint(tmp_path / "src", "llama_gqa2_untied", eos_token_id=[5, 7], bos_token_id=1)
    model, params = load_pretrained(tmp_path / "src")
    assert model.config.eos_token_id == (5, 7)
    save_pretrained(model, params, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == [5, 7]
    assert load_pretrained(tmp_path / "out")[0].config == model.config


def test_tied_config_with_a_different_stored_head_loads_untied_like_transformers(qwen2_dir, tmp_path):
    import torch
    from safetensors.numpy import load_file, save_file
    from transformers import AutoModelForCausalLM

    path = _copy(qwen2_dir, tmp_path / "c")
    tensors = load_file(path / "model.safetensors")
    tensors["lm_head.weight"] = np.random.RandomState(0).randn(96, 32).astype(np.float32)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    model, params = load_pretrained(path)
    assert not model.config.tie_word_embeddings
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    np.testing.assert_allclose(_logits(model, params), torch_logits(reference, IDS), atol=1e-4, rtol=0)
    # an identical stored copy keeps the model tied
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    assert load_pretrained(path)[0].config.tie_word_embeddings


def test_out_of_vocabulary_ids_are_an_error(qwen2_dir):
    model, params = load_pretrained(qwen2_dir)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, vocab_size=96\), got values in \[-1, 5\]"):
        forward(model, params, jnp.array([[-1, 5]]), jnp.ones((1, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"got values in \[3, 96\]"):
        forward(model, params, jnp.array([[3, 96]]), jnp.ones((1, 2), jnp.int32))


def test_kv_cache_overflow_is_an_error(qwen2_dir):
    from grpo_jax.models import init_cache

    model, params = load_pretrained(qwen2_dir)
    cache = init_cache(model.config, batch=1, max_length=4)
    ids = jnp.array([[3]])
    with pytest.raises(ValueError, match=r"KV cache overflow: writing 1 token\(s\) at slot 4 of a cache with 4 slots"):
        model.apply({"params": params}, ids, ids, jnp.ones((1, 4), jnp.int32), cache=cache, cache_index=4)
