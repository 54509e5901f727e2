"""The non-finite guard (grpo_jax.trainer.nonfinite): an update with a NaN / Inf loss, gradient norm or parameter
update is never applied; the run stops before that step's checkpoint (exit status 3, naming the step and the
quantity) or, with run.on_nonfinite=skip, skips the update and counts it."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cli_runs import TINY, error_line
from trainer_runs import params_equal, tiny_config

from grpo_jax.cli import main
from grpo_jax.errors import NonFiniteError
from grpo_jax.models import ModelConfig, build_model, init_params
from grpo_jax.sharding import make_mesh
from grpo_jax.trainer import load_run_config, restore_params
from grpo_jax.trainer.context import build_context
from grpo_jax.trainer.loop import CHECKPOINT_DIR, GRPOTrainer, train
from grpo_jax.trainer.nonfinite import NonFiniteGuard, keep_if_finite, nonfinite_code
from grpo_jax.trainer.state import create_state, state_shardings
from grpo_jax.trainer.step import make_update_fn, sft_objective

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("loss, grad_norm, update, code", [
    (0.5, 1.0, [1.0, 2.0], 0),
    (NAN, 1.0, [1.0, 2.0], 1),
    (INF, NAN, [NAN, 2.0], 1),  # the first one, in the order loss, gradient norm, update
    (0.5, INF, [1.0, 2.0], 2),
    (0.5, 1.0, [1.0, -INF], 3),
    (0.5, 1.0, [NAN, 2.0], 3),
])
def test_the_code_names_the_first_nonfinite_quantity(loss, grad_norm, update, code):
    updates = {"a": jnp.asarray(update[:1]), "b": {"c": jnp.asarray([[update[1]]])}}
    got = jax.jit(nonfinite_code)(jnp.float32(loss), jnp.float32(grad_norm), updates)
    assert got.dtype == jnp.int32 and int(got) == code


def test_keep_if_finite_returns_the_old_state_leaf_by_leaf():
    new, old = {"w": jnp.full((2, 3), 5.0), "n": jnp.int32(2)}, {"w": jnp.zeros((2, 3)), "n": jnp.int32(1)}
    kept = keep_if_finite(jnp.int32(3), new, old)
    assert np.array_equal(kept["w"], np.zeros((2, 3))) and int(kept["n"]) == 1
    taken = keep_if_finite(jnp.int32(0), new, old)
    assert np.array_equal(taken["w"], np.full((2, 3), 5.0)) and int(taken["n"]) == 2


def test_the_guard_stops_at_the_first_nonfinite_update_naming_step_update_and_quantity():
    guard = NonFiniteGuard("stop", 10)
    assert guard.check(1, [0, 0]) == 0
    with pytest.raises(NonFiniteError) as e:
        guard.check(7, [0, 2, 1], saved="; the newest checkpoint is step 6")
    message = str(e.value)
    assert message.startswith("step 7: the gradient norm of optimizer update 2 of 3 is not finite (NaN or Inf)")
    assert "the newest checkpoint is step 6" in message and "run.on_nonfinite=skip" in message


def test_the_guard_skips_counts_and_stops_after_max_skips_in_a_row():
    guard = NonFiniteGuard("skip", 3, what="SFT step")
    assert guard.check(1, [1, 0, 3]) == 2  # a finite update between resets the run of skips
    assert guard.check(2, [0, 1, 1]) == 2
    with pytest.raises(NonFiniteError, match=r"SFT step 3: the parameter update of optimizer update 1 of 2 .*"
                                             r"3 updates in a row were skipped \(run.max_nonfinite_skips=3\)"):
        guard.check(3, [3, 0])
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        NonFiniteGuard("ignore", 3)


CONFIG = ModelConfig(model_type="qwen2", vocab_size=24, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)


def _sft_batch(nan_mask: bool = False) -> dict:
    rng = np.random.default_rng(0)
    mask = np.ones((8, 4), np.float32)
    if nan_mask:
        mask[2, 1] = NAN  # the NLL of a NaN-weighted token is NaN
    return {"input_ids": rng.integers(1, CONFIG.vocab_size, (8, 10)).astype(np.int32),
            "attention_mask": np.ones((8, 10), np.int32), "completion_mask": mask}


@pytest.mark.parametrize("case, quantity", [("nan_loss", 1), ("inf_step", 3), ("finite", 0)])
def test_a_nonfinite_update_is_not_applied_inside_the_jitted_update(case, quantity):
    """Through make_update_fn on a 2-device mesh: the returned state is the one passed in (params, optimizer
    state and step counter) exactly when the code is not 0."""
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    model = build_model(CONFIG, mesh)
    learning_rate = INF if case == "inf_step" else 1e-2  # an infinite step: finite loss and gradient
    optimizer = optax.sgd(learning_rate)
    state = create_state(init_params(model, jax.random.key(0), mesh), optimizer, mesh, seed=0, with_reference=False)
    before = jax.device_get(state)
    update = make_update_fn(model, optimizer, optax.constant_schedule(learning_rate), mesh, state_shardings(state),
                            objective=sft_objective, temperature=1.0, accumulation_steps=2, token_weighted=True,
                            name="test_nonfinite_update")
    state, metrics = update(state, _sft_batch(nan_mask=case == "nan_loss"), 1)
    assert int(metrics["nonfinite"].value) == quantity
    after = jax.device_get(state)
    assert params_equal(after.params, before.params) == (quantity != 0)
    assert int(after.step) == int(before.step) + (quantity == 0)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(after.params))


def _metrics_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_params_finite(run_dir, step: int) -> bool:
    ctx, params = build_context(load_run_config(str(run_dir)), str(run_dir))
    params, restored = restore_params(ctx, params, step)
    assert restored == step
    return all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


def test_a_diverging_run_stops_before_its_checkpoint_with_exit_3(tmp_path, capsys):
    """learning_rate=1e30 (finite, so the config takes it): the first update blows the parameters up and the
    next one's loss is NaN. The run stops there with one line naming the step and the quantity; the newest
    checkpoint is the last finite state, and the failing step's metrics are written."""
    run = tmp_path / "run"
    argv = ["train", f"--output-dir={run}", *TINY, "max_steps=3", "save_steps=1", "optimizer.learning_rate=1e30"]
    assert main(argv) == 3
    line = error_line(capsys)
    assert "is not finite (NaN or Inf). The update was not applied and the run stopped before saving step" in line
    lines = _metrics_lines(run)
    failed = lines[-1]
    assert failed["nonfinite/skipped_updates"] >= 1
    assert line.startswith(f"grpo-jax: error: step {failed['step']}: the ")
    saved = sorted(int(p.name) for p in (run / CHECKPOINT_DIR).iterdir() if p.name.isdigit())
    assert saved == list(range(failed["step"]))  # every step before the failing one, not that one
    assert f"the newest checkpoint, step {saved[-1]} in" in line
    assert all(_checkpoint_params_finite(run, step) for step in saved)


