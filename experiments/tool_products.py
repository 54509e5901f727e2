"""A model learns to call a Python interpreter for products of large numbers, with GRPO, on one CPU.

Task: "48213 * 930177 = ?" with operands of 4 to 6 digits (data.task=products), answers of 7 to 12 digits:
arithmetic a 0.8M-parameter model cannot do in its head. A completion may call the tool (tools section):

    48213 * 930177 = ?<py>48213 * 930177</py><out>44846624...</out>44846624...<eos>
                      \\_______ model ______/\\____ tool _____/\\___ model ___/

The model writes the call up to "</py>", where sampling stops; the sandboxed interpreter runs the code and its
output is appended as "<out>...</out>" (context: attended, never trained on, never scored); the model then
writes the answer. The math reward reads only the model's own text.

1. A supervised warm-up on tool-use traces (sft.tool_code_field: the call, the tool's output, the answer;
   the tool's text is not trained on) teaches the call format and copying the output; half of its targets
   (sft.tool_trace_fraction) are the answer alone, so whether to call is left to GRPO.
2. GRPO (G = 8 for 16 prompts a step, the math reward) learns to call: the completions that answer directly
   score 0, so the share that call rises (0.75 -> 1.00 measured) and with it the sampled accuracy; each step
   runs its 128 completions' tool calls in parallel sandboxes.

The same budget without tools (``tools.max_tool_calls=0 sft.tool_code_field=None sft.tool_trace_fraction=1``:
the warm-up on answers alone) is the baseline; ``grpo-jax compare`` runs both side by side and writes the
README's table and curves:

    grpo-jax train --config experiments/tool_products.py --output-dir runs/tools
    grpo-jax compare --config experiments/tool_products.py --output-dir runs/tools_compare --seeds 0 \
      --variant tools= --variant no-tools=tools.max_tool_calls=0,sft.tool_code_field=None,sft.tool_trace_fraction=1
"""

from grpo_jax.models.char_tokenizer import ARITHMETIC_ALPHABET
from grpo_jax.sampling import SamplingConfig
from grpo_jax.tools import ToolConfig
from grpo_jax.trainer.config import (
    DataConfig,
    GRPOConfig,
    ModelSpec,
    OptimizerConfig,
    RunConfig,
    SFTConfig,
    TrainConfig,
)

TOOLS = ToolConfig(max_tool_calls=1, call_start="<py>", call_end="</py>", result_template="<out>{output}</out>",
                   timeout_s=5.0, max_output_chars=32)


def get_config() -> TrainConfig:
    return TrainConfig(
        name="tool-products",
        model=ModelSpec(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=384, max_position_embeddings=128,
                        alphabet=ARITHMETIC_ALPHABET + "<>/pyout"),
        data=DataConfig(task="products", num_examples=50_000, eval_examples=128, eval_split="prompt",
                        batch_size=16, max_prompt_length=24),
        grpo=GRPOConfig(num_iterations=1, beta=0.0, epsilon=0.2, rewards=("math",), loss_type="dapo"),
        sampling=SamplingConfig(num_generations=8, max_new_tokens=64, temperature=0.7),
        tools=TOOLS,
        optimizer=OptimizerConfig(learning_rate=5e-5, lr_scheduler_type="constant", warmup_steps=5,
                                  max_grad_norm=1.0),
        sft=SFTConfig(steps=400, batch_size=64, learning_rate=1e-3, tool_code_field="tool_code",
                      tool_trace_fraction=0.5),
        run=RunConfig(max_steps=40, eval_steps=10, save_steps=10, eval_batch_size=128),
    )
