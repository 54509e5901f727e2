"""grpo_jax.trainer: the GRPO training loop, its config, state, jitted steps and the SFT warm-up.

    from grpo_jax.trainer import TrainConfig, apply_overrides, train
    config = apply_overrides(TrainConfig(), ["max_steps=10", "grpo.beta=0"])
    last_metrics = train(config, output_dir="runs/try")

Modules: config (TrainConfig and its sections, overrides, recipe loading), state (TrainState, optimizer),
step (the jitted update / log-probability programs), reduction (how metrics combine over micro-batches and
updates), rollout (sample + score), evaluation, sft, tasks and registry (tasks and rewards by name), build
(model + tokenizer), context (RunContext: what a run builds once), loop (the orchestration), default (the
embedded run).
"""

from grpo_jax.trainer.config import (
    ConfigError,
    DataConfig,
    GRPOConfig,
    ModelSpec,
    OptimizerConfig,
    RunConfig,
    SamplingConfig,
    SFTConfig,
    TrainConfig,
    apply_overrides,
    load_config,
)
from grpo_jax.trainer.context import RunContext, build_context
from grpo_jax.trainer.loop import GRPOTrainer, load_run_config, restore_params, train
from grpo_jax.trainer.state import TrainState

__all__ = [
    "ConfigError", "DataConfig", "GRPOConfig", "ModelSpec", "OptimizerConfig", "RunConfig", "SamplingConfig",
    "SFTConfig",
    "TrainConfig", "TrainState", "GRPOTrainer", "apply_overrides", "build_context", "load_config",
    "load_run_config", "restore_params", "train", "RunContext",
]
