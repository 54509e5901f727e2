"""LoRA adapters (grpo_jax.models.lora): the adapted forward against a NumPy merge and against the merged base
model, gradients against the chain rule through the merged kernel, shardings, config errors, and the
optimizer-state budget on the Qwen2.5-0.5B shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from trainer_runs import tiny_config

from grpo_jax import sampling as sampling_lib
from grpo_jax.errors import ConfigError
from grpo_jax.models import (
    LoraConfig,
    ModelConfig,
    build_model,
    forward,
    init_adapters,
    init_params,
    join_adapters,
    merge_adapters,
    param_shapes,
    param_shardings,
    split_adapters,
    without_adapters,
)
from grpo_jax.models.lora import DEFAULT_TARGETS, count_params
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer import apply_overrides, build_context
from grpo_jax.trainer.config import OptimizerConfig
from grpo_jax.trainer.lora import sampling_policy
from grpo_jax.trainer.state import build_optimizer

CONFIGS = {
    # head_dim * heads != hidden: the flattening of the head axes is tested on its own
    "llama": ModelConfig(model_type="llama", vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, o_bias=True),
    "qwen2": ModelConfig(model_type="qwen2", vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, qkv_bias=True,
                         tie_word_embeddings=True),
    "qwen3": ModelConfig(model_type="qwen3", vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=8, qk_norm=True),
}
LORA = LoraConfig(rank=4, alpha=12.0)
IDS = jnp.array([[0, 0, 5, 9, 17, 3, 44], [7, 8, 9, 10, 11, 12, 13]], jnp.int32)
MASK = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], jnp.int32)


def _models(name, lora=LORA):
    base_model = build_model(CONFIGS[name])
    base = init_params(base_model, jax.random.key(0))
    lora_model = build_model(CONFIGS[name].replace(lora=lora))
    return base_model, base, lora_model, init_adapters(lora_model, jax.random.key(1))


def _noisy(adapters, seed=2, scale=0.1):
    """Adapters with B non-zero too (fresh ones have B = 0)."""
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys,
                                                                                               strict=True)])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fresh_adapters_leave_the_base_exactly(name):
    base_model, base, lora_model, adapters = _models(name)
    assert count_params(adapters) > 0
    np.testing.assert_array_equal(forward(lora_model, join_adapters(base, adapters), IDS, MASK),
                                  forward(base_model, base, IDS, MASK))
    # A is uniform(+-1/sqrt(in)) (PEFT's initialisation), B zero
    a, b = adapters["layers_0"]["mlp"]["down_lora_a"], adapters["layers_0"]["mlp"]["down_lora_b"]
    bound = 1 / np.sqrt(CONFIGS[name].intermediate_size)
    assert 0.5 * bound < float(jnp.max(jnp.abs(a))) <= bound and not np.any(np.asarray(b))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_adapted_forward_equals_the_merged_base(name):
    base_model, base, lora_model, adapters = _models(name)
    params = join_adapters(base, _noisy(adapters))
    adapted = forward(lora_model, params, IDS, MASK)
    assert float(jnp.max(jnp.abs(adapted - forward(base_model, base, IDS, MASK)))) > 1e-2  # the adapters matter
    np.testing.assert_allclose(forward(base_model, merge_adapters(lora_model.config, params), IDS, MASK), adapted,
                               atol=2e-5, rtol=1e-5)


def test_merge_against_numpy():
    """W + (alpha / r) A B, re-derived in NumPy for a head-split kernel (o: [H, Dh, D]) and a plain one."""
    _, base, lora_model, adapters = _models("llama")
    params = join_adapters(base, _noisy(adapters))
    merged = merge_adapters(lora_model.config, params)
    attn, mlp = params["layers_1"]["attn"], params["layers_1"]["mlp"]
    h, dh, d = attn["o_kernel"].shape
    a, b = np.asarray(attn["o_lora_a"]).reshape(h * dh, LORA.rank), np.asarray(attn["o_lora_b"])
    expected = np.asarray(attn["o_kernel"]).reshape(h * dh, d) + LORA.alpha / LORA.rank * a @ b
    np.testing.assert_allclose(np.asarray(merged["layers_1"]["attn"]["o_kernel"]).reshape(h * dh, d), expected,
                               rtol=1e-6, atol=1e-6)
    expected = np.asarray(mlp["gate_kernel"]) + 3.0 * np.asarray(mlp["gate_lora_a"]) @ np.asarray(mlp["gate_lora_b"])
    np.testing.assert_allclose(merged["layers_1"]["mlp"]["gate_kernel"], expected, rtol=1e-6, atol=1e-6)
    assert merged["embedding"] is params["embedding"]  # what no adapter touches is not copied
    assert not split_adapters(merged)[1]


def test_split_and_join_keep_the_same_arrays():
    _, base, lora_model, adapters = _models("qwen2")
    params = join_adapters(base, adapters)
    again_base, again_adapters = split_adapters(params)
    for x, y in zip(jax.tree.leaves((base, adapters)), jax.tree.leaves((again_base, again_adapters)), strict=True):
        assert x is y
    assert jax.tree.structure(params) == jax.tree.structure(param_shapes(lora_model))


def test_targets_choose_the_projections():
    _, _, _, adapters = _models("llama", LoraConfig(rank=2, alpha=2.0, targets=("q_proj", "down_proj")))
    assert sorted(adapters["layers_0"]["attn"]) == ["q_lora_a", "q_lora_b"]
    assert sorted(adapters["layers_0"]["mlp"]) == ["down_lora_a", "down_lora_b"]


def test_gradients_follow_the_chain_rule_through_the_merged_kernel():
    """dL/dA = s dL/dW B^T and dL/dB = s A^T dL/dW, with dL/dW the plain model's gradient at W + s A B."""
    base_model, base, lora_model, adapters = _models("llama")
    adapters = _noisy(adapters)
    params = join_adapters(base, adapters)
    weights = jax.random.normal(jax.random.key(5), (2, 7, 61))

    def loss(model, p):
        return jnp.sum(forward(model, p, IDS, MASK) * weights)

    grads = jax.grad(lambda ad: loss(lora_model, join_adapters(base, ad)))(adapters)
    kernel_grads = jax.grad(lambda p: loss(base_model, p))(merge_adapters(lora_model.config, params))
    s = LORA.alpha / LORA.rank
    for module, projection, kernel_in in (("mlp", "up", 1), ("attn", "o", 2), ("attn", "k", 1)):
        g_w = np.asarray(kernel_grads["layers_0"][module][f"{projection}_kernel"])
        g_w = g_w.reshape(int(np.prod(g_w.shape[:kernel_in])), -1)
        a = np.asarray(adapters["layers_0"][module][f"{projection}_lora_a"]).reshape(g_w.shape[0], LORA.rank)
        b = np.asarray(adapters["layers_0"][module][f"{projection}_lora_b"]).reshape(LORA.rank, g_w.shape[1])
        got_a = np.asarray(grads["layers_0"][module][f"{projection}_lora_a"]).reshape(a.shape)
        got_b = np.asarray(grads["layers_0"][module][f"{projection}_lora_b"]).reshape(b.shape)
        np.testing.assert_allclose(got_a, s * g_w @ b.T, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(got_b, s * a.T @ g_w, rtol=2e-4, atol=2e-5)


def test_adapters_shard_by_the_logical_axes():
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    model = build_model(CONFIGS["llama"].replace(lora=LORA), mesh)
    shardings = param_shardings(model, mesh)
    layer = shardings["layers_0"]
    assert layer["attn"]["q_lora_a"].spec == PartitionSpec("fsdp", None)  # as q's input axis (embed)
    assert layer["attn"]["q_lora_b"].spec == PartitionSpec(None, "tensor", None)  # as q's heads
    assert layer["attn"]["o_lora_a"].spec == PartitionSpec("tensor", None, None)
    assert layer["attn"]["o_lora_b"].spec == PartitionSpec(None, "fsdp")
    assert layer["mlp"]["down_lora_a"].spec == PartitionSpec("tensor", None)
    assert layer["mlp"]["up_lora_b"].spec == PartitionSpec(None, "tensor")
    adapters = init_adapters(model, jax.random.key(1), mesh)
    assert adapters["layers_0"]["attn"]["q_lora_b"].sharding.spec == PartitionSpec(None, "tensor", None)
    single = init_adapters(build_model(CONFIGS["llama"].replace(lora=LORA)), jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(adapters), jax.device_get(single))


@pytest.mark.parametrize("merged", [False, True])
def test_the_sampler_samples_the_adapted_policy(merged):
    """Rollouts of the LoRA policy (unmerged, or merged once per call) are a fully merged model's: the same
    tokens and log-probabilities, and not the base's."""
    base_model, base, lora_model, adapters = _models("qwen2")
    params = join_adapters(base, _noisy(adapters, scale=0.3))
    config = sampling_lib.SamplingConfig(num_generations=3, max_new_tokens=6, eos_token_ids=(1,), pad_token_id=0)
    key = jax.random.key(9)
    reference = sampling_lib.generate(base_model, merge_adapters(lora_model.config, params), IDS, MASK, key, config)
    got = sampling_lib.generate(*sampling_policy(lora_model, params, merged), IDS, MASK, key, config)
    np.testing.assert_array_equal(got.tokens, reference.tokens)
    np.testing.assert_allclose(got.logprobs, reference.logprobs, atol=2e-5)
    plain = sampling_lib.generate(base_model, base, IDS, MASK, key, config)
    assert not np.array_equal(plain.tokens, reference.tokens)


@pytest.mark.parametrize("overrides, message", [
    (["model.lora_rank=4", "model.lora_targets=q_proj,qkv_proj"], r"\['qkv_proj'\] match no projection"),
    (["model.lora_rank=-2"], "lora_rank=-2"),
    (["model.lora_alpha=8"], "model.lora_rank=0 turns off"),
    (["model.lora_rank=4", "model.lora_alpha=0"], "lora_alpha=0"),
    (["model.lora_rank=4", "grpo.ref_model_sync_steps=5"], "reference policy is the frozen base"),
])
def test_bad_lora_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)


