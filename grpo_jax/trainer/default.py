"""The embedded default run: ``grpo-jax train`` with no arguments.

A small Qwen2-architecture model (about 0.4M parameters, character tokenizer) is trained from scratch on
procedural two-operand arithmetic ("45 + 88 = ?", operands < 100, + and -) on one CPU: a short supervised
warm-up on reference answers teaches the answer format and some arithmetic, then GRPO with the math reward
(math-verify) raises held-out greedy accuracy. See the README for the numbers it reaches.
"""

from grpo_jax.trainer.config import (
    DataConfig, GRPOConfig, ModelSpec, OptimizerConfig, RunConfig, SFTConfig, TrainConfig,
)


def get_config() -> TrainConfig:
    return TrainConfig(
        name="default",
        model=ModelSpec(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=384, max_position_embeddings=64),
        data=DataConfig(task="arithmetic", difficulty=2, num_examples=20_000, eval_examples=256, batch_size=32,
                        max_prompt_length=16),
        grpo=GRPOConfig(num_generations=8, num_iterations=1, beta=0.0, epsilon=0.2, max_completion_length=6,
                        temperature=1.0, rewards=("math",), loss_type="dapo"),
        optimizer=OptimizerConfig(learning_rate=3e-4, lr_scheduler_type="constant", warmup_steps=5,
                                  max_grad_norm=1.0),
        sft=SFTConfig(steps=300, batch_size=64, learning_rate=2e-3),
        run=RunConfig(max_steps=150, eval_steps=25, save_steps=50, eval_batch_size=256),
    )
