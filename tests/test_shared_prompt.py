"""Prompts computed once per group of rows that share them (grpo_jax.models.shared_prompt): the same hidden
states, log-probabilities, gradients and updates as one plain forward over every row."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax.models import ModelConfig, build_model, init_params
from grpo_jax.models.shared_prompt import (
    completion_hidden,
    layout_prompt_group,
    runs_of_equal_rows,
    shared_prompt_group,
)
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer.config import GRPOConfig, OptimizerConfig
from grpo_jax.trainer.state import build_optimizer, create_state, state_shardings
from grpo_jax.trainer.step import (
    completion_logprobs,
    grpo_objective,
    make_logprobs_fn,
    make_update_fn,
    merge_micro,
    split_micro,
)

CONFIG = ModelConfig(model_type="qwen3", vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
                     qk_norm=True)
B, G, P, T = 4, 4, 7, 6


def grouped_batch(seed=0):
    """B prompts (left-padded by 0..3 tokens), each repeated for G completions of lengths 1..T (then padding)."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(2, CONFIG.vocab_size, (B, P))
    prompt_mask = np.ones((B, P), np.int64)
    for i in range(B):
        prompts[i, :i], prompt_mask[i, :i] = 0, 0
    n = B * G
    completions = rng.integers(2, CONFIG.vocab_size, (n, T))
    completion_mask = np.ones((n, T), np.float32)
    for r in range(n):
        end = 1 + (3 * r) % T
        completions[r, end:], completion_mask[r, end:] = 0, 0
    return {"input_ids": np.concatenate([np.repeat(prompts, G, 0), completions], 1).astype(np.int32),
            "attention_mask": np.concatenate([np.repeat(prompt_mask, G, 0), completion_mask], 1).astype(np.int32),
            "completion_mask": completion_mask,
            "advantages": rng.normal(size=n).astype(np.float32),
            "old_logprobs": np.log(rng.uniform(0.02, 0.2, (n, T))).astype(np.float32),
            "ref_logprobs": np.log(rng.uniform(0.02, 0.2, (n, T))).astype(np.float32)}


@pytest.fixture(scope="module")
def single():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = build_model(CONFIG, mesh)
    return model, init_params(model, jax.random.key(3), mesh)


@pytest.mark.parametrize("group", [2, 4, 8])
def test_shared_prompt_hidden_equals_plain_forward(single, group):
    """Runs of 2 or 4 rows share one prompt; 8 would join two different prompts, so only 2 and 4 may be
    used and 8 is refused by shared_prompt_group (checked below) — here 8 must give different values."""
    model, params = single
    b = grouped_batch()
    plain, shared = (jax.jit(lambda p, g=g: completion_hidden(model, p, b["input_ids"], b["attention_mask"], T, g))(
        params) for g in (1, group))
    assert shared.shape == plain.shape == (B * G, T, CONFIG.hidden_size)
    mask = b["attention_mask"][:, P - 1:-1] > 0  # slots whose hidden state predicts a real token
    if group <= G:
        np.testing.assert_allclose(np.asarray(shared)[mask], np.asarray(plain)[mask], rtol=1e-5, atol=1e-5)
    else:
        assert np.abs(np.asarray(shared)[mask] - np.asarray(plain)[mask]).max() > 1e-2


def test_shared_prompt_gradients_equal_plain(single):
    """With each layer rematerialised (the cache passes through jax.checkpoint), as large models train."""
    _, params = single
    model = build_model(dataclasses.replace(CONFIG, remat=True))
    b = grouped_batch(1)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(B * G, T)) * b["completion_mask"])

    def objective(p, group):
        lp = completion_logprobs(model, p, b["input_ids"], b["attention_mask"], T, temperature=0.8,
                                 prompt_group=group)
        return jnp.sum(lp * weights)

    value_and_grad = jax.jit(jax.value_and_grad(objective), static_argnums=1)
    (plain_value, plain), (shared_value, shared) = (value_and_grad(params, g) for g in (1, G))
    np.testing.assert_allclose(shared_value, plain_value, rtol=1e-5)
    jax.tree.map(lambda a, s: np.testing.assert_allclose(s, a, rtol=1e-4, atol=1e-6), plain, shared)


def test_bad_prompt_group_is_refused(single):
    model, params = single
    b = grouped_batch()
    with pytest.raises(ValueError, match="prompt_group=3 must be a positive divisor of the 16 rows"):
        completion_hidden(model, params, b["input_ids"], b["attention_mask"], T, prompt_group=3)


def brute_force_runs(keys, k):
    """The largest g that splits ``keys`` into K micro-batches of whole runs of g equal rows, by building
    split_micro's micro-batches for every g and checking them."""
    best = 1
    for g in range(1, len(keys) + 1):
        if len(keys) % (k * g):
            continue
        micro = np.asarray(split_micro(jnp.asarray(keys), k, g))  # [K, N / K, ...]
        runs = micro.reshape(k, -1, g, *micro.shape[2:])
        if np.all(runs == runs[:, :, :1]):
            best = g
    return best


