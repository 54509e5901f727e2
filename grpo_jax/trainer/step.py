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
per-sequence means, by tokens for token-mean), and applies one optax update. Compiles are counted per
program (``compile_counts``).
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

from grpo_jax.distributed import global_rows
from grpo_jax.losses import grpo_loss, masked_mean, token_logprobs_from_hidden
from grpo_jax.models.shared_prompt import completion_hidden, shared_prompt_group
from grpo_jax.models.transformer import Transformer, unembedding_matrix
from grpo_jax.sharding import logical_sharding
from grpo_jax.trainer.config import GRPOConfig
from grpo_jax.trainer.state import TrainState

_COMPILES = {"logprobs": 0, "grpo_update": 0, "sft_update": 0}


def compile_counts() -> dict[str, int]:
    """How many times each training program has been traced (compiled) in this process."""
    return dict(_COMPILES)


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
    k, per = x.shape[:2]
    blocks = per // block
    return jnp.moveaxis(x.reshape(k, blocks, block, *x.shape[2:]), 0, 1).reshape(k * per, *x.shape[2:])


def make_logprobs_fn(model: Transformer, mesh: Mesh, temperature: float, micro_batches: int = 1) -> Callable:
    """jit(params, input_ids, attention_mask, completion_length[, prompt_group]) -> [M, T] log pi, rows
    sharded; computed ``micro_batches`` rows-groups at a time (as the update does), so it needs no more memory
    than a micro-batch. ``prompt_group`` as in ``make_update_fn``."""
    def program(params, input_ids, attention_mask, completion_length, prompt_group):
        _COMPILES["logprobs"] += 1

        def one(xs):
            return completion_logprobs(model, params, *xs, completion_length, temperature=temperature,
                                       prompt_group=prompt_group)

        out = jax.lax.map(one, (split_micro(input_ids, micro_batches, prompt_group),
                                split_micro(attention_mask, micro_batches, prompt_group)))
        return merge_micro(out, prompt_group)

    jitted = jax.jit(program, static_argnums=(3, 4))

    def run(params, input_ids, attention_mask, completion_length, prompt_group: int | None = None):
        group = prompt_group or prompt_group_of(input_ids, attention_mask, completion_length, micro_batches)
        ids, mask = (place_rows(x, mesh) for x in (input_ids, attention_mask))
        return jitted(params, ids, mask, completion_length, group)

    return run


# ---- objectives: (log-probabilities [N, T], micro-batch) -> (loss, metrics) ------------------------------

def grpo_objective(config: GRPOConfig) -> Callable:
    """The GRPO loss of one micro-batch with the config's options (grpo_jax.losses.grpo_loss)."""
    def objective(logp, batch):
        return grpo_loss(
            logp, batch["old_logprobs"], batch.get("ref_logprobs"), batch["advantages"], batch["completion_mask"],
            clip_eps=config.epsilon, clip_eps_high=config.epsilon_high, beta=config.beta,
            kl_estimator=config.kl_estimator, ratio_level=config.importance_sampling_level,
            aggregation=config.aggregation, max_tokens=logp.shape[1],
        )
    return objective


