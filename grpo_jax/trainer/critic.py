"""PPO's critic (grpo.algorithm = "ppo"): per-token values of the completion tokens, and how they are trained.

The critic is a TrainState of its own (``TrainState.critic`` of the run's state), so it is checkpointed,
restored and donated like the policy, with its own AdamW state and schedule step. Its parameters:

  value_head  {"kernel": [D] float32, "bias": [] float32}, replicated; zero at the start (values 0)
  trunk       ppo.critic = "copy": a copy of the initial policy's parameters (a second model as large as the
              policy, the usual PPO setup); absent for ppo.critic = "head", whose trunk is the policy itself,
              read under stop-gradient (its TrainState's ``frozen`` is the policy's parameters, passed in per call)

The value of completion token t is read at the hidden state that predicts it (slot P + t - 1,
grpo_jax.models.shared_prompt.completion_hidden): V_t estimates the return of the state before token t.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax.losses import value_loss
from grpo_jax.models.shared_prompt import completion_hidden
from grpo_jax.models.transformer import Transformer
from grpo_jax.trainer.config import PPOConfig, TrainConfig
from grpo_jax.trainer.reduction import Metric
from grpo_jax.trainer.state import TrainState, abstract_train_state, build_optimizer, create_state

VALUE_HEAD = "value_head"
TRUNK = "trunk"
# how value_loss's metrics combine over micro-batches (grpo_jax.trainer.reduction): all are token means
VALUE_REDUCTIONS = {"value_loss": "loss", "value_clip_frac": "tokens", "value_mean": "tokens",
                    "return_mean": "tokens", "value_error": "tokens"}


def critic_params(model: Transformer, policy_params: Any, mesh: Mesh, critic: str, *, abstract: bool = False) -> Any:
    """The critic's initial parameters: a zero value head, and for ``critic="copy"`` a copy of
    ``policy_params`` (the policy's trained parameters, on the mesh). ``abstract``: ShapeDtypeStructs with
    shardings instead (a checkpoint's restore target), nothing allocated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    size = model.config.hidden_size
    if abstract:
        def leaf(shape, sharding):
            return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
        head = {"kernel": leaf((size,), replicated), "bias": leaf((), replicated)}
        trunk = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), policy_params)
    else:
        head = {"kernel": jax.device_put(jnp.zeros((size,), jnp.float32), replicated),
                "bias": jax.device_put(jnp.zeros((), jnp.float32), replicated)}
        trunk = jax.tree.map(jnp.copy, policy_params) if critic == "copy" else None
    return {VALUE_HEAD: head} if critic == "head" else {VALUE_HEAD: head, TRUNK: trunk}


def critic_values(model: Transformer, params: Any, policy_params: Any, input_ids: jax.Array,
                  attention_mask: jax.Array, completion_length: int, prompt_group: int = 1) -> jax.Array:
    """[N, T] float32 values of a sequence batch's completion tokens (layout: grpo_jax.trainer.step).
    ``params``: the critic's; ``policy_params``: the policy's, read (without gradient) when the critic has no
    trunk of its own."""
    trunk = params[TRUNK] if TRUNK in params else jax.lax.stop_gradient(policy_params)
    hidden_NxTxD = completion_hidden(model, trunk, input_ids, attention_mask, completion_length, prompt_group)
    head = params[VALUE_HEAD]
    return jnp.einsum("ntd,d->nt", hidden_NxTxD.astype(jnp.float32), head["kernel"]) + head["bias"]


def value_forward(model: Transformer) -> Callable:
    """make_update_fn's ``forward`` for the critic: (critic state, micro-batch, T, prompt_group) -> values."""
    def forward(state, mb, completion_length, prompt_group):
        return critic_values(model, state.params, state.frozen, mb["input_ids"], mb["attention_mask"],
                             completion_length, prompt_group), {}
    return forward


def value_objective(config: PPOConfig) -> Callable:
    """The clipped value loss of one micro-batch (grpo_jax.losses.value_loss) against its ``returns``, around
    the ``old_values`` that scored it, with its metrics' reductions."""
    clip = config.value_clip or None  # 0 = unclipped

    def objective(values, batch):
        loss, metrics = value_loss(values, batch["old_values"], batch["returns"], batch["completion_mask"],
                                   value_clip=clip)
        return loss, {"loss": Metric(loss, "loss"),
                      **{name: Metric(value, VALUE_REDUCTIONS[name]) for name, value in metrics.items()}}
    return objective


def critic_optimizer(config: TrainConfig, total_updates: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The critic's AdamW and schedule: the optimizer section's, at ppo.critic_learning_rate when set."""
    rate = config.ppo.critic_learning_rate or config.optimizer.learning_rate
    return build_optimizer(dataclasses.replace(config.optimizer, learning_rate=rate), total_updates)


def run_critic(config: TrainConfig, model: Transformer, policy_params: Any, mesh: Mesh,
               optimizer: optax.GradientTransformation, *, abstract: bool = False) -> TrainState | None:
    """A PPO run's fresh critic state around the policy's trained parameters (``abstract``: its restore
    target, nothing allocated); None for the critic-free algorithms."""
    if config.grpo.algorithm != "ppo":
        return None
    params = critic_params(model, policy_params, mesh, config.ppo.critic, abstract=abstract)
    if abstract:
        return abstract_train_state(params, optimizer, mesh, with_reference=False)
    return create_state(params, optimizer, mesh, seed=config.run.seed, with_reference=False)
