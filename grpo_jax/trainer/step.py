"""The jitted programs of training: completion log-probabilities, the GRPO update and the SFT update.

A *sequence batch* lays out N rows as ``[left-padded prompt (P) | completion (T)]``:

  input_ids       [N, P + T] int32   prompt tokens then completion tokens (pad after the completion's end)
  attention_mask  [N, P + T] int32   1 on real prompt tokens and on completion tokens up to their end
  completion_mask [N, T] float32     1 on completion tokens that count in the loss
  advantages      [N] or [N, T]      float32 (GRPO only)
  old_logprobs    [N, T] float32     log pi_old, from the sampler (mu = 1) or recomputed (GRPO only)
  ref_logprobs    [N, T] float32     log pi_ref, present only when beta > 0 (GRPO only)

Rows are sharded over the mesh's batch axes (data, fsdp); parameters by the logical-axis rules. Each update
is one ``jax.jit`` with explicit in/out shardings that donates the TrainState: it splits its minibatch into
``gradient_accumulation_steps`` micro-batches, of whole prompt groups where it can (a ``lax.scan``), sums
their gradients weighted so the sum is the gradient of the whole minibatch's loss (by rows for
per-sequence means, by tokens for token-mean), and applies one optax update. The objective returns each
metric with its reduction (grpo_jax.trainer.reduction.Metric), so the update combines metrics over
micro-batches without knowing their names, and SFT shares it. Compiles are counted per program
(``compile_counts``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import compilation
from grpo_jax.distributed import global_rows
from grpo_jax.losses import grpo_loss, masked_mean, token_logprobs_from_hidden
from grpo_jax.models.shared_prompt import completion_hidden, shared_prompt_group
from grpo_jax.models.transformer import Transformer, unembedding_matrix
from grpo_jax.sharding import logical_sharding
from grpo_jax.trainer.config import GRPOConfig
from grpo_jax.trainer.nonfinite import keep_if_finite, nonfinite_code
from grpo_jax.trainer.reduction import Metric, accumulate, initial
from grpo_jax.trainer.state import TrainState

# the jitted programs' names, as compilation counts them
PROGRAMS = ("logprobs", "values", "grpo_update", "critic_update", "sft_update")


def compile_counts() -> dict[str, int]:
    """How many times each training program has been compiled in this process (grpo_jax.compilation)."""
    return {name: compilation.count(name) for name in PROGRAMS}


def completion_logprobs(model: Transformer, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
                        completion_length: int, *, temperature: float, with_entropy: bool = False,
                        prompt_group: int = 1):
    """log pi(completion token) [N, T] float32 for a sequence batch (and the entropy [N, T] with_entropy).

    The hidden state at position P + t - 1 predicts completion token t; logits are never materialised
    for the whole sequence (grpo_jax.losses.token_logprobs_from_hidden). With ``prompt_group`` g > 1, each
    run of g rows sharing a prompt computes it once (grpo_jax.models.shared_prompt).
    """
    t = completion_length
    hidden = completion_hidden(model, params, input_ids, attention_mask, t, prompt_group)
    return token_logprobs_from_hidden(
        hidden, unembedding_matrix(model.config, params), input_ids[:, -t:],
        temperature=temperature, return_entropy=with_entropy,
    )


def prompt_group_of(input_ids: Any, attention_mask: Any, completion_length: int, micro_batches: int) -> int:
    """The ``prompt_group`` a host sequence batch allows (shared_prompt_group); 1 for device arrays, whose
    rows this process may not all hold."""
    if isinstance(input_ids, jax.Array) or isinstance(attention_mask, jax.Array):
        return 1
    return shared_prompt_group(input_ids, attention_mask, completion_length, micro_batches)


def batch_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """Rows over the mesh's batch axes, the rest replicated."""
    return logical_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)


def place_rows(x: Any, mesh: Mesh) -> jax.Array:
    """``x`` with rows over the mesh's batch axes. A host array is the same global value on every process;
    each process copies only its own devices' rows (``grpo_jax.distributed.global_rows``)."""
    sharding = batch_sharding(mesh, np.shape(x))
    if isinstance(x, jax.Array):
        return jax.device_put(x, sharding)
    return global_rows(np.asarray(x), sharding)


