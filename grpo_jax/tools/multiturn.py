"""Multi-turn sampling with tool calls: B prompts -> B * G trajectories of model turns and tool outputs.

A trajectory is the completion as the trainer sees it, T = sampling.max_new_tokens tokens at most:

    [model turn 1 ... call_end][tool output][model turn 2 ... call_end][tool output][model turn 3 ... EOS]

How a batch proceeds, turn by turn:
  1. ``grpo_jax.sampling.generate`` decodes every row (G per prompt, the prompt's cache shared) until it ends:
     EOS, or ``call_end`` (a stop sequence of the sampler, so a row stops the moment it makes a call).
  2. Every process finds the calls in every row's new turn (decoding text is cheap and must agree on every
     host); each process runs the calls of the rows it owns (``owned_rows``, as rewards are split), all of a
     turn's calls at once in parallel sandboxes (grpo_jax.tools.python_tool.run_python_tools); the outputs'
     tokens are summed over the hosts, so every process appends the same tool text.
  3. The rows that made a call and have budget left continue: their context (prompt, turns so far, tool
     outputs) is prefilled as a new prompt and decoded, G = 1 per row, for at most the largest remaining
     budget among them (in a few length buckets, so compiles stay bounded). Rows that ended wait for nothing:
     they are no longer decoded. Repeat until no row makes a call or every call budget is spent.
The tokens the model sampled are kept as sampled (never re-tokenized from text); only the tool's text is
tokenized. Its tokens are context: ``tool_mask`` marks them, they get no log-probability, and the trainer
leaves them out of the loss, the KL and the length statistics while the model attends to them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from grpo_jax.distributed import owned_rows, sum_over_hosts, to_host
from grpo_jax.models.tokenizer import token_end
from grpo_jax.sampling import SamplingConfig, bucket_size, generate
from grpo_jax.tools.config import ToolConfig, find_call, render_result
from grpo_jax.tools.python_tool import ToolResult, run_python_tools

NO_CODE_OUTPUT = "Error: no code before the tool-call marker"


@dataclasses.dataclass
class Trajectories:
    """B * G sampled trajectories (NumPy, the same on every process). N = B * G rows (row i * G + j is
    completion j of prompt i), T = sampling.max_new_tokens.

    tokens: [N, T] int32, pad after the end. mask: [N, T] int32, 1 on every token of the trajectory (the
      model's and the tool's: what is attended). tool_mask: [N, T] int32, 1 on the tool's tokens (context only).
    policy_logprobs: [N, T] float32, the sampler's log pi of the model's tokens (0 on the tool's and padding).
    finished: [N] bool, ended by EOS (or by a call beyond the budget); False = ran out of the T-token budget.
    tool_calls / tool_errors: [N] int32, calls run and how many of them errored.
    over_budget: [N] bool, tried a call beyond tools.max_tool_calls.
    owned: the rows whose calls this process ran (the rows it also scores).
    decode_s / tools_s: wall seconds decoding (all turns, with the copies to the host) and running tool calls.
    turns: the decode calls made (1 = no row called the tool).
    """

    tokens: np.ndarray
    mask: np.ndarray
    tool_mask: np.ndarray
    policy_logprobs: np.ndarray
    finished: np.ndarray
    tool_calls: np.ndarray
    tool_errors: np.ndarray
    over_budget: np.ndarray
    owned: np.ndarray
    decode_s: float
    tools_s: float
    turns: int


def call_stop_sequences(tokenizer: Any, tools: ToolConfig) -> tuple[tuple[int, ...], ...]:
    """``call_end`` as the sampler's stop sequence (its tokens on their own). A BPE tokenizer may write the
    marker with other tokens inside a text; such a call is still found in the text (``find_call``), and the
    tokens after it are dropped."""
    return (tuple(tokenizer(tools.call_end, add_special_tokens=False)["input_ids"]),)


def with_call_stop(sampling: SamplingConfig, tokenizer: Any, tools: ToolConfig) -> SamplingConfig:
    """``sampling`` with ``call_end`` among its stop sequences."""
    stops = tuple(dict.fromkeys(sampling.stop_sequences + call_stop_sequences(tokenizer, tools)))
    return dataclasses.replace(sampling, stop_sequences=stops)


def _turn_budget_buckets(total: int) -> tuple[int, ...]:
    """max_new_tokens of a continuation turn: the largest remaining budget rounded up to one of these."""
    return tuple(sorted({max(1, total // 8), max(1, total // 4), max(1, total // 2), total}))


def _left_padded(rows: list[np.ndarray], buckets, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    p = bucket_size(max(len(r) for r in rows), buckets)
    ids = np.full((len(rows), p), pad_id, np.int32)
    mask = np.zeros((len(rows), p), np.int32)
    for i, row in enumerate(rows):
        ids[i, p - len(row):] = row
        mask[i, p - len(row):] = 1
    return ids, mask


def sample_with_tools(model, params, tokenizer: Any, prompt_ids: np.ndarray, prompt_mask: np.ndarray, key: jax.Array,
                      sampling: SamplingConfig, tools: ToolConfig) -> Trajectories:
    """Sample ``sampling.num_generations`` trajectories for each of the B left-padded prompts ([B, P] ids and
    mask), running their tool calls (see the module docstring). ``sampling`` gets ``call_end`` as a stop
    sequence here; greedy sampling (eval) stays greedy in every turn."""
    sampling = with_call_stop(sampling, tokenizer, tools)
    group, total = sampling.num_generations, sampling.max_new_tokens
    n = len(prompt_ids) * group
    tokens = np.full((n, total), sampling.pad_token_id, np.int32)
    mask, tool_mask = np.zeros((n, total), np.int32), np.zeros((n, total), np.int32)
    logprobs = np.zeros((n, total), np.float32)
    finished = np.zeros(n, bool)
    length, calls, errors = np.zeros(n, np.int64), np.zeros(n, np.int32), np.zeros(n, np.int32)
    over_budget = np.zeros(n, bool)
    decode_s = tools_s = 0.0

    start = time.perf_counter()
    key, turn_key = jax.random.split(key)
    result = generate(model, params, prompt_ids, prompt_mask, turn_key, sampling)
    owned = owned_rows(result.tokens.sharding, n, group)
    owned_set = set(owned.tolist())
    rows = np.arange(n)
    turn = jax.tree.map(np.asarray, to_host((result.tokens, result.mask, result.policy_logprobs, result.finished)))
    decode_s += time.perf_counter() - start
    turns = 1
    while True:
        pending: list[tuple[int, str | None]] = []  # (row, code) of this turn's calls, in row order
        for k, row in enumerate(rows):
            new_tokens, new_mask, new_logprobs, new_finished = (x[k] for x in turn)
            seg = new_tokens[:int(new_mask.sum())]
            call = find_call(tokenizer.decode(seg.tolist(), skip_special_tokens=False), tools) if len(seg) else None
            if call is not None:  # the call ends the turn: anything decoded after call_end is dropped
                seg = seg[:token_end(tokenizer, seg.tolist(), call[1], skip_special_tokens=False) + 1]
                new_finished = True
            room = total - length[row]
            kept = min(len(seg), room)
            tokens[row, length[row]:length[row] + kept] = seg[:kept]
            mask[row, length[row]:length[row] + kept] = 1
            logprobs[row, length[row]:length[row] + kept] = new_logprobs[:kept]
            length[row] += kept
            finished[row] = bool(new_finished) and kept == len(seg)
            if call is None or not finished[row]:
                continue
            if calls[row] >= tools.max_tool_calls:
                over_budget[row] = True  # the call is not run; the completion ends here
            else:
                pending.append((int(row), call[0]))
        if not pending:
            break

        start = time.perf_counter()
        mine = [(row, code) for row, code in pending if row in owned_set]
        results = _run(mine, tools)
        tool_ids = np.zeros((n, total), np.int64)
        tool_len, tool_err = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for (row, _), res in zip(mine, results, strict=True):
            ids = tokenizer(render_result(res.output, tools), add_special_tokens=False)["input_ids"][:total]
            tool_ids[row, :len(ids)], tool_len[row], tool_err[row] = ids, len(ids), int(res.error)
        shared = sum_over_hosts({"ids": tool_ids, "len": tool_len, "err": tool_err})
        tools_s += time.perf_counter() - start

        continuing = []
        for row, _ in pending:
            calls[row] += 1
            errors[row] += int(shared["err"][row])
            kept = int(min(shared["len"][row], total - length[row]))
            tokens[row, length[row]:length[row] + kept] = shared["ids"][row, :kept]
            mask[row, length[row]:length[row] + kept] = 1
            tool_mask[row, length[row]:length[row] + kept] = 1
            length[row] += kept
            finished[row] = False  # until a later turn ends it
            if length[row] < total:
                continuing.append(row)
        if not continuing:
            break

        start = time.perf_counter()
        rows = np.asarray(continuing)
        contexts = [np.concatenate([prompt_ids[row // group][prompt_mask[row // group] > 0], tokens[row, :length[row]]])
                    for row in rows]
        ids, context_mask = _left_padded(contexts, sampling.prompt_length_buckets, sampling.pad_token_id)
        budget = bucket_size(int(total - length[rows].min()), _turn_budget_buckets(total))
        follow = dataclasses.replace(sampling, num_generations=1, max_new_tokens=budget)
        key, turn_key = jax.random.split(key)
        result = generate(model, params, ids, context_mask, turn_key, follow)
        turn = jax.tree.map(np.asarray, to_host((result.tokens, result.mask, result.policy_logprobs, result.finished)))
        decode_s += time.perf_counter() - start
        turns += 1
    return Trajectories(tokens, mask, tool_mask, logprobs, finished, calls, errors, over_budget, owned,
                        decode_s, tools_s, turns)


def _run(calls: list[tuple[int, str | None]], tools: ToolConfig) -> list[ToolResult]:
    """The results of ``calls`` in order: the ones with code run in parallel sandboxes; one without code is an
    error without running anything."""
    with_code = [code for _, code in calls if code is not None]
    ran = iter(run_python_tools(with_code, timeout_s=tools.timeout_s, memory_mb=tools.memory_mb,
                                max_output_chars=tools.max_output_chars, max_workers=tools.max_workers))
    return [next(ran) if code is not None else ToolResult(NO_CODE_OUTPUT, True, False, False, 0.0)
            for _, code in calls]
