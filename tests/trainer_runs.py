"""Small, fast training configurations for the trainer's end-to-end tests."""

from __future__ import annotations

import numpy as np

from grpo_jax.trainer import (
    DataConfig,
    GRPOConfig,
    ModelSpec,
    OptimizerConfig,
    RunConfig,
    SamplingConfig,
    TrainConfig,
    apply_overrides,
)


def tiny_config(*overrides: str) -> TrainConfig:
    """A from-scratch model of ~20k parameters on single-digit sums: a GRPO step takes well under a second."""
    config = TrainConfig(
        name="tiny",
        model=ModelSpec(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, max_position_embeddings=64),
        data=DataConfig(task="arithmetic", difficulty=0, num_examples=2000, eval_examples=16, batch_size=8,
                        max_prompt_length=16),
        grpo=GRPOConfig(beta=0.04),
        sampling=SamplingConfig(num_generations=4, max_new_tokens=4),
        optimizer=OptimizerConfig(learning_rate=1e-3),
        run=RunConfig(max_steps=4, eval_steps=2, save_steps=2, eval_batch_size=16, progress=False),
    )
    return apply_overrides(config, list(overrides))


def params_equal(a, b) -> bool:
    """Bit-identical parameter pytrees (host copies)."""
    import jax

    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def train_until_crash(config: TrainConfig, output_dir: str, monkeypatch, *, at_step: int = 3) -> None:
    """Train ``config`` into ``output_dir`` until a simulated crash (KeyboardInterrupt) at the start of step
    ``at_step``; the checkpoints written before it stay, for a resume test."""
    import pytest

    from grpo_jax.trainer import train
    from grpo_jax.trainer.loop import GRPOTrainer

    original = GRPOTrainer.step

    def crash(self, step):
        if step == at_step:
            raise KeyboardInterrupt("simulated crash")
        return original(self, step)

    monkeypatch.setattr(GRPOTrainer, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config, output_dir=output_dir)
    monkeypatch.setattr(GRPOTrainer, "step", original)
