"""Logits parity with transformers' PyTorch models on tiny random-init checkpoints of every family."""

import numpy as np
import pytest

pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from hf_checkpoints import FAMILIES, make_checkpoint, torch_logits  # noqa: E402

from grpo_jax.models import ModelConfig, build_model, forward, init_cache, load_pretrained, positions_from_mask  # noqa: E402

VOCAB = 96
TOL = 1e-4  # fp32 max abs difference required by the models issue


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (directory, PyTorch reference model)."""
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(family)
        out[family] = (path, make_checkpoint(path, family))
    return out


def _left_padded_batch(rng, lengths, width):
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    rows = []
    for i, n in enumerate(lengths):
        row = rng.randint(1, VOCAB, n)
        ids[i, width - n:] = row
        mask[i, width - n:] = 1
        rows.append(row)
    return ids, mask, rows


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, checkpoints):
    path, torch_model = checkpoints[family]
    model, params = load_pretrained(path)
    ids = np.random.RandomState(1).randint(0, VOCAB, (2, 40))
    ours = np.asarray(forward(model, params, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32)))
    ref = torch_logits(torch_model, ids)
    assert np.abs(ref).max() > 1.0  # the reference is not trivially small
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_left_padded_rows_match_unpadded_reference(family, checkpoints):
    path, torch_model = checkpoints[family]
    model, params = load_pretrained(path)
    ids, mask, rows = _left_padded_batch(np.random.RandomState(2), [12, 5, 9], 12)
    ours = np.asarray(forward(model, params, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.all(np.isfinite(ours))
    for i, row in enumerate(rows):
        ref = torch_logits(torch_model, row[None])[0]
        np.testing.assert_allclose(ours[i, 12 - len(row):], ref, atol=TOL, rtol=0)
    # transformers with the same padded batch and mask-derived positions agrees too
    np.testing.assert_allclose(ours * mask[..., None], torch_logits(torch_model, ids, mask) * mask[..., None],
                               atol=TOL, rtol=0)


def test_llama3_rope_scaling_is_exercised(checkpoints):
    """Dropping the scaling changes the logits well beyond the tolerance, so parity above is meaningful."""
    path, _ = checkpoints["llama3_scaled_mqa_tied"]
    model, params = load_pretrained(path)
    assert model.config.rope_type == "llama3"
    unscaled = build_model(model.config.replace(rope_scaling=None))
    ids = jnp.asarray(np.random.RandomState(3).randint(0, VOCAB, (1, 40)))
    mask = jnp.ones_like(ids)
    diff = np.abs(np.asarray(forward(model, params, ids, mask)) - np.asarray(forward(unscaled, params, ids, mask)))
    assert diff.max() > 100 * TOL


@pytest.mark.parametrize("family", ["qwen2_bias_tied", "qwen3_qknorm_gqa4", "llama3_scaled_mqa_tied"])
def test_kv_cache_decoding_matches_full_forward(family, checkpoints):
    """Prefill a left-padded prompt batch into the cache, then feed the rest one token at a time."""
    path, _ = checkpoints[family]
    model, params = load_pretrained(path)
    ids, mask, _ = _left_padded_batch(np.random.RandomState(4), [7, 3], 7)
    continuation = np.random.RandomState(5).randint(1, VOCAB, (2, 6))
    full_ids = np.concatenate([ids, continuation], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(continuation)], axis=1)
    expected = np.asarray(forward(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask)))

    total = full_ids.shape[1]
    kv_mask = jnp.asarray(np.pad(mask, ((0, 0), (0, total - 7))))
    positions = positions_from_mask(jnp.asarray(full_mask))
    apply = jax.jit(lambda p, i, pos, kvm, c, idx: model.apply({"params": p}, i, pos, kvm, cache=c, cache_index=idx))
    cache = init_cache(model.config, batch=2, max_length=total)
    logits, cache = apply(params, jnp.asarray(ids), positions[:, :7], kv_mask, cache, 0)
    np.testing.assert_allclose(np.asarray(logits) * mask[..., None], expected[:, :7] * mask[..., None], atol=TOL)
    for t in range(7, total):
        kv_mask = kv_mask.at[:, t].set(1)
        logits, cache = apply(params, jnp.asarray(full_ids[:, t:t + 1]), positions[:, t:t + 1], kv_mask, cache, t)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], expected[:, t], atol=TOL, rtol=0)


def test_bf16_compute_stays_close_to_fp32(checkpoints):
    path, _ = checkpoints["qwen2_bias_tied"]
    model32, params = load_pretrained(path)
    model16, params16 = load_pretrained(path, dtype=jnp.bfloat16)
    assert params16["embedding"].dtype == jnp.float32  # fp32 parameters, bf16 compute
    ids = jnp.asarray(np.random.RandomState(6).randint(0, VOCAB, (2, 16)))
    mask = jnp.ones_like(ids)
    out16 = forward(model16, params16, ids, mask)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, forward(model32, params, ids, mask), atol=0.1)


def test_remat_gives_the_same_gradients(checkpoints):
    path, _ = checkpoints["qwen3_qknorm_gqa4"]
    model, params = load_pretrained(path)
    remat_model = build_model(model.config.replace(remat=True))
    ids = jnp.asarray(np.random.RandomState(7).randint(0, VOCAB, (2, 10)))

    def loss(m):
        return lambda p: jnp.mean(forward(m, p, ids, jnp.ones_like(ids)) ** 2)

    g = jax.grad(loss(model))(params)
    g_remat = jax.grad(loss(remat_model))(params)
    assert "remat" in str(jax.make_jaxpr(jax.grad(loss(remat_model)))(params))  # remat is really applied
    assert "remat" not in str(jax.make_jaxpr(jax.grad(loss(model)))(params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, g_remat)


def test_model_config_is_hashable_and_validated():
    cfg = ModelConfig.from_hf(__import__("hf_checkpoints").hf_config("llama3_scaled_mqa_tied"))
    assert hash(cfg) == hash(cfg.replace())
    with pytest.raises(ValueError, match="num_attention_heads=6 is not a multiple of num_key_value_heads=4"):
        cfg.replace(num_attention_heads=6, num_key_value_heads=4)
