"""grpo_jax.rewards: rule-based rewards (TRL's calling convention) and the code sandbox."""

from grpo_jax.rewards.code import code_reward, extract_code
from grpo_jax.rewards.sandbox import SandboxLimits, isolation

__all__ = ["SandboxLimits", "code_reward", "extract_code", "isolation"]
