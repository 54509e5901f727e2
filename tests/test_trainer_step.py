"""The jitted training programs: completion log-probabilities, micro-batch weighting, accumulation, pi_old."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax.losses import token_logprobs
from grpo_jax.models import ModelConfig, build_model, forward, init_params
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer.config import GRPOConfig, OptimizerConfig
from grpo_jax.trainer.reduction import to_floats
from grpo_jax.trainer.state import build_optimizer, create_state, state_shardings
from grpo_jax.trainer.step import (
    completion_logprobs,
    grpo_objective,
    make_logprobs_fn,
    make_update_fn,
    micro_batch_weights,
)

CONFIG = ModelConfig(model_type="qwen2", vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True, qkv_bias=True)
N, P, T = 16, 6, 5


def _batch(seed=0, ragged=True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, (N, P + T)).astype(np.int32)
    attention = np.ones((N, P + T), np.int32)
    completion = np.ones((N, T), np.float32)
    for i in range(N):  # left padding of the prompt, completions of different lengths
        attention[i, : i % 3] = 0
        if ragged:
            end = 1 + i % T
            completion[i, end:] = 0
            attention[i, P + end:] = 0
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
            "advantages": rng.normal(size=N).astype(np.float32),
            "old_logprobs": np.log(rng.uniform(0.02, 0.2, (N, T))).astype(np.float32),
            "ref_logprobs": np.log(rng.uniform(0.02, 0.2, (N, T))).astype(np.float32)}


def _setup(mesh, grpo: GRPOConfig, accumulation=1, lr=1e-2, sgd=False):
    model = build_model(CONFIG, mesh)
    params = init_params(model, jax.random.key(0), mesh)
    optimizer, schedule = build_optimizer(OptimizerConfig(learning_rate=lr, max_grad_norm=0.0), 10)
    if sgd:  # the update is exactly -lr * gradient: compares gradients, not Adam's per-coordinate normalisation
        optimizer = optax.sgd(lr)
    state = create_state(params, optimizer, mesh, seed=0, with_reference=False)
    update = make_update_fn(model, optimizer, schedule, mesh, state_shardings(state), objective=grpo_objective(grpo),
                            temperature=0.9, accumulation_steps=accumulation,
                            token_weighted=grpo.aggregation == "token-mean", name="grpo_update")
    return model, state, update


def test_completion_logprobs_match_full_logits():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = build_model(CONFIG, mesh)
    params = init_params(model, jax.random.key(1), mesh)
    b = _batch()
    lp = completion_logprobs(model, params, b["input_ids"], b["attention_mask"], T, temperature=0.7)
    logits = forward(model, params, jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"]))
    expected = token_logprobs(logits[:, P - 1:-1], jnp.asarray(b["input_ids"][:, P:]), temperature=0.7)
    mask = b["completion_mask"] > 0
    np.testing.assert_allclose(np.asarray(lp)[mask], np.asarray(expected)[mask], atol=1e-5)


def test_micro_batch_weights():
    mask = jnp.asarray([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], jnp.float32)
    np.testing.assert_allclose(micro_batch_weights(mask, 2, by_tokens=True), [4 / 6, 2 / 6])
    np.testing.assert_allclose(micro_batch_weights(mask, 4, by_tokens=False), [0.25] * 4)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_accumulation_equals_one_big_batch(loss_type, mesh8):
    """K micro-batches give the same update as the whole minibatch at once, for every aggregation (dr_grpo with
    per-token advantages, as process supervision gives: their mean is a token mean, not a row mean)."""
    grpo = GRPOConfig(beta=0.04, loss_type=loss_type)
    batch = _batch()
    if loss_type == "dr_grpo":
        batch["advantages"] = np.random.default_rng(5).normal(size=batch["completion_mask"].shape).astype(np.float32)
    results = []
    for k in (1, 4):
        _, state, update = _setup(mesh8, grpo, accumulation=k, lr=1.0, sgd=True)
        state, metrics = update(state, batch)
        results.append((jax.device_get(state.params), to_floats(metrics)))
    (p1, m1), (p4, m4) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p1, p4)
    for key in ("loss", "kl", "entropy", "grad_norm", "advantage_mean"):
        np.testing.assert_allclose(m1[key], m4[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_sharded_update_equals_single_device(mesh8):
    grpo = GRPOConfig(beta=0.04)
    one = make_mesh({"data": 1}, devices=jax.devices()[:1])
    outs = []
    for mesh in (one, make_mesh({"fsdp": 4, "tensor": 2}), mesh8):
        _, state, update = _setup(mesh, grpo, lr=0.1, sgd=True)
        for seed in range(2):
            state, metrics = update(state, _batch(seed))
        outs.append((jax.device_get(state.params), float(metrics["loss"].value)))
    for params, loss in outs[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), outs[0][0], params)
        np.testing.assert_allclose(loss, outs[0][1], rtol=1e-4, atol=1e-6)


def test_second_iteration_uses_a_real_pi_old(mesh8):
    """mu > 1: pi_old is computed once, so after the first update the ratio moves off 1 and can be clipped."""
    grpo = GRPOConfig(beta=0.0, epsilon=0.01)
    model, state, update = _setup(mesh8, grpo, lr=3e-2)
    batch = _batch(ragged=False)
    logprobs = make_logprobs_fn(model, mesh8, temperature=0.9)
    batch["old_logprobs"] = np.asarray(logprobs(state.params, batch["input_ids"], batch["attention_mask"], T))
    state, first = update(state, batch)
    state, second = update(state, batch)
    first, second = to_floats(first), to_floats(second)
    np.testing.assert_allclose([first["ratio_min"], first["ratio_max"]], [1.0, 1.0], atol=1e-5)
    assert abs(float(second["ratio_mean"]) - 1.0) > 1e-3 or float(second["ratio_max"]) > 1.01
    assert float(second["clip_frac"]) > 0.0
    assert float(first["clip_frac"]) == 0.0


def test_update_donates_the_state_and_steps(mesh8):
    _, state, update = _setup(mesh8, GRPOConfig(beta=0.0))
    old_params = state.params
    new_state, metrics = update(state, _batch())
    metrics = to_floats(metrics)
    assert int(new_state.step) == 1
    assert jax.tree.leaves(old_params)[0].is_deleted()
    assert np.isfinite(float(metrics["loss"])) and float(metrics["learning_rate"]) == pytest.approx(1e-2)
    assert dataclasses.is_dataclass(new_state)


def test_logprobs_in_micro_batches_equal_one_pass(mesh8):
    model = build_model(CONFIG, mesh8)
    params = init_params(model, jax.random.key(2), mesh8)
    b = _batch()
    whole = make_logprobs_fn(model, mesh8, temperature=0.9)(params, b["input_ids"], b["attention_mask"], T)
    parts = make_logprobs_fn(model, mesh8, temperature=0.9, micro_batches=4)(
        params, b["input_ids"], b["attention_mask"], T)
    expected = completion_logprobs(model, params, b["input_ids"], b["attention_mask"], T, temperature=0.9)
    np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), atol=1e-6)
    np.testing.assert_allclose(np.asarray(whole), np.asarray(expected), atol=1e-6)