def sft_objective(logp, batch):
    """Negative log-likelihood per target token (token mean over the micro-batch)."""
    mask = batch["completion_mask"]
    nll = -jnp.sum(logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return nll, {"loss": nll}


def micro_batch_weights(mask: jax.Array, num_micro: int, by_tokens: bool) -> jax.Array:
    """[K] weights w_k with sum_k w_k loss_k = the loss of the whole minibatch: equal row counts give
    1 / K for per-sequence means; for a token mean each micro-batch weighs its share of the tokens."""
    if not by_tokens:
        return jnp.full((num_micro,), 1.0 / num_micro, jnp.float32)
    tokens = jnp.sum(mask.reshape(num_micro, -1), axis=1)
    return tokens / jnp.maximum(jnp.sum(tokens), 1.0)


def make_update_fn(model: Transformer, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                   mesh: Mesh, state_sharding: Any, *, objective: Callable, temperature: float,
                   accumulation_steps: int, token_weighted: bool, name: str) -> Callable:
    """jit(state, batch) -> (state, metrics): one optimizer update on a minibatch (see module docstring).

    ``batch`` is a dict of row-sharded arrays; ``metrics`` are replicated float32 scalars: the objective's
    metrics (micro-batch weighted), "entropy" (mean over loss tokens), "grad_norm" and "learning_rate".
    The state argument is donated. ``prompt_group`` g: the rows are runs of g that share a prompt (default:
    found from a host batch's data, ``prompt_group_of``); each micro-batch takes whole runs
    (``split_micro(..., block=g)``) and computes each prompt once. One program is compiled per g seen.
    """
    k = accumulation_steps

    def program(state: TrainState, batch: dict[str, jax.Array], prompt_group: int):
        _COMPILES[name] += 1
        t = batch["completion_mask"].shape[1]
        micro = jax.tree.map(lambda x: split_micro(x, k, prompt_group), batch)
        micro_masks = micro["completion_mask"]
        weights = {"loss": micro_batch_weights(micro_masks, k, token_weighted),
                   "tokens": micro_batch_weights(micro_masks, k, True),
                   "rows": micro_batch_weights(micro_masks, k, False)}

        def loss_fn(params, mb, weight):
            logp, entropy = completion_logprobs(model, params, mb["input_ids"], mb["attention_mask"], t,
                                                temperature=temperature, with_entropy=True,
                                                prompt_group=prompt_group)
            loss, metrics = objective(logp, mb)
            metrics = dict(metrics, entropy=masked_mean(jax.lax.stop_gradient(entropy), mb["completion_mask"]))
            return loss * weight, metrics

        grad_fn = jax.grad(loss_fn, has_aux=True)

        def combine(name, total, value, w):
            """Whole-minibatch value of a metric from its micro-batch values."""
            if name in ("ratio_max", "ratio_min"):  # a micro-batch without loss tokens has no ratio
                extreme = jnp.maximum(total, value) if name == "ratio_max" else jnp.minimum(total, value)
                return jnp.where(w["tokens"] > 0, extreme, total)
            per_row_advantages = name == "advantage_mean" and batch["advantages"].ndim == 1  # else a token mean
            kind = "loss" if name in ("loss", "policy_loss") else "rows" if per_row_advantages else "tokens"
            return total + w[kind] * value

        def accumulate(carry, xs):
            grads, metrics = carry
            mb, w = xs
            g, m = grad_fn(state.params, mb, w["loss"])
            grads = jax.tree.map(jnp.add, grads, g)
            metrics = {name: combine(name, metrics[name], m[name], w) for name in metrics}
            return (grads, metrics), None

        metric_shapes = jax.eval_shape(lambda: loss_fn(state.params, jax.tree.map(lambda x: x[0], micro), 1.0)[1])
        start = {"ratio_max": -jnp.inf, "ratio_min": jnp.inf}
        init = (jax.tree.map(jnp.zeros_like, state.params),
                {name: jnp.full(s.shape, start.get(name, 0.0), s.dtype) for name, s in metric_shapes.items()})
        (grads, metrics), _ = jax.lax.scan(accumulate, init, (micro, weights))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    programs: dict[int, Callable] = {}

    def jitted(group: int) -> Callable:
        if group not in programs:
            # the batch's shardings come from its committed arrays (rows over the batch axes, placed in `run`)
            programs[group] = jax.jit(functools.partial(program, prompt_group=group),
                                      in_shardings=(state_sharding, None), out_shardings=(state_sharding, replicated),
                                      donate_argnums=(0,))
        return programs[group]

    @functools.wraps(program)
    def run(state: TrainState, batch: dict[str, Any], prompt_group: int | None = None):
        group = prompt_group or prompt_group_of(batch["input_ids"], batch["attention_mask"],
                                                np.shape(batch["completion_mask"])[1], k)
        rows = {key: place_rows(value, mesh) for key, value in batch.items()}
        return jitted(group)(state, rows)

    return run
