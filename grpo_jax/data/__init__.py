"""Prompt sources for GRPO: examples are plain dicts ``{"prompt", <reference fields for rewards>}``.

One concern per module: ``example`` (the Example contract), ``arithmetic`` (procedural task),
``jsonl`` (GSM8K / MATH files), ``humaneval`` (HumanEval), ``iteration`` (seeded, resumable batches,
splits, the long-prompt policy). Importing this package loads no dataset and needs no network.
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

__all__ = [
    "ArithmeticConfig", "ArithmeticTask", "arithmetic_example",
    "Example", "prompt_text", "user_prompt", "validate_example", "validate_prompt",
    "humaneval_example", "load_humaneval",
    "PromptStream", "Subset", "split_train_eval",
    "DataFormatError", "gsm8k_example", "gsm8k_final_answer", "last_boxed", "load_gsm8k_jsonl",
    "load_math", "math_example", "read_jsonl",
]
