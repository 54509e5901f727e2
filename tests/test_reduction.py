"""Metric reductions (grpo_jax.trainer.reduction): over micro-batches, inside make_update_fn, and over updates.

The whole-minibatch values are re-derived independently in NumPy (tests/numpy_reference.py) from the
model's log-probabilities, so an update over K micro-batches is checked against the metrics of one pass over
the whole minibatch, not only against another K.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpy_reference import ref_grpo_loss

from grpo_jax.models import ModelConfig, build_model, init_params
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer import reduction
from grpo_jax.trainer.config import GRPOConfig
from grpo_jax.trainer.reduction import Metric, accumulate, initial, mean_over_updates, to_floats
from grpo_jax.trainer.state import create_state, state_shardings
from grpo_jax.trainer.step import completion_logprobs, grpo_objective, make_update_fn, sft_objective

CONFIG = ModelConfig(model_type="qwen2", vocab_size=24, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
N, P, T, K = 16, 6, 5, 4
TEMPERATURE = 0.9
EMPTY_MICRO_BATCH = 3  # split_micro puts rows 3, 7, 11, 15 in micro-batch 3 of K = 4: they get no loss token


def _batch(per_token_advantages: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CONFIG.vocab_size, (N, P + T)).astype(np.int32)
    attention = np.ones((N, P + T), np.int32)
    completion = np.ones((N, T), np.float32)
    for i in range(N):
        attention[i, : i % 3] = 0
        end = 0 if i % K == EMPTY_MICRO_BATCH else 1 + i % T
        completion[i, end:] = 0
        attention[i, P + end:] = 0
    shape = (N, T) if per_token_advantages else (N,)
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion,
            "advantages": rng.normal(size=shape).astype(np.float32),
            "old_logprobs": np.log(rng.uniform(0.02, 0.2, (N, T))).astype(np.float32),
            "ref_logprobs": np.log(rng.uniform(0.02, 0.2, (N, T))).astype(np.float32)}


@pytest.fixture(scope="module")
def setup():
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = build_model(CONFIG, mesh)
    params = init_params(model, jax.random.key(0), mesh)
    return mesh, model, params


def _update(setup, objective, accumulation_steps, token_weighted, batch):
    mesh, model, params = setup
    optimizer = optax.sgd(1e-2)
    state = create_state(jax.tree.map(jnp.copy, params), optimizer, mesh, seed=0, with_reference=False)
    update = make_update_fn(model, optimizer, optax.constant_schedule(1e-2), mesh, state_shardings(state),
                            objective=objective, temperature=TEMPERATURE, accumulation_steps=accumulation_steps,
                            token_weighted=token_weighted, name="test_update")
    _, metrics = update(state, batch, 1)
    return metrics


def _whole_batch_logprobs(setup, batch):
    _, model, params = setup
    logp, entropy = completion_logprobs(model, params, batch["input_ids"], batch["attention_mask"], T,
                                        temperature=TEMPERATURE, with_entropy=True)
    return np.asarray(logp, np.float64), np.asarray(entropy, np.float64)


def _token_mean(x, mask):
    return float(np.sum(x * mask) / max(np.sum(mask), 1.0))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])  # seq-mean-token-mean, token-mean
@pytest.mark.parametrize("per_token_advantages", [False, True])
def test_micro_batches_give_the_whole_minibatch_metrics(setup, loss_type, per_token_advantages):
    """K micro-batches (one of them without loss tokens) and one pass give the NumPy whole-minibatch metrics."""
    grpo = GRPOConfig(beta=0.04, epsilon=0.1, loss_type=loss_type)
    batch = _batch(per_token_advantages)
    logp, entropy = _whole_batch_logprobs(setup, batch)
    mask = batch["completion_mask"].astype(np.float64)
    _, want = ref_grpo_loss(logp, batch["old_logprobs"], batch["ref_logprobs"], batch["advantages"], mask,
                            clip_eps=0.1, beta=0.04, aggregation=grpo.aggregation, max_tokens=T)
    want["entropy"] = _token_mean(entropy, mask)
    assert 0 < want["clip_frac"] and want["ratio_min"] > 0  # the clip and the empty micro-batch's 0 matter
    for accumulation_steps in (1, K):
        metrics = _update(setup, grpo_objective(grpo), accumulation_steps, grpo.aggregation == "token-mean", batch)
        got = to_floats(metrics)
        assert set(got) == set(want) | {"grad_norm", "learning_rate", "nonfinite"}
        assert got["nonfinite"] == 0  # all finite: the update was applied
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=f"{name} K={accumulation_steps}")
        assert metrics["ratio_max"].reduce == "max" and metrics["entropy"].reduce == "tokens"
        assert metrics["advantage_mean"].reduce == ("tokens" if per_token_advantages else "rows")


def test_a_made_up_metric_flows_through_by_its_reduction(setup):
    """make_update_fn knows no objective's metric names: a new metric combines by its ``reduce`` alone."""
    def objective(logp, batch):
        loss, metrics = sft_objective(logp, batch)
        valid = batch["completion_mask"] > 0
        return loss, dict(metrics,
                          my_max=Metric(jnp.where(jnp.any(valid), jnp.max(jnp.where(valid, logp, -jnp.inf)), 0.0),
                                        "max"),
                          my_min=Metric(jnp.where(jnp.any(valid), jnp.min(jnp.where(valid, logp, jnp.inf)), 0.0),
                                        "min"),
                          my_rows=Metric(jnp.mean(jnp.sum(batch["completion_mask"], axis=1)), "rows"))

    batch = _batch(per_token_advantages=False)
    logp, _ = _whole_batch_logprobs(setup, batch)
    mask = batch["completion_mask"] > 0
    metrics = _update(setup, objective, K, True, batch)
    assert {name: m.reduce for name, m in metrics.items()} == {
        "loss": "loss", "my_max": "max", "my_min": "min", "my_rows": "rows", "entropy": "tokens",
        "grad_norm": "loss", "learning_rate": "loss", "nonfinite": "max"}
    got = to_floats(metrics)
    np.testing.assert_allclose(got["my_max"], logp[mask].max(), rtol=1e-5)
    np.testing.assert_allclose(got["my_min"], logp[mask].min(), rtol=1e-5)  # not the empty micro-batch's 0
    np.testing.assert_allclose(got["my_rows"], batch["completion_mask"].sum(axis=1).mean(), rtol=1e-6)
    np.testing.assert_allclose(got["loss"], -logp[mask].mean(), rtol=1e-5)


