"""DAPO (arXiv 2503.14476) settings on MATH-style problems: clip-higher (0.2 / 0.28), token-level loss,
dynamic sampling (groups whose rewards are all equal are dropped and refilled), soft overlong punishment,
no KL term.

  grpo-jax train --config experiments/dapo_math.py model.path=/path/to/Qwen2.5-1.5B-Instruct \\
      data.path=/path/to/math/train.jsonl
"""

from grpo_jax.trainer import DataConfig, GRPOConfig, ModelSpec, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="dapo-math",
        model=ModelSpec(path="checkpoints/Qwen2.5-1.5B-Instruct", dtype="bfloat16", remat=True),
        data=DataConfig(task="math", path="data/math/train.jsonl", eval_examples=500, batch_size=32,
                        max_prompt_length=512, chat_template=True,
                        system_prompt="Solve the problem. Put the final answer in \\boxed{}."),
        grpo=GRPOConfig(beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", dynamic_sampling=True,
                        max_resample_rounds=3, overlong_penalty=True, overlong_buffer=256, rewards=("math",),
                        num_minibatches=16),
        sampling=SamplingConfig(num_generations=16, max_new_tokens=2048),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, weight_decay=0.1, max_grad_norm=1.0),
        run=RunConfig(max_steps=500, mesh="fsdp:-1", eval_steps=50, eval_batch_size=128, save_steps=50),
    )
