"""End-to-end GRPO runs: outputs, mesh independence, exact resume, SIGKILL during a save, compile counts,
learning, dynamic sampling. Every run is a ~20k-parameter model on single-digit sums (tests/trainer_runs.py)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from subprocess_lines import LineReader
from trainer_runs import params_equal, tiny_config, train_until_crash

from grpo_jax.metrics import read_metrics
from grpo_jax.rewards import RewardSpec
from grpo_jax.trainer import build_context, restore_params, train
from grpo_jax.trainer.loop import GRPOTrainer

ROOT = Path(__file__).resolve().parents[1]


def _final_params(config, run_dir):
    return jax.device_get(restore_params(*build_context(config, str(run_dir)))[0])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 4-step run with a checkpoint every step: the reference for the resume tests."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    config = tiny_config("save_steps=1", "num_iterations=2")
    train(config, output_dir=str(run_dir))
    return config, run_dir, read_metrics(run_dir), _final_params(config, run_dir)


def test_run_writes_every_output(uninterrupted):
    _, run_dir, records, _ = uninterrupted
    names = sorted(os.listdir(run_dir))
    assert {"checkpoints", "config.json", "curves.png", "metrics.jsonl", "tensorboard"} <= set(names)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    for r in records[1:]:
        assert {"reward/mean", "time/step_s", "kl", "entropy", "clip_frac", "completion/length_mean",
                "time/sample_s", "time/reward_s", "time/update_s", "compile/count", "accuracy"} <= set(r)
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["time/step_s"] > 0
        assert r["batch/prompt_group"] == 4  # each prompt computed once for its G = 4 completions
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 2, 4]
    assert sorted(int(s) for s in os.listdir(run_dir / "checkpoints") if s.isdigit()) == [2, 3, 4]
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run_dir / "config.json").read_text())["grpo"]["num_iterations"] == 2


def test_sampler_and_trainer_logprobs_agree_in_float32(uninterrupted):
    """mu = 2 recomputes pi_old with the training forward: the gap to the sampler's is logged every step, and
    in float32 it is rounding (about 3e-8 mean, 5e-7 max measured)."""
    records = uninterrupted[2][1:]
    assert all(r["rollout/logprob_diff_mean"] < 1e-6 and r["rollout/logprob_diff_max"] < 1e-5 for r in records)


def test_logprob_gap_in_bfloat16_at_mu_1(tmp_path):
    """bfloat16 compute with the parameters cast once for the sampler, mu = 1, measured every 2 steps: the gap
    is far above float32's (about 2e-4 mean, 9e-4 max measured) yet small, and it bounds how far the first
    update's ratio pi / pi_old (pi_old = the sampler's log-probs) is from 1."""
    config = tiny_config("max_steps=2", "eval_examples=0", "save_steps=0", "plot=false", "tensorboard=false",
                         "model.dtype=bfloat16", "grpo.cast_params_once=true", "run.logprob_diff_steps=2")
    train(config, output_dir=str(tmp_path))
    first, second = read_metrics(tmp_path)
    assert "rollout/logprob_diff_mean" not in first
    mean, top = second["rollout/logprob_diff_mean"], second["rollout/logprob_diff_max"]
    assert 1e-6 < mean <= top < 1e-2
    assert np.log(second["ratio_max"]) <= top + 1e-5


def test_resume_after_a_crash_is_bit_identical(uninterrupted, tmp_path, monkeypatch):
    config, _, reference, final = uninterrupted
    train_until_crash(config, str(tmp_path), monkeypatch)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(config, output_dir=str(tmp_path))
    train(config, output_dir=str(tmp_path), resume=True)
    resumed = read_metrics(tmp_path)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
    for a, b in zip(reference, resumed, strict=True):
        for key in ("loss", "reward/mean", "kl", "grad_norm", "eval/accuracy"):
            if key in a:
                assert a[key] == b[key], (a["step"], key)
    assert params_equal(final, _final_params(config, tmp_path))


def test_resume_with_only_the_first_checkpoint(tmp_path, monkeypatch):
    """Killed after the step-0 checkpoint (the end of the warm-up) but before the first periodic one."""
    config = tiny_config("save_steps=0", "max_steps=2", "eval_examples=0", "plot=false")
    original = GRPOTrainer.step

    def crash_at_1(self, step):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(GRPOTrainer, "step", crash_at_1)
    with pytest.raises(KeyboardInterrupt):
        train(config, output_dir=str(tmp_path))
    monkeypatch.setattr(GRPOTrainer, "step", original)
    train(config, output_dir=str(tmp_path), resume=True)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [0, 2]


def test_resume_refuses_a_changed_algorithm(uninterrupted, tmp_path):
    """... but not changed sampler settings that give the same tokens, nor a checkpoint's config written
    before a field existed (it takes the default)."""
    config, run_dir, _, _ = uninterrupted
    for beta in ("0.1", "0"):  # at 0 the state has no reference model: the settings are checked before it is read
        changed = tiny_config("save_steps=1", "num_iterations=2", f"grpo.beta={beta}")
        with pytest.raises(ValueError, match=r"section\(s\) \['grpo'\] differ"):
            GRPOTrainer(*build_context(changed, str(run_dir)), resume=True)
    # TRL's spellings (grpo.*) and the section's own names (sampling.*) set the same fields
    runtime = tiny_config("save_steps=1", "num_iterations=2", "grpo.decode_steps_per_check=4",
                          "sampling.cast_params_once=false", "grpo.decode_phase_tokens=2",
                          "sampling.gather_params_once=false")
    trainer = GRPOTrainer(*build_context(runtime, str(run_dir)), resume=True)
    older = config.to_dict()
    del older["sampling"]["decode_steps_per_check"], older["optimizer"]["max_grad_norm"]
    trainer._check_resumable({"config": older})
    older["optimizer"]["learning_rate"] *= 2
    with pytest.raises(ValueError, match=r"section\(s\) \['optimizer'\] differ"):
        trainer._check_resumable({"config": older})
    with pytest.raises(ValueError, match=r"the checkpoint's config does not load: .*'bogus'"):
        trainer._check_resumable({"config": {**older, "grpo": {**older["grpo"], "bogus": 1}}})


_KILL_DRIVER = """
import sys, threading
from orbax.checkpoint._src.path import atomicity
from trainer_runs import tiny_config
from grpo_jax.trainer import train

