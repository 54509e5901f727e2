"""Prompt sources for GRPO: examples are plain dicts ``{"prompt", <reference fields for rewards>}``.

One concern per module: ``example`` (the Example contract), ``arithmetic`` (procedural task),
``products`` (large products, for tool calls), ``jsonl`` (GSM8K / MATH files), ``tfds_source`` (GSM8K
through tensorflow-datasets, without TensorFlow), ``reasoning_gym_tasks`` (reasoning-gym generators; optional
package), ``humaneval`` (HumanEval), ``iteration`` (seeded, resumable batches, splits, the long-prompt policy).
Importing this package loads no dataset and needs no network.
"""

from grpo_jax.data.arithmetic import ArithmeticConfig, ArithmeticTask, arithmetic_example
from grpo_jax.data.example import Example, prompt_text, user_prompt, validate_example, validate_prompt
from grpo_jax.data.humaneval import humaneval_example, load_humaneval
from grpo_jax.data.iteration import PromptStream, Subset, split_train_eval
from grpo_jax.data.jsonl import (
    DataFormatError,
    gsm8k_example,
    gsm8k_final_answer,
    last_boxed,
    load_gsm8k_jsonl,
    load_math,
    math_example,
    read_jsonl,
)
from grpo_jax.data.products import ProductsTask, products_example
from grpo_jax.data.reasoning_gym_tasks import load_reasoning_gym, reasoning_gym_reward
from grpo_jax.data.tfds_source import load_gsm8k_tfds

__all__ = [
    "ArithmeticConfig", "ArithmeticTask", "arithmetic_example",
    "Example", "prompt_text", "user_prompt", "validate_example", "validate_prompt",
    "humaneval_example", "load_humaneval",
    "PromptStream", "Subset", "split_train_eval", "ProductsTask", "products_example",
    "DataFormatError", "gsm8k_example", "gsm8k_final_answer", "last_boxed", "load_gsm8k_jsonl",
    "load_math", "math_example", "read_jsonl", "load_gsm8k_tfds", "load_reasoning_gym", "reasoning_gym_reward",
]
