"""The training loop: the only stateful orchestration of a run.

Each GRPO step k (1-based):
  1. the next B prompts from the resumable PromptStream;
  2. the sampler draws G completions per prompt with key fold_in(run key, k);
  3. rewards (host), then DAPO's dynamic sampling if enabled (drop groups with equal rewards, sample more
     prompts to refill), then group advantages;
  4. pi_old: the sampler's log-probabilities when mu = 1, else recomputed once for the batch; pi_ref from
     the frozen reference when beta > 0; the sampler's vs the training forward's log-probs of the same tokens
     as rollout/logprob_diff_* (every run.logprob_diff_steps steps; every step when mu > 1, where they are free);
  5. mu passes over num_minibatches minibatches, one jitted, donated, sharded update each;
  6. metrics to OUTPUT_DIR/metrics.jsonl + TensorBoard; eval every eval_steps; checkpoint every save_steps.

A checkpoint at step k holds the TrainState after k steps and the prompt stream's position, so a resumed run
draws the same prompts and random numbers as the uninterrupted one and ends bit-identical on the same mesh.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import sampling as sampling_lib
from grpo_jax import storage
from grpo_jax.checkpoint import Checkpointer
from grpo_jax.data import Example, PromptStream
from grpo_jax.distributed import to_host
from grpo_jax.losses import group_advantages, process_advantages
from grpo_jax.metrics import MetricsWriter, plot_metrics, read_metrics, summarize
from grpo_jax.models.shared_prompt import layout_prompt_group
from grpo_jax.sampling import SamplingConfig, bucket_size
from grpo_jax.sharding import make_hybrid_mesh, make_mesh
from grpo_jax.trainer import rollout as rollout_lib
from grpo_jax.trainer.build import build_policy
from grpo_jax.trainer.config import ConfigError, GRPOConfig, TrainConfig
from grpo_jax.trainer.evaluation import SOLVED, evaluate
from grpo_jax.trainer.sft import run_sft
from grpo_jax.trainer.state import abstract_train_state, build_optimizer, create_state, state_shardings
from grpo_jax.trainer.step import compile_counts, grpo_objective, make_logprobs_fn, make_update_fn
from grpo_jax.trainer.tasks import (
    check_reward_fields, load_examples, reward_specs, step_reward_fn, train_eval_split,
)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# grpo fields that change how the sampler runs, not what it samples (the same tokens either way): a resumed
# run may change them, e.g. on other hardware
SAMPLER_RUNTIME_FIELDS = ("decode_phase_tokens", "cast_params_once", "gather_params_once", "decode_steps_per_check")


def default_output_dir(config: TrainConfig) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.name}-{stamp}")


def total_compiles() -> int:
    return sampling_lib.compile_count() + sum(compile_counts().values())


@dataclasses.dataclass
class RunContext:
    """Everything a run builds once: the policy, its tokenizer, data, rewards and sampling settings."""

    config: TrainConfig
    output_dir: str
    mesh: Any
    model: Any
    params: Any
    tokenizer: Any
    sampling: SamplingConfig
    train_examples: Sequence[Example]
    eval_examples: Sequence[Example]
    specs: list
    render: Callable[[Example], str]
    add_special_tokens: bool

    def prompt_length(self, prompt) -> int:
        """Tokens of a task prompt as the model sees it (rendered, with the suffix)."""
        text = self.render({"prompt": prompt})
        return len(self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"])

    def prompt_stream(self, *, batch_size: int, seed: int) -> PromptStream:
        """The training examples in seeded, resumable batches, with the configured prompt-length policy."""
        d = self.config.data
        return PromptStream(self.train_examples, batch_size=batch_size, seed=seed,
                            max_prompt_length=d.max_prompt_length, length_fn=self.prompt_length, overlong=d.overlong,
                            truncate_side=d.truncate_side)

    def eval_metrics(self, params, key) -> dict[str, float]:
        if not len(self.eval_examples):
            return {}
        run = self.config.run
        return evaluate(self.model, params, self.tokenizer, self.eval_examples, key, self.sampling, self.specs,
                        self.config.grpo.accuracy_reward_name,
                        prompt_texts=[self.render(e) for e in self.eval_examples],
                        add_special_tokens=self.add_special_tokens, batch_size=run.eval_batch_size,
                        num_samples=run.eval_num_samples)


def sampling_config(g: GRPOConfig, max_prompt_length: int, eos_token_ids: Sequence[int],
                    pad_token_id: int) -> SamplingConfig:
    """The sampler's settings for a run: the ``grpo`` section's sampling fields, and prompt-length buckets up
    to the one holding ``max_prompt_length`` (longer prompts are left out of the data)."""
    top = bucket_size(max_prompt_length, SamplingConfig.prompt_length_buckets)
    buckets = tuple(b for b in SamplingConfig.prompt_length_buckets if b < top) + (top,)
    return SamplingConfig(num_generations=g.num_generations, max_new_tokens=g.max_completion_length,
                          temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, eos_token_ids=tuple(eos_token_ids),
                          pad_token_id=pad_token_id, prompt_length_buckets=buckets,
                          decode_phase_tokens=g.decode_phase_tokens, cast_params_once=g.cast_params_once,
                          gather_params_once=g.gather_params_once, decode_steps_per_check=g.decode_steps_per_check)


def build_context(config: TrainConfig, output_dir: str | None = None) -> RunContext:
    """Build the run's pieces (nothing is compiled yet). Data and config errors surface here."""
    g, d = config.grpo, config.data
    if jax.process_count() > 1 and not (output_dir or config.run.output_dir):
        raise ValueError("a multi-host run needs --output-dir (run.output_dir): one path every host sees; "
                         "the default runs/<name>-<time> would differ between hosts")
    devices = jax.devices()
    if config.run.num_devices > len(devices):
        raise ValueError(f"run.num_devices={config.run.num_devices} but only {len(devices)} devices are available")
    devices = devices[: config.run.num_devices or len(devices)]
    if config.run.dcn_mesh:
        mesh = make_hybrid_mesh(config.run.mesh_axes, config.run.dcn_mesh_axes, devices=devices)
    else:
        mesh = make_mesh(config.run.mesh_axes, devices=devices)
    model, params, tokenizer, eos = build_policy(config.model, mesh, seed=config.run.seed,
                                                 extra_eos=g.extra_eos_token_ids)
    sampling = sampling_config(g, d.max_prompt_length, eos, int(tokenizer.pad_token_id))
    examples = load_examples(d)
    check_reward_fields(g, d, examples[0])
    train_examples, eval_examples = train_eval_split(d, examples)

    def render(example: Example) -> str:
        return rollout_lib.prompt_text_of(tokenizer, example, chat_template=d.chat_template,
                                          system_prompt=d.system_prompt, suffix=d.prompt_suffix)

    ctx = RunContext(config, output_dir or config.run.output_dir or default_output_dir(config), mesh, model,
                     params, tokenizer, sampling, train_examples, eval_examples, reward_specs(g), render,
                     add_special_tokens=not d.chat_template)
    # eval prompts obey the same length limit as training prompts (long ones are left out of the eval)
    kept = [e for e in eval_examples if ctx.prompt_length(e["prompt"]) <= d.max_prompt_length]
    if len(kept) < len(eval_examples):
        logger.warning("eval: left out %d of %d examples whose prompts exceed data.max_prompt_length=%d",
                       len(eval_examples) - len(kept), len(eval_examples), d.max_prompt_length)
        ctx.eval_examples = kept
    return ctx


