"""From config names to objects: the task's examples and their train/eval split, the reward functions.

Names are looked up in grpo_jax.trainer.registry (TASKS, REWARDS, STEP_REWARDS), which says what each task
loads and which example fields each reward reads (``registry.describe()`` lists them), and where your own can be
registered; a reward may also be a "package.module:function" import path (``import_reward``).

The eval split is held out by a seeded hash of the prompt (``train_eval_split``, data.eval_split="prompt"), so
no eval prompt is ever trained on, even in small procedural tasks where the same prompt occurs many times.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np

from grpo_jax.data import Example
from grpo_jax.data.example import prompt_text
from grpo_jax.data.iteration import Subset, hash_unit
from grpo_jax.rewards import RewardSpec
from grpo_jax.trainer.config import ConfigError, DataConfig, GRPOConfig, is_import_path
from grpo_jax.trainer.registry import REWARDS, get_reward, get_step_reward, get_task


def load_examples(data: DataConfig) -> Sequence[Example]:
    """All examples of the configured task (before the train/eval split), by its registry entry's loader."""
    return get_task(data.task).load(data)


def train_eval_split(data: DataConfig, examples: Sequence[Example]) -> tuple[Sequence[Example], Sequence[Example]]:
    """(train, eval) by ``data.eval_split``.

    "prompt": ``data.eval_examples`` distinct prompts held out, chosen by a seeded hash of the prompt; every
    training example whose prompt equals a held-out one is removed from training too, so the eval measures
    generalisation even on small procedural tasks where the same prompt occurs many times.
    "examples": a seeded random sample of examples held out (their prompts may recur in training).
    """
    if data.eval_examples == 0:
        return examples, []
    if data.eval_split == "examples":
        if len(examples) <= data.eval_examples:
            raise ConfigError(f"data.eval_examples={data.eval_examples} leaves none of the {len(examples)} "
                              "examples for training")
        chosen = np.random.default_rng([data.seed, 0xE7A1]).permutation(len(examples))[: data.eval_examples]
        held = set(chosen.tolist())
        train_indices = [index for index in range(len(examples)) if index not in held]
        return Subset(examples, train_indices), Subset(examples, sorted(held))
    first_index: dict[str, int] = {}  # each distinct prompt -> the first example with it (the one evaluated)
    prompts = []
    for index in range(len(examples)):
        text = prompt_text(examples[index]["prompt"])
        prompts.append(text)
        first_index.setdefault(text, index)
    if len(first_index) <= data.eval_examples:
        raise ConfigError(
            f"data.eval_examples={data.eval_examples} but the task has only {len(first_index)} distinct prompts; "
            "hold out fewer so that some remain for training"
        )
    held_out = set(sorted(first_index, key=lambda prompt: hash_unit(prompt, data.seed))[: data.eval_examples])
    train = Subset(examples, [index for index, prompt in enumerate(prompts) if prompt not in held_out])
    evals = Subset(examples, sorted(first_index[prompt] for prompt in held_out))
    return train, evals


def reward_fn(name: str, grpo: GRPOConfig):
    """The reward function ``name`` stands for: a registered reward (built from ``grpo``), else the function a
    "package.module:function" path names; a ConfigError listing the registered rewards otherwise."""
    if name in REWARDS:
        return REWARDS[name].make(grpo)
    if is_import_path(name):
        return import_reward(name)
    return get_reward(name).make(grpo)  # raises: not registered


def reward_specs(grpo: GRPOConfig) -> list[RewardSpec]:
    """The configured reward functions with their weights (TRL calling convention)."""
    return [RewardSpec(reward_fn(name, grpo), weight=weight, name=name)
            for name, weight in zip(grpo.rewards, grpo.weights, strict=True)]


def import_reward(path: str):
    """The function a "package.module:function" reward names (the module must be importable)."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"grpo.rewards: cannot import module {module_name!r} of reward {path!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"grpo.rewards: {path!r}: module {module_name!r} has no function {attr!r}")
    return fn


def check_reward_fields(grpo: GRPOConfig, data: DataConfig, example: Example) -> None:
    """Raise ConfigError when a configured reward reads an example field (its registry entry's ``fields``) that
    the task's examples lack, so the mismatch is reported before training rather than by the first reward call.
    Rewards given by import path declare no fields: theirs are checked when they are called."""
    for name in grpo.rewards:
        fields = REWARDS[name].fields if name in REWARDS else ()
        missing = [field for field in fields if field not in example]
        if missing:
            raise ConfigError(
                f"grpo.rewards includes {name!r}, which reads the example field(s) {missing}, but data.task="
                f"{data.task!r} provides {sorted(key for key in example if key != 'prompt')}"
            )


def step_reward_fn(grpo: GRPOConfig):
    """The configured step reward function (process supervision), or None (outcome supervision)."""
    if grpo.step_reward is None:
        return None
    return get_step_reward(grpo.step_reward)
