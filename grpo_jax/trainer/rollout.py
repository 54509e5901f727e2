"""One rollout: prompts -> token ids -> G completions each -> text -> rewards, and the sequence batch.

Host-side glue between the pure pieces (tokenizer, ``grpo_jax.sampling.generate``, ``grpo_jax.rewards.score``,
``grpo_jax.losses.group_advantages``). Arrays here are NumPy; the jitted programs place them on the mesh.
Row layout everywhere: completion j of prompt i is row i * G + j.

Multi-host: every process holds the token arrays of the whole batch (a few MB), but decodes and rewards only
the rows it *owns* (``grpo_jax.distributed.owned_rows``: the groups whose first row its devices hold), so
decoding and rewarding (running test programs, say) are split between the hosts, never repeated; the
rewards are then summed over the hosts into the global arrays every process continues with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from grpo_jax.data import Example
from grpo_jax.distributed import max_over_hosts, owned_rows, scatter_rows, sum_over_hosts, to_host
from grpo_jax.models.tokenizer import render_prompt, token_end
from grpo_jax.rewards import RewardFailure, RewardSpec, overlong_penalty, score
from grpo_jax.rewards.combine import FLOAT32_MAX
from grpo_jax.sampling import SampleResult, SamplingConfig, bucket_size, generate
from grpo_jax.tools.config import ToolConfig
from grpo_jax.tools.multiturn import sample_with_tools

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Rollout:
    """B prompts and their B * G scored completions (NumPy arrays on the host).

    prompt_ids / prompt_mask: [B, P] int32, left-padded to a length bucket.
    tokens / completion_mask: [B*G, T] int32; policy_logprobs: [B*G, T] float32 (the sampler's log pi);
    finished: [B*G] bool (False = truncated at T);
    rewards: [B*G] float32 total; per_reward: {name: [B*G]} (all rows, assembled from every host).
    owned: the ascending row indices this process decoded and scored (every row in one process; None = all);
    texts: the decoded completions of the ``owned`` rows, in that order;
    failures: this process's reward failures (``index`` = row); num_failures: the count over all hosts.
    sample_s / reward_s: wall seconds spent sampling (incl. decoding to text) and scoring.
    With tool calls (grpo_jax.tools): completion_mask marks every token of the trajectory (attended),
    tool_mask [B*G, T] int32 the tool's tokens among them (context: no loss, no KL, not counted as length);
    tool_calls / tool_errors [B*G] int32; tool_over_budget [B*G] bool; tools_s: wall seconds running calls
    (sample_s is then the decoding alone). Without tools these are zeros.
    """

    examples: list[Example]
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray
    tokens: np.ndarray
    completion_mask: np.ndarray
    policy_logprobs: np.ndarray
    finished: np.ndarray
    texts: list[str]
    rewards: np.ndarray
    per_reward: dict[str, np.ndarray]
    failures: list[RewardFailure]
    sample_s: float = 0.0
    reward_s: float = 0.0
    owned: np.ndarray | None = None
    num_failures: int | None = None
    tool_mask: np.ndarray | None = None
    tool_calls: np.ndarray | None = None
    tool_errors: np.ndarray | None = None
    tool_over_budget: np.ndarray | None = None
    tools_s: float = 0.0

    def __post_init__(self) -> None:
        if self.owned is None:
            self.owned = np.arange(len(self.tokens))
        if self.num_failures is None:
            self.num_failures = len(self.failures)
        n = len(self.tokens)
        if self.tool_mask is None:
            self.tool_mask = np.zeros_like(self.completion_mask)
        for name, dtype in (("tool_calls", np.int32), ("tool_errors", np.int32), ("tool_over_budget", bool)):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(n, dtype))

    @property
    def model_mask(self) -> np.ndarray:
        """[B*G, T] int32: 1 on the tokens the model wrote (the actions: completion_mask without the tool's)."""
        return self.completion_mask * (1 - self.tool_mask)

    @property
    def group_size(self) -> int:
        return len(self.tokens) // len(self.examples)


def prompt_text_of(tokenizer: Any, example: Example, *, chat_template: bool, system_prompt: str | None,
                   suffix: str) -> str:
    """The text the model sees for an example (chat template applied when asked, suffix appended)."""
    prompt = example["prompt"]
    if suffix and isinstance(prompt, str):
        prompt = prompt + suffix
    return render_prompt(tokenizer, prompt, chat_template=chat_template, system=system_prompt)


def encode_prompts(tokenizer: Any, texts: Sequence[str], *, buckets: Sequence[int], pad_id: int,
                   add_special_tokens: bool) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded [B, P] ids and mask, P the length bucket of the longest prompt."""
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
    longest = max(len(ids) for ids in encoded)
    p = bucket_size(longest, buckets)
    ids = np.full((len(encoded), p), pad_id, np.int32)
    mask = np.zeros((len(encoded), p), np.int32)
    for i, row in enumerate(encoded):
        if row:
            ids[i, p - len(row):] = row
            mask[i, p - len(row):] = 1
    return ids, mask


def decode_completions(tokenizer: Any, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Completion texts of the tokens where ``mask`` [N, T] is 1 (special tokens such as EOS dropped). With a
    trajectory's model mask this is the text the model wrote, the tool's output left out."""
    return tokenizer.batch_decode([row[m > 0].tolist() for row, m in zip(tokens, mask, strict=True)],
                                  skip_special_tokens=True)


def example_columns(examples: Sequence[Example], group_size: int,
                    rows: Sequence[int] | None = None) -> dict[str, list]:
    """Reference fields as columns with one entry per completion (each example repeated G times), or per
    completion of ``rows`` only (row i * G + j belongs to example i)."""
    keys = [k for k in examples[0] if k != "prompt" and all(k in e for e in examples)]
    rows = range(len(examples) * group_size) if rows is None else rows
    return {k: [examples[row // group_size][k] for row in rows] for k in keys}


def rollout(model, params, tokenizer, examples: list[Example], key: jax.Array, sampling: SamplingConfig,
            specs: Sequence[RewardSpec], *, prompt_texts: Sequence[str], add_special_tokens: bool,
            overlong_buffer: int | None = None, tools: ToolConfig | None = None) -> Rollout:
    """Sample ``sampling.num_generations`` completions for each example and score them.

    ``overlong_buffer``: add DAPO's soft overlong penalty (max_length = max_new_tokens) to the total reward.
    ``tools``: with ``tools.max_tool_calls > 0`` the completions may call the Python tool
    (grpo_jax.tools.multiturn); the rewards read only the text the model wrote, so a tool's output can never
    be scored as an answer, and the tool's shaping rewards (``tool_errors``, ``tool_budget``) are added.
    """
    t0 = time.perf_counter()
    group_size = sampling.num_generations
    ids, mask = encode_prompts(tokenizer, prompt_texts, buckets=sampling.prompt_length_buckets,
                               pad_id=sampling.pad_token_id, add_special_tokens=add_special_tokens)
    if tools is not None and tools.enabled:
        traj = sample_with_tools(model, params, tokenizer, ids, mask, key, sampling, tools)
        tokens, cmask, plp, finished, owned = traj.tokens, traj.mask, traj.policy_logprobs, traj.finished, traj.owned
        tool_fields = dict(tool_mask=traj.tool_mask, tool_calls=traj.tool_calls, tool_errors=traj.tool_errors,
                           tool_over_budget=traj.over_budget, tools_s=traj.tools_s)
        model_mask = cmask * (1 - traj.tool_mask)
    else:
        result: SampleResult = generate(model, params, ids, mask, key, sampling)
        tokens, cmask, plp, finished = to_host((result.tokens, result.mask, result.policy_logprobs, result.finished))
        owned = owned_rows(result.tokens.sharding, len(tokens), group_size)
        tool_fields, model_mask = {}, cmask
    n = len(tokens)
    texts = decode_completions(tokenizer, tokens[owned], model_mask[owned])
    t1 = time.perf_counter()
    local_total, local_per_reward, failures = score(specs, texts, example_columns(examples, group_size, owned))
    failures = [dataclasses.replace(f, index=int(owned[f.index])) for f in failures]
    merged = sum_over_hosts({
        "total": scatter_rows(owned, local_total, n),
        "per_reward": {k: scatter_rows(owned, v, n) for k, v in local_per_reward.items()},
        "failures": np.asarray([len(failures)], np.int64),
    })
    total, per_reward = merged["total"], merged["per_reward"]
    if overlong_buffer is not None:
        # the model's own tokens; a truncated completion counts as longer than the limit
        lengths = model_mask.sum(axis=1) + (~finished)
        penalty = np.asarray(overlong_penalty(lengths.tolist(), max_length=sampling.max_new_tokens,
                                              cache_length=min(overlong_buffer, sampling.max_new_tokens)), np.float32)
        per_reward["overlong"] = penalty
        total = total + penalty
    for name, value in _tool_shaping(tools, tool_fields).items():
        per_reward[name] = value
        total = total + value
    return Rollout(list(examples), ids, mask, tokens, cmask, plp, finished, texts, total.astype(np.float32),
                   per_reward, failures, sample_s=t1 - t0 - tool_fields.get("tools_s", 0.0),
                   reward_s=time.perf_counter() - t1, owned=owned, num_failures=int(merged["failures"][0]),
                   **tool_fields)


def _tool_shaping(tools: ToolConfig | None, tool_fields: dict[str, Any]) -> dict[str, np.ndarray]:
    """The tool's shaping rewards that are on (non-zero): per completion, ``tools.error_reward`` per errored
    call (``tool_errors``) and ``tools.budget_reward`` for a call beyond the budget (``tool_budget``)."""
    if tools is None or not tools.enabled:
        return {}
    out = {}
    if tools.error_reward:
        out["tool_errors"] = (tools.error_reward * tool_fields["tool_errors"]).astype(np.float32)
    if tools.budget_reward:
        out["tool_budget"] = (tools.budget_reward * tool_fields["tool_over_budget"]).astype(np.float32)
    return out


def select_groups(rollouts: Sequence[Rollout], groups: Sequence[tuple[int, int]], pad_id: int) -> Rollout:
    """A Rollout of the chosen (rollout index, prompt index) groups, prompts re-padded (with ``pad_id``, on the
    left) to a common length."""
    group_size = rollouts[0].group_size
    p = max(r.prompt_ids.shape[1] for r in rollouts)

    def left_pad(x: np.ndarray, value: int) -> np.ndarray:
        return np.pad(x, ((0, 0), (p - x.shape[1], 0)), constant_values=value)

    prompt_rows = [(r, i) for r, i in groups]
    comp_rows = np.array([i * group_size + j for _, i in groups for j in range(group_size)])
    comp_src = [r for r, _ in groups for _ in range(group_size)]
    # the texts this process holds (of the rows it owns), by (rollout, row)
    text_of = {(r, int(row)): text
               for r, ro in enumerate(rollouts) for row, text in zip(ro.owned, ro.texts, strict=True)}
    owned = np.array([k for k, (r, row) in enumerate(zip(comp_src, comp_rows, strict=True))
                      if (r, int(row)) in text_of], int)

    def gather_rows(field: str) -> np.ndarray:
        return np.stack([getattr(rollouts[r], field)[row] for r, row in zip(comp_src, comp_rows, strict=True)])

    return Rollout(
        examples=[rollouts[r].examples[i] for r, i in prompt_rows],
        prompt_ids=np.stack([left_pad(rollouts[r].prompt_ids, pad_id)[i] for r, i in prompt_rows]),
        prompt_mask=np.stack([left_pad(rollouts[r].prompt_mask, 0)[i] for r, i in prompt_rows]),
        tokens=gather_rows("tokens"), completion_mask=gather_rows("completion_mask"),
        policy_logprobs=gather_rows("policy_logprobs"), finished=gather_rows("finished"),
        tool_mask=gather_rows("tool_mask"), tool_calls=gather_rows("tool_calls"),
        tool_errors=gather_rows("tool_errors"), tool_over_budget=gather_rows("tool_over_budget"),
        tools_s=sum(r.tools_s for r in rollouts),
        texts=[text_of[(comp_src[k], int(comp_rows[k]))] for k in owned],
        rewards=gather_rows("rewards"),
        per_reward={k: np.stack([rollouts[r].per_reward[k][row] for r, row in zip(comp_src, comp_rows, strict=True)])
                    for k in rollouts[0].per_reward},
        failures=[f for r in rollouts for f in r.failures],
        sample_s=sum(r.sample_s for r in rollouts), reward_s=sum(r.reward_s for r in rollouts),
        owned=owned, num_failures=sum(r.num_failures for r in rollouts),
    )


def informative_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """[B] bool: groups whose rewards are not all equal (DAPO's dynamic-sampling filter)."""
    r = rewards.reshape(-1, group_size)
    return ~np.all(r == r[:, :1], axis=1)


def sequence_batch(r: Rollout, *, mask_truncated: bool) -> dict[str, np.ndarray]:
    """input_ids / attention_mask [N, P + T] and completion_mask [N, T] of a rollout (see trainer.step).

    The attention mask covers every token of a completion, a tool's output included; ``completion_mask``
    (the loss's and the KL's mask) only the tokens the model wrote."""
    group_size = r.group_size
    prompt_ids = np.repeat(r.prompt_ids, group_size, axis=0)
    prompt_mask = np.repeat(r.prompt_mask, group_size, axis=0)
    loss_mask = r.model_mask.astype(np.float32)
    if mask_truncated:
        loss_mask = loss_mask * r.finished[:, None]
    return {
        "input_ids": np.concatenate([prompt_ids, r.tokens], axis=1).astype(np.int32),
        "attention_mask": np.concatenate([prompt_mask, r.completion_mask], axis=1).astype(np.int32),
        "completion_mask": loss_mask,
    }


def _step_reward(value: Any, completion: int, step: int) -> float:
    """A step reward as a float; one that is not a finite real number (NaN, Inf, beyond float32, a string) is
    that step's failure: 0 and a warning, like a failed outcome reward, so it never reaches the advantages."""
    try:
        reward = float(value)
    except (TypeError, ValueError):
        reward = math.nan
    if not abs(reward) <= FLOAT32_MAX:
        logger.warning("step reward %r of step %d of completion %d is not a finite number; using 0",
                       value, step, completion)
        return 0.0
    return reward


def step_arrays(tokenizer: Any, r: Rollout,
                steps: Sequence[Sequence[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Step rewards [N, S] and their last-token indices [N, S] (-1 = padding) for process_advantages, for all
    N rows (assembled from every host).

    ``steps[i]`` are the ``(end character, reward)`` pairs of the completion ``r.texts[i]`` (row
    ``r.owned[i]``); the completion's end is appended as a final step rewarded with its total outcome reward.
    A completion without tokens has no steps.
    """
    per_row: list[list[tuple[int, float]]] = []
    for i, row in enumerate(r.owned):
        length = int(r.completion_mask[row].sum())
        if length == 0:
            per_row.append([])
            continue
        tokens = r.tokens[row, :length].tolist()
        ends = [(token_end(tokenizer, tokens, end), _step_reward(reward, i, j))
                for j, (end, reward) in enumerate(steps[i])]
        ends.append((length - 1, float(r.rewards[row])))
        per_row.append(ends)
    s = max_over_hosts(max([1] + [len(row) for row in per_row]))
    rewards = np.zeros((len(per_row), s), np.float32)
    positions = np.full((len(per_row), s), -1, np.int32)
    for i, row in enumerate(per_row):
        for j, (end, reward) in enumerate(row):
            rewards[i, j], positions[i, j] = reward, end
    n = len(r.tokens)
    merged = sum_over_hosts({"rewards": scatter_rows(r.owned, rewards, n),
                             "ends": scatter_rows(r.owned, positions + 1, n)})  # + 1: padding -1 sums as 0
    return merged["rewards"], merged["ends"] - 1
