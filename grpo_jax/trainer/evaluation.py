"""Held-out evaluation: greedy accuracy (pass@1) and, with sampling, maj@k and pass@k.

accuracy   fraction of eval prompts whose greedy completion scores 1 on the accuracy reward
maj@k      k sampled completions per prompt; the most common extracted final answer (ties: the first seen)
           is taken as the answer, and it is right when a completion giving it scores 1
pass@k     fraction of prompts with at least one of the k sampled completions scoring 1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from grpo_jax.data import Example
from grpo_jax.distributed import scatter_rows, sum_over_hosts
from grpo_jax.rewards import RewardSpec, extract_answer, math_reward
from grpo_jax.sampling import SamplingConfig
from grpo_jax.tools.config import ToolConfig
from grpo_jax.trainer.rollout import Rollout, rollout

SOLVED = 1.0 - 1e-6  # a reward at least this large counts as solved


def _equivalent(a: str, b: str) -> bool:
    return a == b or math_reward([f"<answer>{a}</answer>"], answer=[b])[0] == 1.0


def majority_correct(texts: Sequence[str], solved: np.ndarray) -> bool:
    """Whether the most common final answer among ``texts`` is a solved one. Answers are grouped by
    math-verify equivalence ("18", "18.00" and "$18" are one vote); None answers never win; ties go to
    the answer seen first."""
    groups: list[list[int]] = []  # indices of completions giving equivalent answers, in order of first sight
    answers = [extract_answer(t) for t in texts]
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if _equivalent(answer, answers[group[0]]):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return False
    winner = max(groups, key=len)  # max keeps the first of equally long groups
    return bool(any(solved[i] for i in winner))


def evaluate(model, params, tokenizer, examples: Sequence[Example], key: jax.Array, sampling: SamplingConfig,
             specs: Sequence[RewardSpec], accuracy_reward: str, *, prompt_texts: Sequence[str],
             add_special_tokens: bool, batch_size: int, num_samples: int = 0,
             tools: ToolConfig | None = None) -> dict[str, float]:
    """Eval metrics over ``examples`` ("eval/accuracy", "eval/reward_mean", "eval/length_mean", and with
    num_samples = k > 0 also "eval/pass@k" and, unless the accuracy reward is "code" (programs have no
    final answer to vote on), "eval/maj@k"). With ``tools`` enabled the completions may call the tool, as in
    training, and "eval/tool_calls_per_completion" counts the greedy completions' calls."""
    vote = accuracy_reward != "code"
    greedy = dataclasses.replace(sampling, num_generations=1, greedy=True)
    solved, rewards, lengths, majority, any_solved, calls = [], [], [], [], [], []
    for start in range(0, len(examples), batch_size):
        batch = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
        texts = prompt_texts[start:start + len(batch)]
        key, k_greedy, k_sample = jax.random.split(key, 3)
        r: Rollout = rollout(model, params, tokenizer, batch, k_greedy, greedy, specs, prompt_texts=texts,
                             add_special_tokens=add_special_tokens, tools=tools)
        solved.append(r.per_reward[accuracy_reward] >= SOLVED)
        rewards.append(r.rewards)
        lengths.append(r.model_mask.sum(axis=1))
        calls.append(r.tool_calls)
        if num_samples:
            sampled = dataclasses.replace(sampling, num_generations=num_samples, greedy=False)
            s = rollout(model, params, tokenizer, batch, k_sample, sampled, specs, prompt_texts=texts,
                        add_special_tokens=add_special_tokens, tools=tools)
            ok = (s.per_reward[accuracy_reward] >= SOLVED).reshape(len(batch), num_samples)
            if vote:  # each host votes on the prompts whose samples it decoded (whole groups), then all gather
                prompts = s.owned[::num_samples] // num_samples
                votes = [majority_correct(s.texts[j * num_samples:(j + 1) * num_samples], ok[p])
                         for j, p in enumerate(prompts)]
                majority += sum_over_hosts(scatter_rows(prompts, np.asarray(votes, np.int32), len(batch))).tolist()
            any_solved += ok.any(axis=1).tolist()
    out: dict[str, Any] = {
        "eval/accuracy": float(np.concatenate(solved).mean()),
        "eval/reward_mean": float(np.concatenate(rewards).mean()),
        "eval/length_mean": float(np.concatenate(lengths).mean()),
        "eval/num_examples": len(examples),
    }
    if tools is not None and tools.enabled:
        out["eval/tool_calls_per_completion"] = float(np.concatenate(calls).mean())
    if num_samples and vote:
        out[f"eval/maj@{num_samples}"] = float(np.mean(majority))
    if num_samples:
        out[f"eval/pass@{num_samples}"] = float(np.mean(any_solved))
    return out
