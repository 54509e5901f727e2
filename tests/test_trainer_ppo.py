"""PPO with a learned critic and the critic-free baselines (RLOO, REINFORCE++) in the trainer: per-token rewards
and advantages against NumPy, PPO's exact resume with the critic and its optimizer, learning on a learnable
task with either critic, the critic warm-up, and the configurations refused before anything is built."""

import dataclasses

import jax
import numpy as np
import pytest
from trainer_runs import tiny_config, train_until_crash

from grpo_jax.metrics import read_metrics
from grpo_jax.rewards import RewardSpec
from grpo_jax.trainer import ConfigError, build_context, restore_params, train
from grpo_jax.trainer.advantages import token_advantages, token_rewards
from grpo_jax.trainer.loop import GRPOTrainer

PPO = ("algorithm=ppo", "num_generations=1", "data.batch_size=16")


def test_token_rewards_put_the_outcome_on_the_last_token_minus_the_kl():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    old = np.log(np.full((3, 4), 0.5, np.float32))
    ref = np.log(np.full((3, 4), 0.25, np.float32))
    rewards = token_rewards(np.array([1.0, 0.5, 3.0]), mask, old, ref, beta=0.1, kl_estimator="k1")
    kl = np.log(0.5) - np.log(0.25)  # k1 = log pi_old - log pi_ref
    expected = np.array([[-0.1 * kl, -0.1 * kl, 1 - 0.1 * kl, 0], [0.5 - 0.1 * kl, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)


def test_reinforce_pp_token_advantages_are_normalised_returns_to_go():
    from grpo_jax.trainer.config import GRPOConfig, PPOConfig

    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    rewards = np.array([[-0.1, -0.2, 1.0], [0.3, 0.5, 0.0]], np.float32)
    advantages, returns = token_advantages(GRPOConfig(algorithm="reinforce++", kl_penalty="reward"), PPOConfig(),
                                           rewards, mask, None)
    to_go = np.array([0.7, 0.8, 1.0, 0.8, 0.5])  # sums of each row's rewards from the token on
    np.testing.assert_allclose(advantages[mask > 0], (to_go - to_go.mean()) / np.sqrt(to_go.var() + 1e-8), rtol=1e-5)
    assert returns is None and advantages[1, 2] == 0


def _full_state(config, run_dir):
    trainer = GRPOTrainer(*build_context(config, str(run_dir)), resume=True)
    try:
        return jax.device_get(trainer.state.replace(frozen=None))
    finally:
        trainer.lock.release()


def test_ppo_resume_is_bit_identical_with_the_critic_and_its_optimizer(tmp_path, monkeypatch):
    config = tiny_config(*PPO, "data.batch_size=32", "num_minibatches=2", "gradient_accumulation_steps=2",
                         "save_steps=1", "num_iterations=2", "kl_penalty=reward", "eval_examples=0")
    train(config, output_dir=str(tmp_path / "whole"))
    train_until_crash(config, str(tmp_path / "resumed"), monkeypatch)
    train(config, output_dir=str(tmp_path / "resumed"), resume=True)
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "resumed")
    for a, b in zip(whole, resumed, strict=True):
        for key in ("loss", "critic/value_loss", "critic/value_mean", "advantage/abs_mean", "kl"):
            assert a.get(key) == b.get(key), (a["step"], key)
    assert whole[-1]["critic/value_loss"] > 0 and whole[-1]["params/critic"] > whole[-1]["params/total"]
    a, b = _full_state(config, tmp_path / "whole"), _full_state(config, tmp_path / "resumed")
    assert int(a.critic.step) == 4 * 2 * 2  # mu = 2 passes over 2 minibatches per step
    leaves = jax.tree.leaves(a.critic.opt_state)
    assert leaves and any(np.any(np.asarray(x) != 0) for x in leaves)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # eval and export read the policy out of a checkpoint that also holds the critic
    exported = jax.device_get(restore_params(*build_context(config, str(tmp_path / "resumed")))[0])
    for x, y in zip(jax.tree.leaves(exported), jax.tree.leaves(a.params), strict=True):
        np.testing.assert_array_equal(x, y)


def _sevens(completions, **_):
    return [c.count("7") / 4 for c in completions]


@pytest.mark.parametrize("critic", ["copy", "head"])
def test_ppo_reward_rises_and_the_critic_learns(tmp_path, critic):
    config = tiny_config(*PPO, f"ppo.critic={critic}", "max_steps=25", "eval_examples=0", "save_steps=0",
                         "optimizer.learning_rate=1e-2", "ppo.critic_learning_rate=1e-2", "beta=0", "plot=false",
                         "logprob_diff_steps=0",
                         "tensorboard=false")
    ctx, params = build_context(config, str(tmp_path))
    GRPOTrainer(dataclasses.replace(ctx, specs=(RewardSpec(_sevens, name="math"),)), params).run()
    records = read_metrics(tmp_path)
    rewards = [r["reward/mean"] for r in records]
    assert np.mean(rewards[:3]) < 0.2 and np.mean(rewards[-3:]) > 0.6, rewards
    # the critic's values start at 0 and follow the returns as they rise towards 1
    values, returns = (np.array([r[f"critic/{name}"] for r in records]) for name in ("value_mean", "return_mean"))
    assert values[0] == 0 and np.mean(values[-5:]) > 0.7, values
    assert np.mean(np.abs(values - returns)[-5:]) < 0.15, (values, returns)
    assert all(r["compile/new"] == 0 for r in records[1:])
    hidden = config.model.hidden_size
    assert records[0]["params/critic"] == (hidden + 1 if critic == "head" else records[0]["params/total"] + hidden + 1)


def test_critic_warmup_steps_leave_the_policy_alone(tmp_path):
    config = tiny_config(*PPO, "ppo.critic_warmup_steps=2", "max_steps=3", "eval_examples=0", "save_steps=0")
    train(config, output_dir=str(tmp_path))
    records = read_metrics(tmp_path)
    assert ["loss" in r for r in records] == [False, False, True]
    assert all("critic/value_loss" in r for r in records)


@pytest.mark.parametrize("overrides", [("algorithm=rloo",), ("algorithm=reinforce++", "num_generations=1"),
                                       ("algorithm=reinforce++", "kl_penalty=reward", "beta=0.1")])
def test_critic_free_baselines_train(tmp_path, overrides):
    config = tiny_config(*overrides, "max_steps=2", "eval_examples=0", "save_steps=0", "plot=false")
    train(config, output_dir=str(tmp_path))
    for r in read_metrics(tmp_path):
        assert np.isfinite(r["loss"]) and "critic/value_loss" not in r and "params/critic" not in r
        assert abs(r["advantage/mean"]) < 1e-5  # every one of these baselines is centred over the batch


@pytest.mark.parametrize("overrides,message", [
    (("num_generations=1",), "'ppo' and 'reinforce\\+\\+' need no group"),
    (("algorithm=ppo", "num_generations=1", "dynamic_sampling=true"), "dynamic_sampling"),
    (("kl_penalty=reward",), "per-token advantages"),
    (("algorithm=rloo", "grpo.step_reward=arithmetic_steps"), "process supervision"),
    (("algorithm=ppo", "model.lora_rank=4"), "ppo.critic=head"),
    (("ppo.lam=1.5",), "ppo.lam=1.5 is invalid"),
    (("ppo.critic=shared",), "ppo.critic='shared' is invalid"),
])
def test_bad_algorithm_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(*overrides)


def test_ppo_with_lora_reads_the_policy_trunk_under_its_adapters(tmp_path):
    config = tiny_config(*PPO, "ppo.critic=head", "model.lora_rank=4", "max_steps=2", "eval_examples=0",
                         "save_steps=0", "plot=false")
    train(config, output_dir=str(tmp_path))
    records = read_metrics(tmp_path)
    assert records[-1]["params/critic"] == config.model.hidden_size + 1
    assert records[-1]["params/trainable"] < records[-1]["params/total"]  # only the adapters train
    assert all(np.isfinite(r["critic/value_loss"]) and np.isfinite(r["loss"]) for r in records)