def _poison_advantages(monkeypatch, bad_steps: set[int]):
    """NaN advantages on the given steps (1-based): their loss, and so every update of the step, is NaN."""
    original = GRPOTrainer._advantages
    calls = {"n": 0}

    def advantages(self, rollout):
        calls["n"] += 1
        out = original(self, rollout)
        return np.full_like(out, np.nan) if calls["n"] in bad_steps else out

    monkeypatch.setattr(GRPOTrainer, "_advantages", advantages)


def test_skip_mode_skips_the_bad_step_and_completes(tmp_path, monkeypatch):
    """run.on_nonfinite=skip: step 2's updates are skipped (counted), the run goes on and ends finite."""
    _poison_advantages(monkeypatch, {2})
    run = tmp_path / "run"
    config = tiny_config("run.on_nonfinite=skip", "max_steps=3", "eval_steps=0", "save_steps=1",
                         "grpo.num_minibatches=2")
    last = train(config, output_dir=str(run))
    lines = {line["step"]: line for line in _metrics_lines(run)}
    assert [lines[s]["nonfinite/skipped_updates"] for s in (1, 2, 3)] == [0, 2, 0]
    assert last["nonfinite/skipped_updates"] == 0 and np.isfinite(last["loss"])
    assert all(_checkpoint_params_finite(run, step) for step in (1, 2, 3))
    # the skipped step left the state as step 1 left it
    ctx, params = build_context(load_run_config(str(run)), str(run))
    p1, _ = restore_params(ctx, params, 1)
    ctx, params = build_context(load_run_config(str(run)), str(run))
    p2, _ = restore_params(ctx, params, 2)
    assert params_equal(jax.device_get(p1), jax.device_get(p2))


def test_stop_mode_leaves_the_last_finite_checkpoint_newest(tmp_path, monkeypatch):
    _poison_advantages(monkeypatch, {2})
    run = tmp_path / "run"
    config = tiny_config("max_steps=3", "eval_steps=0", "save_steps=1")
    with pytest.raises(NonFiniteError, match=r"^step 2: the loss of optimizer update 1 of 1 is not finite"):
        train(config, output_dir=str(run))
    saved = sorted(int(p.name) for p in (run / CHECKPOINT_DIR).iterdir() if p.name.isdigit())
    assert saved == [0, 1]
    assert [line["step"] for line in _metrics_lines(run)] == [0, 1, 2]
