"""R1-Zero-style RL from a base model: the DeepSeek-R1 prompt, format + accuracy rewards, no SFT.

The model must think inside <think>...</think> and answer inside <answer>...</answer> (format_reward,
weight 0.5); math_reward reads the <answer> tag (then "####", \\boxed{}, the last number).

  grpo-jax train --config experiments/r1_zero_gsm8k.py model.path=/path/to/Qwen2.5-0.5B \\
      data.path=/path/to/gsm8k/train.jsonl
"""

from grpo_jax.trainer import DataConfig, GRPOConfig, ModelSpec, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig

R1_SUFFIX = ("\nThink about the reasoning process first, then give the answer. Write the reasoning inside "
             "<think> </think> and the final answer inside <answer> </answer>, i.e. <think> reasoning here "
             "</think> <answer> answer here </answer>.")


def get_config() -> TrainConfig:
    return TrainConfig(
        name="r1-zero-gsm8k",
        model=ModelSpec(path="checkpoints/Qwen2.5-0.5B", dtype="bfloat16", remat=True),
        data=DataConfig(task="gsm8k_jsonl", path="data/gsm8k/train.jsonl", eval_examples=500, batch_size=32,
                        max_prompt_length=512, chat_template=False, prompt_suffix=R1_SUFFIX),
        sampling=SamplingConfig(num_generations=8, max_new_tokens=1024),
        grpo=GRPOConfig(beta=0.0, epsilon=0.2, loss_type="dr_grpo", scale_rewards="none",
                        rewards=("math", "format"), reward_weights=(1.0, 0.5),
                        accuracy_reward="math", num_minibatches=4),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, max_grad_norm=1.0,
                                  gradient_accumulation_steps=2),
        run=RunConfig(max_steps=1000, mesh="fsdp:-1", eval_steps=50, eval_batch_size=128, save_steps=50),
    )