def split_micro(x: jax.Array, k: int, block: int = 1) -> jax.Array:
    """[M, ...] -> [K, M / K, ...]: micro-batch j takes the blocks of ``block`` consecutive rows numbered j,
    K + j, 2K + j, ... So with block = 1 every device keeps an even share of each micro-batch when rows are
    sharded, and with block = a prompt group's rows a group stays whole (its prompt is computed once).
    M must be a multiple of K * block."""
    blocks = x.shape[0] // (k * block)
    return jnp.moveaxis(x.reshape(blocks, k, block, *x.shape[1:]), 1, 0).reshape(k, blocks * block, *x.shape[1:])


def merge_micro(x: jax.Array, block: int = 1) -> jax.Array:
    """The inverse of ``split_micro``: [K, M / K, ...] -> [M, ...]."""
    num_micro, per = x.shape[:2]
    blocks = per // block
    return jnp.moveaxis(x.reshape(num_micro, blocks, block, *x.shape[2:]), 0, 1).reshape(num_micro * per, *x.shape[2:])


def make_rows_fn(fn: Callable, mesh: Mesh, micro_batches: int, name: str) -> Callable:
    """jit(params, input_ids, attention_mask, completion_length[, prompt_group]) -> [M, T] float32 per-token
    values ``fn(params, input_ids, attention_mask, completion_length, prompt_group)``, rows sharded; computed
    ``micro_batches`` rows-groups at a time (as the update does), so it needs no more memory than a
    micro-batch. ``prompt_group`` as in ``make_update_fn``. ``params`` may be any pytree ``fn`` reads."""
    @compilation.named(name)
    def program(params, input_ids, attention_mask, completion_length, prompt_group):
        def one(xs):
            return fn(params, *xs, completion_length, prompt_group)

        out = jax.lax.map(one, (split_micro(input_ids, micro_batches, prompt_group),
                                split_micro(attention_mask, micro_batches, prompt_group)))
        return merge_micro(out, prompt_group)

    jitted = jax.jit(program, static_argnums=(3, 4))

    def placed(params, input_ids, attention_mask, completion_length, prompt_group):
        group = prompt_group or prompt_group_of(input_ids, attention_mask, completion_length, micro_batches)
        ids, mask = (place_rows(x, mesh) for x in (input_ids, attention_mask))
        return params, ids, mask, completion_length, group

    def run(params, input_ids, attention_mask, completion_length, prompt_group: int | None = None):
        return jitted(*placed(params, input_ids, attention_mask, completion_length, prompt_group))

    # the program for these arguments, lowered (its memory analysis: tests/test_lora_training.py)
    run.lower = lambda *args, prompt_group=None: jitted.lower(*placed(*args, prompt_group))
    return run


def make_logprobs_fn(model: Transformer, mesh: Mesh, temperature: float, micro_batches: int = 1) -> Callable:
    """jit(params, input_ids, attention_mask, completion_length[, prompt_group]) -> [M, T] log pi (make_rows_fn)."""
    def logprobs(params, input_ids, attention_mask, completion_length, prompt_group):
        return completion_logprobs(model, params, input_ids, attention_mask, completion_length,
                                   temperature=temperature, prompt_group=prompt_group)
    return make_rows_fn(logprobs, mesh, micro_batches, "logprobs")


def policy_forward(model: Transformer, temperature: float) -> Callable:
    """make_update_fn's default ``forward``: (state, micro-batch, T, prompt_group) -> (log pi [N, T] of the
    state's policy, {"entropy": its mean over loss tokens, without gradient})."""
    def forward(state, mb, completion_length, prompt_group):
        logp, entropy = completion_logprobs(model, state.policy_params(), mb["input_ids"], mb["attention_mask"],
                                            completion_length, temperature=temperature, with_entropy=True,
                                            prompt_group=prompt_group)
        entropy = masked_mean(jax.lax.stop_gradient(entropy), mb["completion_mask"])
        return logp, {"entropy": Metric(entropy, "tokens")}
    return forward


# ---- objectives: (log-probabilities [N, T], micro-batch) -> (loss, {name: Metric}) ------------------------

