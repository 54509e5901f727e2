"""GSM8K with Qwen2.5-0.5B-Instruct, DeepSeekMath's GRPO settings scaled to one accelerator host.

DeepSeekMath (arXiv 2402.03300): lr 1e-6, beta 0.04 (k3 KL to the initial policy), G 64, max length 1024,
mu 1. Here G is 16 and 16 prompts per step (256 completions) to fit one 8-chip host; raise
sampling.num_generations on bigger slices. Needs the model and the data on local disk:

  grpo-jax train --config experiments/gsm8k_qwen2p5_0p5b.py model.path=/path/to/Qwen2.5-0.5B-Instruct \\
      data.path=/path/to/gsm8k/train.jsonl
"""

from grpo_jax.trainer import DataConfig, GRPOConfig, ModelSpec, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig

SYSTEM_PROMPT = ("Solve the math problem step by step. Put the final answer, a number only, after '####' "
                 "on the last line.")


def get_config() -> TrainConfig:
    return TrainConfig(
        name="gsm8k-qwen2.5-0.5b",
        model=ModelSpec(path="checkpoints/Qwen2.5-0.5B-Instruct", dtype="bfloat16", remat=True),
        data=DataConfig(task="gsm8k_jsonl", path="data/gsm8k/train.jsonl", eval_examples=500, batch_size=16,
                        max_prompt_length=512, chat_template=True, system_prompt=SYSTEM_PROMPT),
        grpo=GRPOConfig(num_iterations=1, beta=0.04, kl_estimator="k3", epsilon=0.2, loss_type="grpo",
                        rewards=("math",), num_minibatches=4),
        sampling=SamplingConfig(num_generations=16, max_new_tokens=1024, temperature=1.0),
        optimizer=OptimizerConfig(learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=10,
                                  weight_decay=0.0, max_grad_norm=1.0, gradient_accumulation_steps=4),
        run=RunConfig(max_steps=500, mesh="fsdp:-1", eval_steps=50, eval_batch_size=128, save_steps=50,
                      eval_num_samples=8),
    )