def test_an_objective_must_return_metrics(setup):
    def objective(logp, batch):
        loss, _ = sft_objective(logp, batch)
        return loss, {"loss": loss}

    with pytest.raises(TypeError, match=r"\['loss'\] are not"):
        _update(setup, objective, 1, True, _batch(per_token_advantages=False))


def test_metric_checks_its_reduction():
    with pytest.raises(ValueError, match="reduce='sum'"):
        Metric(jnp.float32(1.0), "sum")
    tree = {"a": Metric(jnp.float32(2.0), "max")}
    assert jax.tree.leaves(tree) == [jnp.float32(2.0)]
    moved = jax.tree.map(lambda x: x + 1, tree)["a"]
    assert moved.reduce == "max" and float(moved.value) == 3.0


def test_accumulate_against_numpy():
    """Folding micro-batch values with ``accumulate`` from ``initial``: weighted sums and masked extremes."""
    rng = np.random.default_rng(3)
    values = rng.normal(size=K).astype(np.float32)
    tokens = np.array([3.0, 0.0, 5.0, 2.0])  # micro-batch 1 has no loss token
    weights = {"loss": np.array([0.1, 0.2, 0.3, 0.4]), "tokens": tokens / tokens.sum(), "rows": np.full(K, 1 / K)}
    want = {"loss": np.sum(weights["loss"] * values), "tokens": np.sum(weights["tokens"] * values),
            "rows": values.mean(), "max": values[tokens > 0].max(), "min": values[tokens > 0].min()}
    for reduce, expected in want.items():
        total = initial(Metric(jnp.zeros((), jnp.float32), reduce))
        for j in range(K):
            total = accumulate(total, Metric(jnp.float32(values[j]), reduce),
                               {name: jnp.float32(w[j]) for name, w in weights.items()})
        assert total.reduce == reduce
        np.testing.assert_allclose(float(total.value), expected, rtol=1e-6, err_msg=reduce)
    with pytest.raises(ValueError, match="reduced by 'max'"):
        accumulate(Metric(jnp.float32(0.0), "max"), Metric(jnp.float32(0.0), "min"), weights)


def test_mean_over_updates_against_numpy(monkeypatch):
    """Max / min for those reductions, the mean otherwise; the history comes from the device in one call."""
    rng = np.random.default_rng(4)
    reduces = {"loss": "loss", "kl": "tokens", "adv": "rows", "ratio_max": "max", "ratio_min": "min"}
    values = {name: rng.normal(size=5) for name in reduces}
    history = [{name: Metric(jnp.float32(values[name][u]), reduce) for name, reduce in reduces.items()}
               for u in range(5)]
    calls = []
    monkeypatch.setattr(reduction, "to_host", lambda tree: calls.append(tree) or jax.device_get(tree))
    got = mean_over_updates(history)
    assert len(calls) == 1
    v32 = {name: v.astype(np.float32).astype(np.float64) for name, v in values.items()}
    want = {"loss": v32["loss"].mean(), "kl": v32["kl"].mean(), "adv": v32["adv"].mean(),
            "ratio_max": v32["ratio_max"].max(), "ratio_min": v32["ratio_min"].min()}
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
    assert mean_over_updates(jax.device_get(history)) == got  # host values too
    assert mean_over_updates([]) == {}
    assert to_floats(history[2]) == {name: float(np.float32(values[name][2])) for name in reduces}