def test_a_rank_larger_than_a_layer_fails_before_any_compile(monkeypatch):
    """tiny_config's k/v projections are [32, 16]: rank 17 cannot fit them; the error comes before the base
    is initialised (nothing is compiled)."""
    import grpo_jax.trainer.build as build

    def no_init(*args, **kwargs):
        raise AssertionError("the base was initialised before the rank was checked")

    monkeypatch.setattr(build, "init_params", no_init)
    with pytest.raises(ConfigError, match=r"lora_rank=17 is larger than the k_proj projection \(\[32, 16\]\)"):
        build_context(tiny_config("model.lora_rank=17"))
    monkeypatch.undo()
    ctx, params = build_context(tiny_config("model.lora_rank=17", "model.lora_targets=q_proj,gate_proj"))
    assert ctx.model.config.lora.rank == 17


def _qwen25_05b(lora=None):
    return ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                       qkv_bias=True, tie_word_embeddings=True, lora=lora)


def test_optimizer_state_on_the_05b_shape_is_under_five_percent():
    """Rank 16 on every projection of Qwen2.5-0.5B: AdamW's state is 1.8% of full fine-tuning's (shapes only,
    nothing is allocated)."""
    optimizer, _ = build_optimizer(OptimizerConfig(learning_rate=1e-5), 10)

    def state_bytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(optimizer.init, tree)))

    full = param_shapes(build_model(_qwen25_05b()))
    adapters = split_adapters(param_shapes(build_model(_qwen25_05b(LoraConfig(16, 32.0)))))[1]
    assert count_params(full) == 494_032_768
    # per layer r * (in + out) for each projection: q 896+896, k 896+128, v 896+128, o 896+896, gate/up 896+4864,
    # down 4864+896
    per_layer = 16 * (2 * 1792 + 2 * 1024 + 3 * 5760)
    assert count_params(adapters) == 24 * per_layer == 8_798_208
    ratio = state_bytes(adapters) / state_bytes(full)
    assert ratio == pytest.approx(8_798_208 / 494_032_768, rel=1e-6) and ratio <= 0.05


def test_default_targets_are_every_projection():
    assert set(DEFAULT_TARGETS) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    config = apply_overrides(tiny_config(), ["model.lora_rank=8"])
    assert config.model.lora == LoraConfig(8, 32.0, DEFAULT_TARGETS)
    assert config.trained_optimizer.learning_rate == pytest.approx(30 * config.optimizer.learning_rate)
    assert tiny_config().trained_optimizer.learning_rate == tiny_config().optimizer.learning_rate
    assert without_adapters(build_model(CONFIGS["qwen2"].replace(lora=LORA))).config == CONFIGS["qwen2"]