# How each of grpo_loss's metrics combines over micro-batches (grpo_jax.trainer.reduction): the loss terms as
# the loss is aggregated, the per-token means by tokens, the ratio's extremes by max / min.
# "advantage_mean" is decided per batch (grpo_objective).
GRPO_REDUCTIONS = {"loss": "loss", "policy_loss": "loss", "kl": "tokens", "clip_frac_low": "tokens",
                   "clip_frac_high": "tokens", "clip_frac": "tokens", "ratio_mean": "tokens", "ratio_max": "max",
                   "ratio_min": "min"}


def grpo_objective(config: GRPOConfig) -> Callable:
    """The GRPO loss of one micro-batch with the config's options (grpo_jax.losses.grpo_loss), and its metrics
    with their reductions."""
    def objective(logp, batch):
        advantages = batch["advantages"]
        loss, metrics = grpo_loss(
            logp, batch["old_logprobs"], batch.get("ref_logprobs"), advantages, batch["completion_mask"],
            clip_eps=config.epsilon, clip_eps_high=config.epsilon_high, beta=config.loss_beta,
            kl_estimator=config.kl_estimator, ratio_level=config.importance_sampling_level,
            aggregation=config.aggregation, max_tokens=logp.shape[1],
        )
        # a mean over rows for per-completion advantages [N], over loss tokens for per-token ones [N, T]
        reductions = dict(GRPO_REDUCTIONS, advantage_mean="rows" if advantages.ndim == 1 else "tokens")
        return loss, {name: Metric(value, reductions[name]) for name, value in metrics.items()}
    return objective


