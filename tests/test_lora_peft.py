"""LoRA adapters as PEFT adapter directories (grpo_jax.models.peft_io): PEFT computes our LoRA model's logits
and merges to our merged weights, the merge recomputed in NumPy from the files, the round trip, bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from grpo_jax.errors import ConfigError, InputNotFoundError
from grpo_jax.models import ModelConfig, build_model, forward, param_shapes, save_pretrained
from grpo_jax.models.hf_io import parameter_map, to_hf_layout
from grpo_jax.models.lora import LoraConfig, merge_adapters, split_adapters
from grpo_jax.models.peft_io import load_peft_adapter, save_peft_adapter

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, max_position_embeddings=256)
# head_dim * heads != hidden_size in both, so o_proj's input flattening (h * Dh + d) is exercised on its own
CONFIGS = {
    "llama": ModelConfig(model_type="llama", num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         lora=LoraConfig(4, 8.0), **TINY),
    "qwen2": ModelConfig(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                         qkv_bias=True, tie_word_embeddings=True, rope_theta=1e6,
                         lora=LoraConfig(3, 5.0, ("q_proj", "v_proj", "o_proj", "down_proj")), **TINY),
}
IDS = np.random.RandomState(0).randint(0, 96, (2, 12))
PREFIX = "base_model.model."


def _random_params(config: ModelConfig, seed: int) -> dict:
    """Every leaf re-drawn (norm scales near 1, biases and adapter B non-zero), so no layout error cancels."""
    shapes = param_shapes(build_model(config))  # no init program to compile
    rng = np.random.RandomState(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "scale":
            value = 1.0 + 0.2 * rng.randn(*leaf.shape)
        elif name.endswith("_lora_a"):
            value = rng.uniform(-0.3, 0.3, leaf.shape)
        else:  # kernels, biases, embeddings and the adapters' B
            value = 0.15 * rng.randn(*leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    """(config, params, base checkpoint directory, adapter directory) of one family."""
    config = CONFIGS[request.param]
    params = _random_params(config, seed=len(request.param))
    base, _ = split_adapters(params)
    root = tmp_path_factory.mktemp(request.param)
    save_pretrained(build_model(config.replace(lora=None)), base, root / "base")
    save_peft_adapter(config, params, root / "adapter", base_model_name_or_path=str(root / "base"))
    return config, params, root / "base", root / "adapter"


def _logits(config, params):
    return np.asarray(forward(build_model(config), params, jnp.asarray(IDS), jnp.ones(IDS.shape, jnp.int32)))


def test_peft_computes_our_lora_logits_and_merges_to_our_merged_weights(exported, tmp_path):
    pytest.importorskip("peft")
    torch = pytest.importorskip("torch")
    from hf_checkpoints import torch_logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, params, base_dir, adapter_dir = exported
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ours = _logits(config, params)
    np.testing.assert_allclose(torch_logits(peft_model, IDS), ours, atol=1e-4, rtol=0)
    with peft_model.disable_adapter():  # the adapters matter: a test of the base alone could not pass
        assert np.abs(torch_logits(peft_model, IDS) - ours).max() > 1e-2

    save_pretrained(build_model(config.replace(lora=None)), merge_adapters(config, params), tmp_path)
    merged = {k: v.numpy() for k, v in peft_model.merge_and_unload().state_dict().items()}
    for name, ours_merged in load_file(tmp_path / "model.safetensors").items():
        np.testing.assert_allclose(merged[name], ours_merged, atol=1e-6, rtol=0, err_msg=name)


def test_the_files_merge_in_numpy_to_our_merged_kernels(exported):
    """Without PEFT: W + (alpha / r) lora_B @ lora_A, in Hugging Face's layout, is our merged kernel's."""
    config, params, _, adapter_dir = exported
    by_hf_name = {hf: (path, kind) for path, (hf, kind) in parameter_map(config).items()}
    merged = merge_adapters(config, params)
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    adapted = sorted(name[len(PREFIX):].replace(".lora_A.weight", ".weight")
                     for name in tensors if name.endswith(".lora_A.weight"))
    assert len(adapted) == config.num_hidden_layers * len(config.lora.targets)
    assert len(tensors) == 2 * len(adapted)
    for hf_name in adapted:
        path, kind = by_hf_name[hf_name]
        a = tensors[PREFIX + hf_name.replace(".weight", ".lora_A.weight")]
        b = tensors[PREFIX + hf_name.replace(".weight", ".lora_B.weight")]
        assert a.dtype == b.dtype == np.float32 and a.shape[0] == b.shape[1] == config.lora.rank
        w = to_hf_layout(kind, np.asarray(_get(params, path)))
        want = to_hf_layout(kind, np.asarray(_get(merged, path)))
        np.testing.assert_allclose(w + config.lora.scale * (b @ a), want, atol=1e-6, rtol=0, err_msg=hf_name)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_round_trip_is_exact_and_the_directory_is_peft_shaped(exported):
    config, params, base_dir, adapter_dir = exported
    assert sorted(os.listdir(adapter_dir)) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM"
    assert (saved["r"], saved["lora_alpha"]) == (config.lora.rank, config.lora.alpha)
    assert saved["target_modules"] == list(config.lora.targets)
    assert saved["base_model_name_or_path"] == str(base_dir)

    loaded = load_peft_adapter(config, adapter_dir)
    adapters = split_adapters(params)[1]
    assert jax.tree.structure(loaded) == jax.tree.structure(adapters)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), loaded, adapters)


def test_bad_adapter_directories_give_clear_errors(exported, tmp_path):
    config, params, _, adapter_dir = exported
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_peft_adapter(config, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no adapter_config.json"):
        load_peft_adapter(config, tmp_path / "empty")
    lora = config.lora
    with pytest.raises(ConfigError, match=f"rank r={lora.rank} but model.lora_rank={lora.rank + 1}"):
        load_peft_adapter(config.replace(lora=LoraConfig(lora.rank + 1, lora.alpha, lora.targets)), adapter_dir)
    with pytest.raises(ConfigError, match="lora_alpha"):
        load_peft_adapter(config.replace(lora=LoraConfig(lora.rank, lora.alpha * 2, lora.targets)), adapter_dir)
    with pytest.raises(ConfigError, match="target_modules"):
        load_peft_adapter(config.replace(lora=LoraConfig(lora.rank, lora.alpha, lora.targets[:-1])), adapter_dir)
    with pytest.raises(ConfigError, match="tensor"):  # a deeper model than the adapter was trained on
        load_peft_adapter(config.replace(num_hidden_layers=3), adapter_dir)
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        save_peft_adapter(config.replace(lora=None), params, tmp_path / "x", base_model_name_or_path=None)

    # an adapter whose update is scaled otherwise (rsLoRA) is refused, not read as plain LoRA
    os.makedirs(tmp_path / "rslora")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "rslora" / name).write_bytes((adapter_dir / name).read_bytes())
    saved = json.loads((tmp_path / "rslora" / "adapter_config.json").read_text())
    (tmp_path / "rslora" / "adapter_config.json").write_text(json.dumps({**saved, "use_rslora": True}))
    with pytest.raises(ConfigError, match="use_rslora"):
        load_peft_adapter(config, tmp_path / "rslora")
    os.remove(tmp_path / "rslora" / "adapter_model.safetensors")
    with pytest.raises(InputNotFoundError, match="no adapter_model.safetensors"):
        load_peft_adapter(config, tmp_path / "rslora")
