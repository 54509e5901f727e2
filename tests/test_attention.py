"""grpo_jax.models.attention: queries in rematerialised blocks give the values of a float64 NumPy
re-derivation and the gradients of one plain block; in the model (no cache, prefill, decode, shared
prompt) and on an 8-device mesh; and the compiled backward no longer keeps the [T, S] scores."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.models import ModelConfig, build_model, forward, init_params, load_pretrained, save_pretrained
from grpo_jax.models.attention import DEFAULT_QUERY_BLOCK, attend
from grpo_jax.models.model import param_shardings, positions_from_mask
from grpo_jax.models.shared_prompt import completion_hidden
from grpo_jax.models.transformer import init_cache
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer.build import scratch_model_config
from grpo_jax.trainer.config import ModelSpec

K, G, DH = 2, 3, 8  # kv heads, query heads per kv head, head_dim


def ref_attention(q, key, value, kv_mask, first_slot):
    """float64 softmax attention by slot; returns (out [B, T, K, G, Dh], real [B, T]: queries that may
    attend at least one slot, the only ones whose output is specified)."""
    q, key, value = (np.asarray(a, np.float64) for a in (q, key, value))
    t, s = q.shape[1], key.shape[2]
    scores = np.einsum("btkgd,bksd->bkgts", q, key) / np.sqrt(q.shape[-1])
    allowed = (np.arange(s)[None, :] <= first_slot + np.arange(t)[:, None])[None] & np.asarray(kv_mask, bool)[:, None]
    scores = np.where(allowed[:, None, None], scores, -np.inf)
    peak = np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(peak), peak, 0.0))
    probs = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bkgts,bksd->btkgd", probs, value), allowed.any(-1)


def random_inputs(b, t, s, first_slot, seed=0):
    """Queries for slots first_slot ... first_slot + t - 1 over s key slots; rows left-padded by 0..b-1
    slots, and slots past the last query empty (as in a cache being filled)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, K, G, DH)).astype(np.float32)
    key = rng.normal(size=(b, K, s, DH)).astype(np.float32)
    value = rng.normal(size=(b, K, s, DH)).astype(np.float32)
    kv_mask = np.zeros((b, s), bool)
    for i in range(b):
        kv_mask[i, i:first_slot + t] = True
    return q, key, value, kv_mask


@pytest.mark.parametrize("t, s, first_slot, block", [
    (10, 10, 0, 4),  # no cache: blocks of 4, 4 and 2
    (10, 10, 0, 10),  # one block
    (6, 13, 5, 4),  # completion queries after a 5-slot prompt in a 13-slot cache (2 slots still empty)
    (9, 9, 0, 1),  # one query per block
])
@pytest.mark.parametrize("traced_slot", [False, True])
def test_blocks_match_numpy(t, s, first_slot, block, traced_slot):
    q, key, value, kv_mask = random_inputs(3, t, s, first_slot)
    expected, real = ref_attention(q, key, value, kv_mask, first_slot)
    if traced_slot:  # every block reads all slots
        out = jax.jit(lambda *a: attend(*a, block))(q, key, value, kv_mask, jnp.int32(first_slot))
    else:  # each block reads only the slots its last query may see
        out = jax.jit(lambda *a: attend(*a, first_slot, block))(q, key, value, kv_mask)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out)[real], expected[real], rtol=1e-5, atol=1e-5)


def test_decode_step_matches_numpy():
    q, key, value, kv_mask = random_inputs(3, 1, 12, 7)
    expected, real = ref_attention(q, key, value, kv_mask, 7)
    out = jax.jit(lambda *a: attend(*a, 4))(q, key, value, kv_mask, jnp.int32(7))
    assert real.all()
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def random_prefix(bp, p, seed=5):
    """A shared prefix of p slots for bp prompts, prompt i left-padded by i slots."""
    rng = np.random.default_rng(seed)
    key, value = (rng.normal(size=(bp, K, p, DH)).astype(np.float32) for _ in range(2))
    mask = np.arange(p)[None, :] >= np.arange(bp)[:, None]
    return key, value, mask


def prefix_as_own_slots(q, key, value, kv_mask, prefix):
    """The same attention with the prefix copied into every row's first slots (an independent path):
    (key, value, kv_mask) over P + S slots; the queries' own slots then start at P."""
    rows = q.shape[0] // prefix[0].shape[0]
    pk, pv, pm = (np.repeat(np.asarray(x), rows, axis=0) for x in prefix)
    return (np.concatenate([pk, key], axis=2), np.concatenate([pv, value], axis=2),
            np.concatenate([pm, kv_mask], axis=1))


