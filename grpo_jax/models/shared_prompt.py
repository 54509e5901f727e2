"""Completion hidden states with each prompt run once for the completions that share it.

A GRPO batch holds G completions per prompt; a plain forward over ``[prompt | completion]`` rows computes
every prompt token's layers G times. ``completion_hidden`` runs the prompt tokens once per run of
``prompt_group`` rows that share them (writing their keys/values into a KV cache), and runs only the
completion tokens, which attend that cache as a shared prefix (``Transformer(prefix=...)``; with many
queries per row, each layer's attention copies the prefix to the rows, which is faster on the CPU than a
separate matmul for it: ``grpo_jax.models.attention``, docs/benchmarks.md). Values equal the plain
forward's (same masks, same rotary positions; only the order of float sums may differ), and gradients flow
into the shared prompt pass from all of its rows' completion tokens.

The cost falls by ``(prompt_group - 1) / prompt_group`` of the prompt tokens' share: with 32-token
prompts, 128-token completions and prompt_group = 8, 17.5% fewer token-layer FLOPs in the reference pass
and the update.

Shapes: N rows, P prompt slots (left-padded), T completion slots, D hidden, R = N // prompt_group runs of
rows that share a prompt.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.models.model import positions_from_mask
from grpo_jax.models.transformer import Transformer, init_cache


def completion_hidden(model: Transformer, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
                      completion_length: int, prompt_group: int = 1) -> jax.Array:
    """[N, T, D] final-norm hidden states at slots P - 1 ... P + T - 2: row i's t-th predicts its
    completion token t (compute dtype).

    Args:
      input_ids, attention_mask: [N, P + T] sequence batch (grpo_jax.trainer.step's layout).
      completion_length: T (static).
      prompt_group: static; each run of rows ``i * prompt_group ... (i + 1) * prompt_group - 1`` must hold
        the same prompt ids and prompt mask in their first P slots (``shared_prompt_group`` finds it). 1 runs
        one plain forward.
    """
    n, total = input_ids.shape
    t = completion_length
    p = total - t
    if prompt_group < 1 or n % prompt_group:
        raise ValueError(f"prompt_group={prompt_group} must be a positive divisor of the {n} rows")
    if p < 1 or t < 1:
        raise ValueError(f"need at least one prompt and one completion slot; got {total} slots for a "
                         f"{t}-token completion")
    positions = positions_from_mask(attention_mask)
    if prompt_group == 1:
        hidden, _ = model.apply({"params": params}, input_ids, positions, attention_mask, return_hidden=True)
        return hidden[:, p - 1:-1]
    shared = slice(None, None, prompt_group)  # one row of each run: they are all the same in the prompt slots
    prompt_mask_RxP = attention_mask[shared, :p]
    prompt_hidden_RxPxD, prompt_cache = model.apply(
        {"params": params}, input_ids[shared, :p], positions[shared, :p], prompt_mask_RxP,
        init_cache(model.config, n // prompt_group, p), 0, return_hidden=True)
    # the completion tokens attend the prompt's keys and values as a shared prefix
    hidden_NxTxD, _ = model.apply({"params": params}, input_ids[:, p:], positions[:, p:], attention_mask[:, p:],
                                  return_hidden=True, prefix=prompt_cache, prefix_mask=prompt_mask_RxP)
    last_prompt_Nx1xD = jnp.repeat(prompt_hidden_RxPxD[:, -1:], prompt_group, axis=0)
    return jnp.concatenate([last_prompt_Nx1xD, hidden_NxTxD[:, :-1]], axis=1)


def shared_prompt_group(input_ids: np.ndarray, attention_mask: np.ndarray, completion_length: int,
                        micro_batches: int = 1) -> int:
    """The ``prompt_group`` these host rows [N, P + T] allow, found from their data: the longest run length
    such that the rows are runs of that many with the same prompt ids and prompt mask, and the runs split
    evenly into the micro-batches (``runs_of_equal_rows``). 1 when nothing is shared."""
    p = np.shape(input_ids)[1] - completion_length
    if p < 1:
        return 1
    keys = np.concatenate([np.asarray(input_ids)[:, :p], np.asarray(attention_mask)[:, :p]], axis=1)
    return runs_of_equal_rows(keys, micro_batches)


def layout_prompt_group(group_size: int, rows: int, micro_batches: int = 1, first_row: int = 0) -> int:
    """The ``prompt_group`` of rows ``first_row ... first_row + rows - 1`` of a batch laid out as GRPO's
    groups (row r holds a completion of prompt r // group_size), from the layout alone: the same for
    every batch, so it never causes a recompile."""
    return runs_of_equal_rows((first_row + np.arange(rows)) // group_size, micro_batches)


def runs_of_equal_rows(keys: np.ndarray, micro_batches: int = 1) -> int:
    """The largest run length r such that ``keys`` [N, ...] is a sequence of runs of r equal rows (a run may
    equal the next) and N is a multiple of ``micro_batches * r``, so that ``grpo_jax.trainer.step.split_micro``
    into ``micro_batches`` parts with ``block=r`` gives each micro-batch whole runs. 1 when no larger r
    qualifies.
    """
    keys = np.asarray(keys).reshape(len(keys), -1)
    n = keys.shape[0]
    differs = np.any(keys[1:] != keys[:-1], axis=1)  # [N - 1]: row i + 1 differs from row i
    ends = np.flatnonzero(differs) + 1  # a run must end at each of these
    for run_length in range(n // micro_batches, 1, -1):
        if n % (micro_batches * run_length) == 0 and np.all(ends % run_length == 0):
            return run_length
    return 1