original = atomicity.AtomicRenameTemporaryPath.finalize
async def hang(self, *args, **kwargs):
    if self.get_final().name != "3":
        return await original(self, *args, **kwargs)
    print("HANGING IN SAVE 3", flush=True)
    threading.Event().wait(timeout=300)
atomicity.AtomicRenameTemporaryPath.finalize = hang
train(tiny_config("save_steps=1", "num_iterations=2"), output_dir=sys.argv[1])
"""


def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(uninterrupted, tmp_path):
    config, _, reference, final = uninterrupted
    driver = tmp_path / "driver.py"
    driver.write_text(_KILL_DRIVER)
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.Popen([sys.executable, str(driver), str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    reader = LineReader(proc.stdout)
    try:
        seen, hanging = reader.wait_for("HANGING IN SAVE 3", timeout_s=240)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert hanging, seen
    assert "3" not in os.listdir(run_dir / "checkpoints")
    train(config, output_dir=str(run_dir), resume=True)
    assert params_equal(final, _final_params(config, run_dir))
    resumed = read_metrics(run_dir)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]  # step 3's line, logged before the kill, replaced
    assert [r.get("loss") for r in resumed] == [r.get("loss") for r in reference]


def test_mesh_of_eight_devices_matches_one_device(tmp_path):
    """The whole loop (sampler, reference, update) on fsdp x tensor equals one device. (Data parallelism is
    checked across two processes in test_multihost, each program's sharding in its own module's tests.)"""
    losses, params = [], []
    for i, overrides in enumerate((["run.num_devices=1"], ["run.mesh=fsdp:4,tensor:2"])):
        config = tiny_config("max_steps=3", "eval_examples=0", "save_steps=0", *overrides)
        train(config, output_dir=str(tmp_path / str(i)))
        losses.append([r["loss"] for r in read_metrics(tmp_path / str(i))])
        params.append(_final_params(config, tmp_path / str(i)))
    for other_losses, other_params in zip(losses[1:], params[1:], strict=True):
        np.testing.assert_allclose(other_losses, losses[0], rtol=1e-4, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params[0], other_params)


def test_nothing_recompiles_after_warm_up(tmp_path):
    """20 steps with prompts of varying length: compiles happen only the first time a length bucket is seen."""
    config = tiny_config("max_steps=20", "data.difficulty=5", "data.batch_size=2", "data.max_prompt_length=32",
                         "eval_steps=0", "save_steps=0", "eval_examples=0", "beta=0.04")
    train(config, output_dir=str(tmp_path))
    records = read_metrics(tmp_path)[1:] if read_metrics(tmp_path)[0]["step"] == 0 else read_metrics(tmp_path)
    seen = set()
    for r in records:
        bucket = r["batch/prompt_length"]
        if bucket in seen:
            assert r["compile/new"] == 0, r["step"]
        seen.add(bucket)
    assert seen == {16, 32}  # both buckets were exercised
    # per bucket: one sampler, one update, one log-prob program (old and reference share it); compile/count is
    # the process's total (other tests may have compiled before), compile/new this run's own
    assert sum(r["compile/new"] for r in records) <= 3 * len(seen)


def _sevens(completions, **_):
    return [c.count("7") / 4 for c in completions]


def test_reward_rises_on_a_learnable_task(tmp_path):
    config = tiny_config("max_steps=25", "eval_examples=0", "save_steps=0", "optimizer.learning_rate=1e-2", "beta=0",
                         "plot=false", "tensorboard=false")
    ctx, params = build_context(config, str(tmp_path))
    ctx = dataclasses.replace(ctx, specs=(RewardSpec(_sevens, name="math"),))  # write as many 7s as fit in 4 tokens
    GRPOTrainer(ctx, params).run()
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path)]
    assert np.mean(rewards[:3]) < 0.2 and np.mean(rewards[-3:]) > 0.6, rewards


def test_dynamic_sampling_refills_with_informative_groups(tmp_path):
    config = tiny_config("max_steps=2", "eval_examples=0", "save_steps=0", "dynamic_sampling=true",
                         "max_resample_rounds=2")
    ctx, params = build_context(config, str(tmp_path))
    starts_with_1 = RewardSpec(lambda completions, **_: [float(c.startswith("1")) for c in completions], name="math")
    GRPOTrainer(dataclasses.replace(ctx, specs=(starts_with_1,)), params).run()
    for r in read_metrics(tmp_path):
        assert 1 <= r["dynamic/rounds"] <= 3
        kept = min(r["dynamic/informative_groups"], 8)
        assert r["dynamic/filled_with_zero_signal"] == 8 - kept
        assert r["groups/zero_signal_frac"] == pytest.approx((8 - kept) / 8)


def test_process_supervision_trains_with_token_advantages(tmp_path):
    config = tiny_config("max_steps=2", "eval_examples=0", "save_steps=0", "grpo.step_reward=arithmetic_steps",
                         "plot=false")
    train(config, output_dir=str(tmp_path))
    for r in read_metrics(tmp_path):
        assert np.isfinite(r["loss"]) and abs(r["advantage/mean"]) < 1.5