def sft_objective(logp, batch):
    """Negative log-likelihood per target token (token mean over the micro-batch)."""
    mask = batch["completion_mask"]
    nll = -jnp.sum(logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return nll, {"loss": Metric(nll, "loss")}


def micro_batch_weights(mask: jax.Array, num_micro: int, by_tokens: bool) -> jax.Array:
    """[K] weights w_k with sum_k w_k loss_k = the loss of the whole minibatch: equal row counts give
    1 / K for per-sequence means; for a token mean each micro-batch weighs its share of the tokens."""
    if not by_tokens:
        return jnp.full((num_micro,), 1.0 / num_micro, jnp.float32)
    tokens = jnp.sum(mask.reshape(num_micro, -1), axis=1)
    return tokens / jnp.maximum(jnp.sum(tokens), 1.0)


def make_update_fn(model: Transformer, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                   mesh: Mesh, state_sharding: Any, *, objective: Callable, temperature: float,
                   accumulation_steps: int, token_weighted: bool, name: str,
                   forward: Callable | None = None) -> Callable:
    """jit(state, batch) -> (state, metrics): one optimizer update on a minibatch (see module docstring).

    ``forward(state, micro_batch, completion_length, prompt_group) -> (outputs, {name: Metric})`` computes
    what the loss needs from the state's parameters (default ``policy_forward``: the policy's log-probs and
    entropy; PPO's critic passes its values, grpo_jax.trainer.critic). ``objective(outputs, micro_batch) ->
    (loss, {name: Metric})``. ``batch`` is a dict of row-sharded arrays;
    ``metrics`` is {name: Metric} of replicated float32 scalars, the whole minibatch's values: the objective's
    and the forward's metrics, each combined over the micro-batches as its ``reduce`` says
    (grpo_jax.trainer.reduction), plus "grad_norm" and "learning_rate" (of the update; reduce "loss", so
    their mean over updates) and "nonfinite" (grpo_jax.trainer.nonfinite's code of the first non-finite one of
    the loss, gradient norm and parameter update, 0 when all are finite; the update is then not applied: the
    returned state is the one passed in). The state argument is donated, except its ``frozen`` part (a LoRA
    run's base; the policy a PPO critic without a trunk reads), which only the forward reads: gradients and
    optimizer state cover ``state.params`` alone. ``prompt_group``: the rows are runs of that many that share
    a prompt (default: found from a host batch's data, ``prompt_group_of``); each micro-batch takes whole runs
    (``split_micro(..., block=prompt_group)``) and computes each prompt once. One program is compiled per
    prompt_group seen.
    """
    num_micro = accumulation_steps
    forward = forward or policy_forward(model, temperature)

    @compilation.named(name)
    def program(state: TrainState, frozen: Any, batch: dict[str, jax.Array], prompt_group: int):
        completion_length = batch["completion_mask"].shape[1]
        micro = jax.tree.map(lambda x: split_micro(x, num_micro, prompt_group), batch)
        micro_masks = micro["completion_mask"]
        # [K] weights per reduction name (grpo_jax.trainer.reduction); "loss" also weighs the gradients
        weights = {"loss": micro_batch_weights(micro_masks, num_micro, token_weighted),
                   "tokens": micro_batch_weights(micro_masks, num_micro, True),
                   "rows": micro_batch_weights(micro_masks, num_micro, False)}

        def loss_fn(params, mb, weight):  # params: the trained ones; the frozen base is a constant here
            outputs, forward_metrics = forward(state.replace(params=params, frozen=frozen), mb, completion_length,
                                               prompt_group)
            loss, metrics = objective(outputs, mb)
            plain = sorted(metric_name for metric_name, m in metrics.items() if not isinstance(m, Metric))
            if plain:
                raise TypeError(f"make_update_fn: the objective's metrics {plain} are not "
                                "grpo_jax.trainer.reduction.Metric (a value and how it reduces over micro-batches)")
            return loss * weight, dict(metrics, **forward_metrics)

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def add_micro_batch(carry, xs):
            grads, metrics = carry
            mb, w = xs
            micro_grads, micro_metrics = grad_fn(state.params, mb, w["loss"])
            grads = jax.tree.map(jnp.add, grads, micro_grads)
            metrics = {key: accumulate(total, micro_metrics[key], w) for key, total in metrics.items()}
            return (grads, metrics), None

        metric_shapes = jax.eval_shape(lambda: loss_fn(state.params, jax.tree.map(lambda x: x[0], micro), 1.0)[1])
        init = (jax.tree.map(jnp.zeros_like, state.params),
                {key: initial(shape) for key, shape in metric_shapes.items()})
        (grads, metrics), _ = jax.lax.scan(add_micro_batch, init, (micro, weights))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        metrics["grad_norm"] = Metric(grad_norm, "loss")
        metrics["learning_rate"] = Metric(jnp.asarray(schedule(state.step), jnp.float32), "loss")
        # an update with a NaN / Inf loss, gradient or parameter update is not applied (grpo_jax.trainer.nonfinite)
        code = nonfinite_code(metrics["loss"].value, grad_norm, updates)
        metrics["nonfinite"] = Metric(code.astype(jnp.float32), "max")
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return keep_if_finite(code, new_state, state), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    programs: dict[int, Callable] = {}
    # a LoRA run's frozen base is an argument of its own, read and never donated: the update returns it unchanged
    trained_sharding, frozen_sharding = state_sharding.replace(frozen=None), state_sharding.frozen

    def jitted(group: int) -> Callable:
        if group not in programs:
            # the batch's shardings come from its committed arrays (rows over the batch axes, placed in `run`)
            programs[group] = jax.jit(functools.partial(program, prompt_group=group),
                                      in_shardings=(trained_sharding, frozen_sharding, None),
                                      out_shardings=(trained_sharding, replicated), donate_argnums=(0,))
        return programs[group]

    @functools.wraps(program)
    def run(state: TrainState, batch: dict[str, Any], prompt_group: int | None = None):
        group = prompt_group or prompt_group_of(batch["input_ids"], batch["attention_mask"],
                                                np.shape(batch["completion_mask"])[1], num_micro)
        rows = {key: place_rows(value, mesh) for key, value in batch.items()}
        new_state, metrics = jitted(group)(state.replace(frozen=None), state.frozen, rows)
        return new_state.replace(frozen=state.frozen), metrics

    def lower(state: TrainState, batch: dict[str, Any], prompt_group: int):
        """The program for these arguments, lowered (its memory analysis: tests/test_lora_training.py)."""
        rows = {key: place_rows(value, mesh) for key, value in batch.items()}
        return jitted(prompt_group).lower(state.replace(frozen=None), state.frozen, rows)

    run.lower = lower

    return run