def logprob_gap(sampler: np.ndarray, trainer: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``rollout/logprob_diff_mean`` / ``_max``: the mean and max of |sampler - trainer| over the completion
    tokens (``mask`` > 0) of [N, T] log-probabilities; both 0 when there is no token."""
    keep = np.asarray(mask) > 0
    diff = np.abs(np.asarray(sampler, np.float32) - np.asarray(trainer, np.float32))[keep]
    return {"rollout/logprob_diff_mean": float(diff.mean(dtype=np.float64)) if diff.size else 0.0,
            "rollout/logprob_diff_max": float(diff.max()) if diff.size else 0.0}


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for key in history[0]:
        values = np.array([float(h[key]) for h in history])
        out[key] = float(values.max() if key == "ratio_max" else values.min() if key == "ratio_min" else values.mean())
    return out


class GRPOTrainer:
    """Runs GRPO steps for a RunContext. ``run()`` trains to ``run.max_steps`` and returns the final metrics."""

    def __init__(self, ctx: RunContext, *, resume: bool = False):
        self.ctx = ctx
        cfg = ctx.config
        self.g = cfg.grpo
        self.step_reward = step_reward_fn(cfg.grpo)
        self.is_writer = jax.process_index() == 0
        total_updates = cfg.run.max_steps * self.g.num_iterations * self.g.num_minibatches
        self.optimizer, self.schedule = build_optimizer(cfg.optimizer, total_updates)
        self.checkpointer = Checkpointer(storage.join(ctx.output_dir, CHECKPOINT_DIR),
                                         max_to_keep=cfg.run.save_total_limit, async_save=cfg.run.async_save)
        self.stream = ctx.prompt_stream(batch_size=cfg.data.batch_size, seed=cfg.data.seed)
        self.start_step = 0
        self.resumed = False
        latest = self.checkpointer.latest_step()
        if latest is not None and not resume:
            raise FileExistsError(
                f"{ctx.output_dir} already holds checkpoints (latest step {latest}); pass --resume to continue "
                "that run or choose another --output-dir"
            )
        if resume and latest is not None:
            # the settings first: they decide the state's structure (a reference model only when beta > 0), so a
            # changed one would otherwise surface as orbax's structure error after reading the whole checkpoint
            self._check_resumable(self.checkpointer.restore_meta(latest))
            target = abstract_train_state(ctx.params, self.optimizer, ctx.mesh, with_reference=self.g.beta > 0)
            ctx.params = None  # free the fresh parameters before the restored ones arrive
            self.state, meta = self.checkpointer.restore(target, step=latest)
            self.resumed = True
            self.stream.restore(meta["data"])
            self.start_step = int(meta["step"])
            logger.info("resumed from %s at step %d", self.checkpointer.directory, self.start_step)
            if self.start_step >= cfg.run.max_steps:
                logger.warning("the run is complete: checkpoint step %d >= run.max_steps=%d; nothing to do",
                               self.start_step, cfg.run.max_steps)
            saved_steps = meta["config"]["run"]["max_steps"]
            if cfg.optimizer.lr_scheduler_type != "constant" and saved_steps != cfg.run.max_steps:
                logger.warning("run.max_steps changed from %s to %d: the %s learning-rate schedule is stretched "
                               "from here on", saved_steps, cfg.run.max_steps, cfg.optimizer.lr_scheduler_type)
        else:
            params = ctx.params
            if cfg.sft.steps:
                params = run_sft(ctx, params)
            self.state = create_state(params, self.optimizer, ctx.mesh, seed=cfg.run.seed,
                                      with_reference=self.g.beta > 0)
        ctx.params = None  # the state owns the parameters from here on (the update donates them)
        self.update = make_update_fn(
            ctx.model, self.optimizer, self.schedule, ctx.mesh, state_shardings(self.state),
            objective=grpo_objective(self.g), temperature=self.g.temperature,
            accumulation_steps=cfg.optimizer.gradient_accumulation_steps,
            token_weighted=self.g.aggregation == "token-mean", name="grpo_update",
        )
        self.logprobs = make_logprobs_fn(ctx.model, ctx.mesh, self.g.temperature,
                                         micro_batches=cfg.optimizer.gradient_accumulation_steps)
        self.metrics = MetricsWriter(ctx.output_dir, enabled=self.is_writer, tensorboard=cfg.run.tensorboard,
                                     progress=cfg.run.progress, total_steps=cfg.run.max_steps,
                                     resume_step=self.start_step if resume else None)
        if self.is_writer:
            storage.write_text(storage.join(ctx.output_dir, CONFIG_FILE), json.dumps(cfg.to_dict(), indent=2))

    def _check_resumable(self, meta: dict) -> None:
        try:  # read back through the config type: fields added since the checkpoint take their defaults
            saved = TrainConfig.from_dict(meta.get("config", {})).to_dict()
        except (ConfigError, TypeError, ValueError) as e:
            raise ValueError(f"cannot resume {self.ctx.output_dir}: the checkpoint's config does not load: {e}") from e
        now = self.ctx.config.to_dict()
        for config in (saved, now):  # how the sampler runs, not what it samples: free to change
            for name in SAMPLER_RUNTIME_FIELDS:
                config["grpo"].pop(name)
        keep_equal = ("model", "data", "grpo", "optimizer")
        changed = [s for s in keep_equal if saved[s] != now[s]]
        if changed:
            raise ValueError(
                f"cannot resume {self.ctx.output_dir}: the config's section(s) {changed} differ from the checkpoint's; "
                "an exact resume needs the same model, data, algorithm and optimizer settings"
            )

    # -- one step ---------------------------------------------------------------------------------------
    def _sample(self, key: jax.Array) -> tuple[rollout_lib.Rollout, dict[str, float]]:
        """A scored rollout of B groups (with dynamic sampling: informative groups first)."""
        ctx = self.ctx
        rounds, stats = [], {}

        def one(k):
            examples = self.stream.next_batch()
            texts = [ctx.render(e) for e in examples]
            return rollout_lib.rollout(
                ctx.model, self.state.params, ctx.tokenizer, examples, k, ctx.sampling, ctx.specs,
                prompt_texts=texts, add_special_tokens=ctx.add_special_tokens,
                overlong_buffer=self.g.overlong_buffer if self.g.overlong_penalty else None)

        key, sub = jax.random.split(key)
        rounds.append(one(sub))
        b, g = len(rounds[0].examples), self.g.num_generations
        if not self.g.dynamic_sampling:
            return rounds[0], stats
        acc = self.g.accuracy_reward_name  # DAPO filters on accuracy, not on length penalties
        keep = [(0, i) for i in np.flatnonzero(rollout_lib.informative_groups(rounds[0].per_reward[acc], g))]
        for _ in range(self.g.max_resample_rounds):
            if len(keep) >= b:
                break
            key, sub = jax.random.split(key)
            rounds.append(one(sub))
            r = len(rounds) - 1
            keep += [(r, i) for i in np.flatnonzero(rollout_lib.informative_groups(rounds[r].per_reward[acc], g))]
        informative = len(keep)
        chosen = keep[:b]
        chosen_set = set(chosen)
        filler = [(r, i) for r in range(len(rounds)) for i in range(b) if (r, i) not in chosen_set]
        chosen += filler[: b - len(chosen)]
        stats = {"dynamic/rounds": len(rounds), "dynamic/informative_groups": informative,
                 "dynamic/filled_with_zero_signal": max(b - informative, 0)}
        return rollout_lib.select_groups(rounds, sorted(chosen), self.ctx.sampling.pad_token_id), stats

    def step(self, step: int) -> dict[str, float]:
        g = self.g
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.wrap_key_data(self.state.rng), step)
        compiles_before = total_compiles()
        r, dyn_stats = self._sample(key)
        if self.step_reward is None:
            advantages = np.asarray(group_advantages(jnp.asarray(r.rewards), g.num_generations,
                                                     scale=g.scale_rewards))
        else:  # process supervision: per-token advantages from step rewards
            steps = self.step_reward(r.texts, **rollout_lib.example_columns(r.examples, g.num_generations, r.owned))
            step_rewards, step_ends = rollout_lib.step_arrays(self.ctx.tokenizer, r, steps)
            advantages = np.asarray(process_advantages(step_rewards, step_ends, r.completion_mask,
                                                       g.num_generations))
        t1 = time.perf_counter()
        batch = rollout_lib.sequence_batch(r, mask_truncated=g.mask_truncated_completions)
        batch["advantages"] = advantages
        size = len(r.tokens) // g.num_minibatches
        # rows of a group share their prompt: each minibatch's programs compute it once per run of such rows
        accumulation = self.ctx.config.optimizer.gradient_accumulation_steps
        prompt_groups = [layout_prompt_group(g.num_generations, size, accumulation, first_row=m * size)
                         for m in range(g.num_minibatches)]

        def logprobs_of(params) -> np.ndarray:  # minibatch by minibatch: no more memory than the update
            t = batch["completion_mask"].shape[1]
            return np.concatenate([to_host(self.logprobs(params, batch["input_ids"][m * size:(m + 1) * size],
                                                         batch["attention_mask"][m * size:(m + 1) * size], t,
                                                         prompt_groups[m]))
                                   for m in range(g.num_minibatches)])

        # the training forward's log-probs under the sampling params: pi_old when mu > 1, else only to measure
        # how far the sampler's (pi_old at mu = 1) are from them
        every = self.ctx.config.run.logprob_diff_steps
        measure = every > 0 and (g.num_iterations > 1 or step % every == 0)
        trainer_old = logprobs_of(self.state.params) if g.num_iterations > 1 or measure else None
        gap = logprob_gap(r.policy_logprobs, trainer_old, r.completion_mask) if measure else {}
        batch["old_logprobs"] = trainer_old if g.num_iterations > 1 else r.policy_logprobs
        if g.beta > 0:
            batch["ref_logprobs"] = logprobs_of(self.state.ref_params)
        t_logprobs = time.perf_counter() - t1
        t2 = time.perf_counter()
        history = []
        for _ in range(g.num_iterations):
            for m in range(g.num_minibatches):
                minibatch = {k: v[m * size:(m + 1) * size] for k, v in batch.items()}
                self.state, update_metrics = self.update(self.state, minibatch, prompt_groups[m])
                history.append(to_host(update_metrics))
        update = _mean_metrics(history)
        t_update = time.perf_counter() - t2
        if g.ref_model_sync_steps and step % g.ref_model_sync_steps == 0 and self.state.ref_params is not None:
            self.state = self.state.replace(ref_params=jax.tree.map(jnp.copy, self.state.params))
        lengths = r.completion_mask.sum(axis=1)
        # per completion (outcome) or per completion token (process supervision)
        adv_values = advantages if advantages.ndim == 1 else advantages[r.completion_mask > 0]
        solved = r.per_reward[g.accuracy_reward_name] >= SOLVED
        grouped = r.rewards.reshape(-1, g.num_generations)
        out = {
            "reward/mean": float(r.rewards.mean()), "reward/std": float(r.rewards.std()),
            **{f"reward/{k}/{stat}": float(getattr(v, stat)()) for k, v in r.per_reward.items()
               for stat in ("mean", "std")},
            "reward/failures": r.num_failures, "rollout/rows_scored_here": len(r.owned), "accuracy": float(solved.mean()),
            "groups/zero_signal_frac": float(np.mean(np.all(grouped == grouped[:, :1], axis=1))),
            "advantage/mean": float(adv_values.mean()), "advantage/std": float(adv_values.std()),
            "advantage/abs_mean": float(np.abs(adv_values).mean()),
            **update,
            "completion/length_mean": float(lengths.mean()), "completion/length_max": int(lengths.max()),
            "completion/truncated_frac": float(1.0 - r.finished.mean()),
            "tokens/sampled_per_s": float(lengths.sum() / max(r.sample_s, 1e-9)),
            "tokens/update_per_s": float(batch["attention_mask"].sum() * g.num_iterations / max(t_update, 1e-9)),
            "time/sample_s": r.sample_s, "time/reward_s": r.reward_s, "time/logprobs_s": t_logprobs,
            "time/update_s": t_update,
            "compile/count": total_compiles(), "compile/new": total_compiles() - compiles_before,
            "data/epoch": self.stream.epoch, "batch/prompt_length": int(r.prompt_ids.shape[1]),
            **{f"data/{kind}_prompts": count for kind, count in self.stream.stats.items()},  # so far, for length
            "batch/prompt_group": min(prompt_groups), **dyn_stats, **gap,
        }
        out["time/step_s"] = time.perf_counter() - t0
        return out

    # -- the run ----------------------------------------------------------------------------------------
    def _meta(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"step": step, "data": self.stream.state(), "config": self.ctx.config.to_dict(),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}

    def _eval(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.wrap_key_data(self.state.rng), 1_000_000_000 + step)
        out = self.ctx.eval_metrics(self.state.params, key)
        if out:
            out["time/eval_s"] = time.perf_counter() - t0
        return out

    def run(self) -> dict[str, Any]:
        run = self.ctx.config.run
        last: dict[str, Any] = {}
        try:
            if not self.resumed:
                first = self._eval(0)
                if first:
                    self.metrics.write(0, first)
                self.metrics.flush()  # as before every checkpoint: a resumed run does not evaluate step 0 again
                self.checkpointer.save(0, self.state, self._meta(0, first))
            for step in range(self.start_step + 1, run.max_steps + 1):
                last = self.step(step)
                if step == run.max_steps or (run.eval_steps and step % run.eval_steps == 0):
                    last.update(self._eval(step))
                self.metrics.write(step, last)
                if step == run.max_steps or (run.save_steps and step % run.save_steps == 0):
                    self.metrics.flush()  # the metrics up to a checkpoint are at the output dir before it
                    self.checkpointer.save(step, self.state, self._meta(step, last))
            self.checkpointer.wait_until_finished()
        finally:
            self.metrics.close()
            self.checkpointer.close()
        if self.is_writer and run.plot:
            plot_metrics(self.ctx.output_dir)
        return last


def train(config: TrainConfig, *, output_dir: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``config`` end to end; returns the last step's metrics. Writes into ``output_dir``: checkpoints/,
    metrics.jsonl, tensorboard/, curves.png, config.json (see the README)."""
    ctx = build_context(config, output_dir)
    storage.makedirs(ctx.output_dir)
    trainer = GRPOTrainer(ctx, resume=resume)
    last = trainer.run()
    if trainer.is_writer:
        logger.info("run summary:\n%s", summarize(read_metrics(ctx.output_dir)))
    return last


def load_run_config(run_dir: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The TrainConfig a run in ``run_dir`` was trained with (its config.json), with ``overrides`` applied."""
    from grpo_jax.trainer.config import apply_overrides

    path = storage.join(run_dir, CONFIG_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{run_dir!r} is not a training run directory: it has no {CONFIG_FILE}")
    return apply_overrides(TrainConfig.from_dict(json.loads(storage.read_text(path))), overrides)


def restore_params(ctx: RunContext, step: int | None = None) -> tuple[Any, int]:
    """The policy parameters of checkpoint ``step`` (default: the latest) of the run in ``ctx.output_dir``."""
    g = ctx.config.grpo
    optimizer, _ = build_optimizer(ctx.config.optimizer, 1)
    target = abstract_train_state(ctx.params, optimizer, ctx.mesh, with_reference=g.beta > 0)
    ctx.params = None
    with Checkpointer(storage.join(ctx.output_dir, CHECKPOINT_DIR), async_save=False, max_to_keep=None) as ckpt:
        state, meta = ckpt.restore(target, step=step)
    return state.params, int(meta["step"])
