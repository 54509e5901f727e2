"""The embedded default run: ``grpo-jax train`` with no arguments.

A small Qwen2-architecture model (0.4M parameters, character tokenizer) is trained from scratch on
single-digit addition and subtraction ("7 - 3 = ?") on one CPU:

1. a short supervised warm-up (60 steps of 64 examples) on reference answers teaches the answer format and
   some of the facts: greedy accuracy on held-out examples reaches about a quarter;
2. GRPO (G = 8 completions for each of 64 prompts per step, mu = 4 passes, the math-verify reward, no KL)
   then raises held-out greedy accuracy to about 0.8 in 120 steps.

The eval holds out 256 examples of the task. The task has only about 155 distinct prompts, so the prompts
of held-out examples also occur in training: the eval measures accuracy on the task's distribution. On
prompts never seen in training (``data.eval_split=prompt``) a model this small does not generalise within
the run; see the README.
"""

from grpo_jax.sampling import SamplingConfig
from grpo_jax.trainer.config import (
    DataConfig,
    GRPOConfig,
    ModelSpec,
    OptimizerConfig,
    RunConfig,
    SFTConfig,
    TrainConfig,
)


def get_config() -> TrainConfig:
    return TrainConfig(
        name="default",
        model=ModelSpec(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=384, max_position_embeddings=64),
        data=DataConfig(task="arithmetic", difficulty=1, num_examples=20_000, eval_examples=256,
                        eval_split="examples", batch_size=64, max_prompt_length=16),
        grpo=GRPOConfig(num_iterations=4, beta=0.0, epsilon=0.2, rewards=("math",), loss_type="dapo"),
        sampling=SamplingConfig(num_generations=8, max_new_tokens=6, temperature=1.0),
        optimizer=OptimizerConfig(learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=5,
                                  max_grad_norm=1.0),
        sft=SFTConfig(steps=60, batch_size=64, learning_rate=1e-3),
        run=RunConfig(max_steps=120, eval_steps=20, save_steps=40, eval_batch_size=256),
    )