@pytest.mark.parametrize("t, s, first_slot, block, traced_slot", [
    (10, 10, 0, 4, False),  # completion tokens without a cache, in blocks: the shared-prompt training pass
    (10, 10, 0, 10, True),
    (1, 12, 7, 4, True),  # a decode step over a growing cache of new tokens
])
def test_shared_prefix_matches_numpy_with_the_prefix_copied(t, s, first_slot, block, traced_slot):
    q, key, value, kv_mask = random_inputs(6, t, s, first_slot)
    kv_mask[:, :first_slot + t] = True  # new tokens are never padding on the left; the prefix is
    prefix = random_prefix(2, 5)  # rows 0-2 share prompt 0, rows 3-5 prompt 1
    full_key, full_value, full_mask = prefix_as_own_slots(q, key, value, kv_mask, prefix)
    expected, real = ref_attention(q, full_key, full_value, full_mask, first_slot + 5)
    assert real.all()
    if traced_slot:
        out = jax.jit(lambda *a: attend(*a[:5], block, a[5]))(q, key, value, kv_mask, jnp.int32(first_slot), prefix)
    else:
        out = jax.jit(lambda *a: attend(*a[:4], first_slot, block, a[4]))(q, key, value, kv_mask, prefix)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_shared_prefix_gradients_equal_the_copied_prefix():
    q, key, value, kv_mask = random_inputs(4, 7, 7, 0, seed=2)
    kv_mask[:] = True
    prefix = random_prefix(2, 4, seed=3)
    weights = np.random.default_rng(4).normal(size=q.shape).astype(np.float32)

    def shared(q, key, value, pk, pv):
        return jnp.sum(attend(q, key, value, kv_mask, 0, 3, (pk, pv, prefix[2])) * weights)

    def copied(q, key, value, pk, pv):  # autodiff through the repeat sums the G rows' gradients
        full_key = jnp.concatenate([jnp.repeat(pk, 2, axis=0), key], axis=2)
        full_value = jnp.concatenate([jnp.repeat(pv, 2, axis=0), value], axis=2)
        mask = np.concatenate([np.repeat(prefix[2], 2, axis=0), kv_mask], axis=1)
        return jnp.sum(attend(q, full_key, full_value, mask, 4, 7) * weights)

    args = (q, key, value, prefix[0], prefix[1])
    got, want = (jax.jit(jax.value_and_grad(f, argnums=range(5)))(*args) for f in (shared, copied))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_shared_prefix_needs_whole_groups_and_a_mask(models):
    q, key, value, kv_mask = random_inputs(5, 1, 4, 3)
    with pytest.raises(ValueError, match="5 query rows are not a multiple of the prefix's 2"):
        attend(q, key, value, kv_mask, 3, 4, random_prefix(2, 3))
    model, _, params = models
    ids = jnp.ones((2, 3), jnp.int32)
    cache = init_cache(model.config, 2, 3)
    with pytest.raises(ValueError, match="`prefix` and `prefix_mask` go together"):
        model.apply({"params": params}, ids, positions_from_mask(ids), ids, prefix=cache)


def test_block_gradients_equal_one_block():
    """Rematerialised blocks against plain autodiff of one block (an independent path: no checkpoint,
    no key slicing); a wrong causal range in any block would change the key/value gradients."""
    q, key, value, kv_mask = random_inputs(2, 11, 14, 3, seed=1)
    _, real = ref_attention(q, key, value, kv_mask, 3)
    weights = np.random.default_rng(2).normal(size=q.shape) * real[:, :, None, None, None]

    def loss(q, key, value, block):
        return jnp.sum(attend(q, key, value, kv_mask, 3, block) * weights)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    one, blocked = grad(q, key, value, 100), grad(q, key, value, 4)
    for a, b in zip(one, blocked, strict=True):
        assert np.abs(np.asarray(a)).max() > 1e-3
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_blocked_backward_keeps_less_than_the_scores():
    """The compiled gradient's temporary memory, from XLA's buffer assignment: one block of all 1,024
    queries keeps [1024, S] scores and probabilities for the backward pass; blocks of 64 recompute theirs.
    (XLA's CPU scheduler runs several blocks' recomputations side by side, so the blocked figure is
    several blocks' worth, not one: 83 MB against 202 MB here.)"""
    b, t = 2, 1024
    q = jax.ShapeDtypeStruct((b, t, K, G, DH), jnp.float32)
    key = value = jax.ShapeDtypeStruct((b, K, t, DH), jnp.float32)
    mask = jnp.ones((b, t), bool)

    def temp_bytes(block):
        grad = jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, mask, 0, block) ** 2), argnums=(0, 1, 2))
        return jax.jit(grad).lower(q, key, value).compile().memory_analysis().temp_size_in_bytes

    scores = b * K * G * t * t * 4  # one fp32 [B, K, G, T, S] score tensor: 50 MB
    one, blocked = temp_bytes(t), temp_bytes(64)
    assert one > 2 * scores, (one, scores)
    assert blocked < one / 2, (blocked, one)


