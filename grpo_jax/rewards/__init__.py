"""grpo_jax.rewards: rule-based rewards (TRL's calling convention) and the code sandbox.

Every reward has TRL's signature, ``fn(completions, **example_fields) -> list[float]``:

    math_reward(completions, answer=[...])      1.0 where the final answer is math-verify-equivalent to the reference
    extract_answer(text, order=...)             the final answer: "#### N", \\boxed{}, <answer></answer>, last number
    format_reward(completions, strict=True)     1.0 where the completion is <think>...</think><answer>...</answer>
    code_reward(completions, tests=[...])       fraction of tests passed; model code runs only in the sandbox
    overlong_penalty(lengths, max_length, cache_length)   DAPO's soft length penalty, in [-1, 0]
    score(specs, completions, example_fields)   weighted sum of RewardSpecs; a failing reward costs only the
                                                completions it fails on (they get the spec's default)
    arithmetic_step_rewards(completions)        process supervision: (end char, reward) per "expr = number" line

math-verify is imported on the first ``math_reward`` call.
"""

from grpo_jax.rewards.code import code_reward, extract_code
from grpo_jax.rewards.combine import RewardFailure, RewardSpec, score
from grpo_jax.rewards.format import format_reward, overlong_penalty
from grpo_jax.rewards.math import ANSWER_KINDS, extract_answer, math_reward, reference_answer
from grpo_jax.rewards.sandbox import SandboxLimits, isolation
from grpo_jax.rewards.steps import arithmetic_step_rewards

__all__ = [
    "ANSWER_KINDS",
    "RewardFailure",
    "RewardSpec",
    "SandboxLimits",
    "arithmetic_step_rewards",
    "code_reward",
    "extract_code",
    "extract_answer",
    "format_reward",
    "isolation",
    "math_reward",
    "overlong_penalty",
    "reference_answer",
    "score",
]
