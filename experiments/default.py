"""The embedded default run (what ``grpo-jax train`` runs with no --config): see grpo_jax/trainer/default.py."""

from grpo_jax.trainer.default import get_config

__all__ = ["get_config"]
