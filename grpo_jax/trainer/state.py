"""TrainState (the pytree a checkpoint holds) and the optax optimizer built from OptimizerConfig.

Everything in TrainState is a jax.Array, so orbax saves it as is and the update step can take it with
explicit shardings and donate it:

  step        int32 scalar   optimizer updates applied so far
  params      pytree         the trained parameters (float32), sharded by the logical-axis rules: the whole
                             policy, or with LoRA only its adapters (grpo_jax.models.lora)
  opt_state   pytree         AdamW moments (same shardings as params) and counters
  ref_params  pytree | None  the frozen reference policy for the KL penalty (None when beta == 0, and with LoRA,
                             whose reference is the frozen base)
  rng         uint32 [2]     the run's base key data; the key of GRPO step k is fold_in(rng, k), so a resumed
                             run draws exactly the numbers the uninterrupted run would have drawn
  frozen      pytree | None  with LoRA, the base's weights (never updated, may be bfloat16); None otherwise.
                             Checkpoints leave it out: it is the model the run was built from.
  critic      TrainState | None  PPO's value model (grpo_jax.trainer.critic) with its own step, AdamW state and
                             parameters; None for the critic-free algorithms. Checkpointed with the policy.

With LoRA the policy is ``join_adapters(frozen, params)`` and the reference policy is ``frozen`` under the
model without adapters: the same arrays, so the KL penalty costs no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax.models.lora import join_adapters
from grpo_jax.trainer.config import OptimizerConfig


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ref_params: Any
    rng: jax.Array
    frozen: Any = None
    critic: Any = None

    def policy_params(self) -> Any:
        """The policy's whole parameter tree (the base joined with the adapters under LoRA; no copy)."""
        return self.params if self.frozen is None else join_adapters(self.frozen, self.params)

    def reference_params(self) -> Any:
        """The reference policy's parameters: the frozen base under LoRA, else ``ref_params``."""
        return self.ref_params if self.frozen is None else self.frozen


def checkpoint_tree(state: TrainState) -> dict[str, Any]:
    """``state`` as a checkpoint holds it: its fields by name, the frozen base left out (None: it is the model the
    run was built from), and the critic (as such a tree too) only when there is one, so that the critic-free
    algorithms' checkpoints keep the layout of those written before PPO existed, and both read back."""
    tree = {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
    tree["frozen"] = None
    if state.critic is None:
        del tree["critic"]
    else:
        tree["critic"] = checkpoint_tree(state.critic)
    return tree


def from_checkpoint_tree(tree: dict[str, Any]) -> TrainState:
    """The TrainState of a restored ``checkpoint_tree`` (frozen None: the caller joins the base again)."""
    critic = tree.get("critic")
    return TrainState(**{**tree, "critic": None if critic is None else from_checkpoint_tree(critic)})


def learning_rate_schedule(config: OptimizerConfig, total_updates: int) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_steps`` updates, then constant / cosine / linear decay to 0
    at ``total_updates``."""
    warmup = min(config.warmup_steps, max(total_updates - 1, 0))
    decay_steps = max(total_updates - warmup, 1)
    peak = config.learning_rate
    if config.lr_scheduler_type == "constant":
        after = optax.constant_schedule(peak)
    elif config.lr_scheduler_type == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps)
    else:
        after = optax.linear_schedule(peak, 0.0, decay_steps)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def build_optimizer(config: OptimizerConfig, total_updates: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping (when max_grad_norm > 0) and the schedule; returns (optimizer, schedule)."""
    schedule = learning_rate_schedule(config, total_updates)
    adamw = optax.adamw(schedule, b1=config.adam_beta1, b2=config.adam_beta2, eps=config.adam_epsilon,
                        weight_decay=config.weight_decay)
    if config.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw), schedule
    return adamw, schedule


def optimizer_state_shardings(optimizer: optax.GradientTransformation, params: Any, mesh: Mesh) -> Any:
    """Shardings for ``optimizer.init(params)``: a leaf whose key path ends with a parameter's path and has its
    shape (AdamW's mu and nu) takes that parameter's sharding; everything else (counters) is replicated."""
    by_path = {tuple(path): leaf.sharding for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    shapes = {tuple(path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def choose(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            suffix = path[start:]
            if suffix in by_path and shapes[suffix] == leaf.shape:
                return by_path[suffix]
        return replicated

    abstract = jax.eval_shape(optimizer.init, params)
    return jax.tree_util.tree_map_with_path(choose, abstract)


def create_state(params: Any, optimizer: optax.GradientTransformation, mesh: Mesh, *, seed: int,
                 with_reference: bool, frozen: Any = None, critic: TrainState | None = None) -> TrainState:
    """A fresh TrainState around ``params`` (already placed on ``mesh``): optimizer moments sharded like
    their parameters, scalars replicated, the reference a copy of params (``with_reference``; never with a
    ``frozen`` base, which is the reference itself), and PPO's ``critic`` state as given."""
    if frozen is not None and with_reference:
        raise ValueError("create_state: with a frozen base (LoRA) the reference policy is the base; "
                         "pass with_reference=False")
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = jax.jit(optimizer.init, out_shardings=optimizer_state_shardings(optimizer, params, mesh))(params)
    ref = jax.tree.map(jnp.copy, params) if with_reference else None
    rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), replicated)
    step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
    return TrainState(step=step, params=params, opt_state=opt_state, ref_params=ref, rng=rng, frozen=frozen,
                      critic=critic)


def abstract_train_state(params: Any, optimizer: optax.GradientTransformation, mesh: Mesh, *,
                         with_reference: bool, critic: TrainState | None = None) -> TrainState:
    """ShapeDtypeStructs with shardings of the TrainState ``create_state`` would build around ``params``
    (arrays or ShapeDtypeStructs with shardings), without allocating anything: the restore target of a
    checkpoint (which holds no frozen base). ``critic``: PPO's critic state, abstract too."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def spec(x, sharding):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    abstract_params = jax.tree.map(lambda x: spec(x, x.sharding), params)
    opt = jax.tree.map(spec, jax.eval_shape(optimizer.init, params), optimizer_state_shardings(optimizer, params, mesh))
    key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params=abstract_params,
                      opt_state=opt, ref_params=abstract_params if with_reference else None,
                      rng=spec(key, replicated), critic=critic)


def state_shardings(state: TrainState) -> Any:
    """The sharding of every leaf of a materialised state (for jit's in/out shardings and restore)."""
    return jax.tree.map(lambda x: x.sharding, state)
