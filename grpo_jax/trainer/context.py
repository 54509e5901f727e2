"""RunContext: what a run builds once from its TrainConfig, before anything is compiled.

The mesh, the model, its tokenizer and stop tokens, the sampler's settings, the task's train and eval
examples and the reward functions. A RunContext is immutable: variants (other examples, rewards or
sampler settings, as the benchmarks and tests use) are made with ``dataclasses.replace``. The policy's
initial parameters are returned beside it, not held in it, so that whoever trains them owns them: the
trainer donates them to its state, or frees them before a checkpoint's parameters are restored.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
from jax.sharding import Mesh

from grpo_jax.data import DataFormatError, Example, PromptStream, prompt_text
from grpo_jax.data.jsonl import read_records
from grpo_jax.errors import ConfigError
from grpo_jax.models.transformer import Transformer
from grpo_jax.rewards import RewardSpec
from grpo_jax.sampling import SamplingConfig, bucket_size
from grpo_jax.sharding import make_hybrid_mesh, make_mesh
from grpo_jax.trainer import rollout as rollout_lib
from grpo_jax.trainer.build import build_policy
from grpo_jax.trainer.config import DataConfig, TrainConfig
from grpo_jax.trainer.evaluation import evaluate
from grpo_jax.trainer.tasks import check_reward_fields, load_examples, reward_specs, train_eval_split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Everything a run builds once (see the module docstring).

    config: the run's TrainConfig. output_dir: where its checkpoints, metrics and plots go.
    mesh: the device mesh. model: the policy's module (its parameters travel separately).
    tokenizer: the model's tokenizer, padding on the left.
    sampling: the sampler's settings: ``config.sampling`` completed with the stop and pad tokens
      (``run_sampling_config``).
    train_examples / eval_examples: the task's examples after the train/eval split; eval examples whose
      prompts exceed ``data.max_prompt_length`` are left out, as training leaves such prompts out.
    specs: the reward functions with their weights. render: an example -> the prompt text the model sees.
    add_special_tokens: whether prompts are tokenized with the tokenizer's special tokens (not when the chat
      template already wrote them).
    """

    config: TrainConfig
    output_dir: str
    mesh: Mesh
    model: Transformer
    tokenizer: PreTrainedTokenizerBase
    sampling: SamplingConfig
    train_examples: Sequence[Example]
    eval_examples: Sequence[Example]
    specs: tuple[RewardSpec, ...]
    render: Callable[[Example], str]
    add_special_tokens: bool

    def prompt_length(self, prompt) -> int:
        """Tokens of a task prompt as the model sees it (rendered, with the suffix)."""
        return _prompt_length(self.tokenizer, self.render, self.add_special_tokens, prompt)

    def prompt_stream(self, *, batch_size: int, seed: int) -> PromptStream:
        """The training examples in seeded, resumable batches, with the configured prompt-length policy."""
        data = self.config.data
        return PromptStream(self.train_examples, batch_size=batch_size, seed=seed,
                            max_prompt_length=data.max_prompt_length, length_fn=self.prompt_length,
                            overlong=data.overlong, truncate_side=data.truncate_side)

    def eval_metrics(self, params: Any, key: jax.Array) -> dict[str, float]:
        """eval/* metrics of ``params`` on the eval examples (empty without eval examples)."""
        if not len(self.eval_examples):
            return {}
        run = self.config.run
        return evaluate(self.model, params, self.tokenizer, self.eval_examples, key, self.sampling, list(self.specs),
                        self.config.grpo.accuracy_reward_name,
                        prompt_texts=[self.render(e) for e in self.eval_examples],
                        add_special_tokens=self.add_special_tokens, batch_size=run.eval_batch_size,
                        num_samples=run.eval_num_samples, tools=self.config.tools)


def _prompt_length(tokenizer: Any, render: Callable[[Example], str], add_special_tokens: bool, prompt) -> int:
    text = render({"prompt": prompt})
    return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _location(data: DataConfig, index: int, num_examples: int) -> str:
    """Where example ``index`` of the task's ``num_examples`` came from: "FILE, line N" when the task read one
    record per example from the file at data.path (read again, only for this message), else its index."""
    if data.path and os.path.isfile(data.path):
        try:
            locations = [where for where, _ in read_records(data.path)]
        except ConfigError:
            locations = []
        if len(locations) == num_examples:
            return locations[index]
        return f"{data.path}, example {index}"
    return f"data.task={data.task!r}, example {index}"