def test_layout_prompt_group_matches_brute_force():
    for group_size, rows, k, first in itertools.product([1, 2, 3, 4, 8], [8, 16, 24], [1, 2, 4], [0, 8]):
        keys = (first + np.arange(rows)) // group_size
        assert layout_prompt_group(group_size, rows, k, first_row=first) == brute_force_runs(keys, k), \
            (group_size, rows, k, first)


def test_runs_of_equal_rows_examples():
    four_groups = np.repeat(np.arange(4), 4)
    assert runs_of_equal_rows(four_groups, 1) == 4
    assert runs_of_equal_rows(four_groups, 2) == 4  # two whole groups per micro-batch
    assert runs_of_equal_rows(four_groups, 4) == 4
    assert runs_of_equal_rows(four_groups, 8) == 2  # half a group per micro-batch
    assert runs_of_equal_rows(four_groups, 3) == 1  # 16 rows do not split into 3
    assert runs_of_equal_rows(np.repeat(np.arange(2), 6), 1) == 6
    assert runs_of_equal_rows(np.repeat(np.arange(3), 4)[:10], 1) == 2  # a group cut by the minibatch's end
    rng = np.random.default_rng(0)
    for _ in range(30):
        keys = rng.integers(0, 2, (12, 2))
        for k in (1, 2, 3):
            assert runs_of_equal_rows(keys, k) == brute_force_runs(keys, k)


def test_split_micro_blocks_and_merge():
    """Micro-batch j takes blocks j, K + j, ... of `block` rows; merge_micro undoes it."""
    x = jnp.arange(24).reshape(12, 2)
    parts = np.asarray(split_micro(x, 2, 3))
    np.testing.assert_array_equal(parts[0, :, 0], [0, 2, 4, 12, 14, 16])  # rows 0-2 and 6-8
    np.testing.assert_array_equal(parts[1, :, 0], [6, 8, 10, 18, 20, 22])
    np.testing.assert_array_equal(np.asarray(split_micro(x, 3))[1, :, 0], [2, 8, 14, 20])  # rows 1, 4, 7, 10
    for k, block in ((1, 1), (2, 3), (3, 2), (4, 3), (12, 1)):
        np.testing.assert_array_equal(np.asarray(merge_micro(split_micro(x, k, block), block)), np.asarray(x))


def test_shared_prompt_group_reads_the_prompts():
    b = grouped_batch()
    assert shared_prompt_group(b["input_ids"], b["attention_mask"], T) == G
    assert shared_prompt_group(b["input_ids"], b["attention_mask"], T, micro_batches=2) == G  # 2 groups each
    assert shared_prompt_group(b["input_ids"], b["attention_mask"], T, micro_batches=8) == G // 2
    ids = b["input_ids"].copy()
    ids[1, P - 1] += 1  # row 1's prompt differs from row 0's in one token
    assert shared_prompt_group(ids, b["attention_mask"], T) == 1
    mask = b["attention_mask"].copy()
    mask[G, 0] = 1  # ... or in its padding (group 1 pads slot 0)
    assert shared_prompt_group(b["input_ids"], mask, T) == 1


def test_sharded_logprobs_and_update_share_prompts(mesh8, single):
    """On 8 devices, detected (from the data) and given prompt groups give the single-device plain values:
    log-probabilities, and the parameters after two updates with 2 micro-batches."""
    model, params = single
    b = grouped_batch(2)
    plain = jax.jit(lambda p: completion_logprobs(model, p, b["input_ids"], b["attention_mask"], T,
                                                  temperature=0.9))(params)
    model8 = build_model(CONFIG, mesh8)
    params8 = jax.device_put(params, jax.tree.map(lambda x: x.sharding, init_params(model8, jax.random.key(3), mesh8)))
    logprobs = make_logprobs_fn(model8, mesh8, temperature=0.9, micro_batches=2)
    detected = logprobs(params8, b["input_ids"], b["attention_mask"], T)
    np.testing.assert_allclose(np.asarray(detected), np.asarray(plain), rtol=1e-5, atol=1e-5)

    grpo = GRPOConfig(beta=0.04)
    _, schedule = build_optimizer(OptimizerConfig(learning_rate=1.0, max_grad_norm=0.0), 10)
    optimizer = optax.sgd(1.0)  # the update is -gradient: compares gradients without Adam's normalisation
    outs = []
    for mesh, m, group in ((make_mesh({"data": 1}, devices=jax.devices()[:1]), model, 1), (mesh8, model8, None),
                           (mesh8, model8, G // 2)):  # detected: G; given: half-groups
        start = params if mesh.size == 1 else params8  # copied: the update donates the state
        state = create_state(jax.tree.map(jnp.copy, start), optimizer, mesh, seed=0, with_reference=False)
        update = make_update_fn(m, optimizer, schedule, mesh, state_shardings(state), objective=grpo_objective(grpo),
                                temperature=0.9, accumulation_steps=2, token_weighted=False, name="grpo_update")
        for seed in (2, 3):
            state, metrics = update(state, grouped_batch(seed), group)
        outs.append((jax.device_get(state.params), float(metrics["loss"].value)))
    for p, loss in outs[1:]:
        jax.tree.map(lambda a, c: np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-5), outs[0][0], p)
        np.testing.assert_allclose(loss, outs[0][1], rtol=1e-4, atol=1e-6)
