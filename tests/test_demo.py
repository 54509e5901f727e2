"""The embedded demo is a real GRPO run: it must learn the task."""

import numpy as np

from grpo_jax.cli import main
from grpo_jax.demo import DemoConfig, run, worked_example


def test_worked_example_text():
    assert worked_example() == (
        '"2 + 2 = ?" -> answers 4, 5, 4; rewards 1, 0, 1; group mean 0.667; advantages +0.577, -1.155, +0.577'
    )


def test_demo_learns_addition():
    history = run(DemoConfig(steps=40, seed=0), log=None)
    rewards = np.array([h["reward/mean"] for h in history])
    assert rewards[:5].mean() < 0.3  # starts near chance (1 in 10)
    assert rewards[-5:].mean() > 0.9
    assert history[-1]["eval/accuracy"] == 1.0
    assert all(np.isfinite(h["loss"]) and h["kl"] >= 0 for h in history)


def test_demo_is_reproducible_for_a_seed():
    a = run(DemoConfig(steps=3, seed=5), log=None)
    b = run(DemoConfig(steps=3, seed=5), log=None)
    assert a == b


def test_cli_demo_prints_progress(capsys):
    assert main(["demo", "--steps", "3", "--num-prompts", "4"]) == 0
    out = capsys.readouterr().out
    assert "worked example" in out and "step   3" in out and "reward mean" in out