CONFIG = ModelConfig(model_type="qwen2", vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, head_dim=8, qkv_bias=True)


def padded_batch(rows=4, length=13, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, CONFIG.vocab_size, (rows, length)).astype(np.int32)
    mask = np.ones((rows, length), np.int32)
    for i in range(rows):
        mask[i, :i] = 0  # left padding of 0 .. rows - 1 slots
    return jnp.asarray(ids), jnp.asarray(mask)


@pytest.fixture(scope="module")
def models():
    """(one block, blocks of 3) models on the same parameters."""
    one = build_model(dataclasses.replace(CONFIG, attention_query_block=1024))
    params = init_params(one, jax.random.key(0))
    return one, build_model(dataclasses.replace(CONFIG, attention_query_block=3)), params


def test_model_logits_and_gradients_match_one_block(models):
    one, blocked, params = models
    ids, mask = padded_batch()
    real = np.asarray(mask, bool)
    weights = jax.random.normal(jax.random.key(1), (*ids.shape, CONFIG.vocab_size)) * mask[..., None]

    def loss(p, model):
        return jnp.sum(forward(model, p, ids, mask) * weights)

    (value_one, grad_one), (value_blocked, grad_blocked) = (
        jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, m) for m in (one, blocked))
    np.testing.assert_allclose(np.asarray(forward(blocked, params, ids, mask))[real],
                               np.asarray(forward(one, params, ids, mask))[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value_blocked, value_one, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6), grad_one, grad_blocked)


def test_prefill_and_decode_with_blocks_match_a_plain_forward(models):
    """Prefill 9 tokens into a 13-slot cache (blocks of 3), then decode the 4 others one at a time: the
    logits of every real token equal those of one uncached forward over all 13."""
    one, blocked, params = models
    ids, mask = padded_batch()
    expected = np.asarray(forward(one, params, ids, mask))
    positions = positions_from_mask(mask)
    cache = init_cache(CONFIG, ids.shape[0], ids.shape[1])
    logits, cache = blocked.apply({"params": params}, ids[:, :9], positions[:, :9], mask.at[:, 9:].set(0), cache, 0)
    got = [np.asarray(logits)]
    step = jax.jit(lambda c, i, pos, m, idx: blocked.apply({"params": params}, i, pos, m, c, idx))
    for t in range(9, 13):
        logits, cache = step(cache, ids[:, t:t + 1], positions[:, t:t + 1], mask.at[:, t + 1:].set(0), jnp.int32(t))
        got.append(np.asarray(logits))
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.concatenate(got, axis=1)[real], expected[real], rtol=1e-5, atol=1e-5)


def test_shared_prompt_with_blocks_matches_plain_forward(models):
    """Completion queries in blocks against a repeated prompt cache (cache_index = P)."""
    one, blocked, params = models
    rows, group, p, t = 8, 4, 5, 8
    rng = np.random.default_rng(3)
    prompts = np.repeat(rng.integers(2, CONFIG.vocab_size, (rows // group, p)), group, axis=0)
    ids = jnp.asarray(np.concatenate([prompts, rng.integers(2, CONFIG.vocab_size, (rows, t))], 1), jnp.int32)
    mask = jnp.ones_like(ids).at[:group, :2].set(0)  # the first prompt left-padded by 2
    expected = completion_hidden(one, params, ids, mask, t, 1)
    got = jax.jit(lambda p: completion_hidden(blocked, p, ids, mask, t, group))(params)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_sharded_blocks_equal_single_device(models):
    one, _, params = models
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    sharded = build_model(dataclasses.replace(CONFIG, attention_query_block=3), mesh)
    sharded_params = jax.device_put(params, param_shardings(sharded, mesh))
    ids, mask = padded_batch(rows=8, length=11)
    expected = np.asarray(forward(one, params, ids, mask))
    got = np.asarray(jax.jit(lambda p: forward(sharded, p, ids, mask))(sharded_params))
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_query_block_is_refused(value):
    with pytest.raises(ValueError, match="attention_query_block"):
        dataclasses.replace(CONFIG, attention_query_block=value)


def test_query_block_reaches_the_model_from_the_trainer_spec_and_the_loader(models, tmp_path):
    one, _, params = models
    save_pretrained(one, params, tmp_path)
    model, _ = load_pretrained(tmp_path, attention_query_block=5)
    assert model.config.attention_query_block == 5
    assert load_pretrained(tmp_path)[0].config.attention_query_block == DEFAULT_QUERY_BLOCK == 128
    assert scratch_model_config(ModelSpec(attention_query_block=64), 40).attention_query_block == 64