def check_prompt_lengths(data: DataConfig, examples: Sequence[Example], length: Callable[[Any], int]) -> None:
    """data.overlong="error": DataFormatError naming the first example whose prompt is longer than
    data.max_prompt_length tokens (``length(prompt)``: as the model sees it), its file and line, and the limit.
    Checked for all examples when the data is loaded, so that a short run does not pass with one in the file."""
    limit = data.max_prompt_length
    for index, example in enumerate(examples):
        tokens = length(example["prompt"])
        if tokens > limit:
            raise DataFormatError(
                f"{_location(data, index, len(examples))}: the prompt is {tokens} tokens, longer than "
                f"data.max_prompt_length={limit} (data.overlong=error): {prompt_text(example['prompt'])[:60]!r}...; "
                "raise data.max_prompt_length, or set data.overlong=drop or truncate")


def default_output_dir(config: TrainConfig) -> str:
    """runs/<name>-<local time>: a fresh directory per run started without --output-dir."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.name}-{stamp}")


def run_sampling_config(sampling: SamplingConfig, max_prompt_length: int, eos_token_ids: Sequence[int],
                        pad_token_id: int) -> SamplingConfig:
    """The sampler's settings for a run: the config's ``sampling`` section with the run's stop tokens (the
    tokenizer's and model's ``eos_token_ids``, which already include the section's extra ones), the
    tokenizer's pad token, and the prompt-length buckets up to the one holding ``max_prompt_length`` (longer
    prompts are left out of the data, so larger buckets are never used)."""
    top = bucket_size(max_prompt_length, sampling.prompt_length_buckets)
    buckets = tuple(b for b in sampling.prompt_length_buckets if b < top) + (top,)
    return dataclasses.replace(sampling, eos_token_ids=tuple(eos_token_ids), pad_token_id=pad_token_id,
                               prompt_length_buckets=buckets)


def build_mesh(config: TrainConfig) -> Mesh:
    """The run's device mesh: ``run.mesh`` over the first ``run.num_devices`` devices (across slices with
    ``run.dcn_mesh``)."""
    run = config.run
    devices = jax.devices()
    if run.num_devices > len(devices):
        raise ConfigError(f"run.num_devices={run.num_devices} but only {len(devices)} devices are available")
    devices = devices[: run.num_devices or len(devices)]
    try:
        if run.dcn_mesh:
            return make_hybrid_mesh(run.mesh_axes, run.dcn_mesh_axes, devices=devices)
        return make_mesh(run.mesh_axes, devices=devices)
    except ValueError as e:  # a shape the devices do not fit
        where = f"run.mesh={run.mesh!r}" + (f", run.dcn_mesh={run.dcn_mesh!r}" if run.dcn_mesh else "")
        raise ConfigError(f"{where}: {e}") from e


def build_context(config: TrainConfig, output_dir: str | None = None) -> tuple[RunContext, Any]:
    """(the run's RunContext, the policy's initial parameters placed on its mesh). Nothing is compiled yet;
    config and data errors surface here, as ConfigError."""
    data = config.data
    if jax.process_count() > 1 and not (output_dir or config.run.output_dir):
        raise ConfigError("a multi-host run needs --output-dir (run.output_dir): one path every host sees; "
                          "the default runs/<name>-<time> would differ between hosts")
    mesh = build_mesh(config)
    model, params, tokenizer, eos_token_ids = build_policy(config.model, mesh, seed=config.run.seed,
                                                           extra_eos=config.sampling.eos_token_ids)
    sampling = run_sampling_config(config.sampling, data.max_prompt_length, eos_token_ids,
                                   int(tokenizer.pad_token_id))
    examples = load_examples(data)
    if not len(examples):
        raise DataFormatError(f"data.task={data.task!r} has no examples" + (f" in {data.path}" if data.path else ""))
    check_reward_fields(config.grpo, data, examples[0])

    def render(example: Example) -> str:
        return rollout_lib.prompt_text_of(tokenizer, example, chat_template=data.chat_template,
                                          system_prompt=data.system_prompt, suffix=data.prompt_suffix)

    add_special_tokens = not data.chat_template
    if data.overlong == "error":  # every prompt, now: not only those a run happens to sample
        check_prompt_lengths(data, examples, lambda p: _prompt_length(tokenizer, render, add_special_tokens, p))
    train_examples, eval_examples = train_eval_split(data, examples)
    # eval prompts obey the same length limit as training prompts (long ones are left out of the eval)
    kept = [e for e in eval_examples
            if _prompt_length(tokenizer, render, add_special_tokens, e["prompt"]) <= data.max_prompt_length]
    if len(kept) < len(eval_examples):
        logger.warning("eval: left out %d of %d examples whose prompts exceed data.max_prompt_length=%d",
                       len(eval_examples) - len(kept), len(eval_examples), data.max_prompt_length)
        eval_examples = kept
    ctx = RunContext(config=config, output_dir=output_dir or config.run.output_dir or default_output_dir(config),
                     mesh=mesh, model=model, tokenizer=tokenizer, sampling=sampling, train_examples=train_examples,
                     eval_examples=eval_examples, specs=tuple(reward_specs(config.grpo)), render=render,
                     add_special_tokens=add_special_tokens)
    return ctx, params
