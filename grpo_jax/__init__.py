"""grpo_jax: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) in JAX.

Subpackages are imported on demand so that ``import grpo_jax.losses`` pulls in nothing but JAX.
"""

__version__ = "0.1.0"
