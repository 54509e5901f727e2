"""The training loop: the only stateful orchestration of a run.

Each GRPO step k (1-based) is a pipeline of named stages (``GRPOTrainer.step``):
  1. sample: the next B prompts from the resumable PromptStream; the sampler draws G completions per prompt
     with key fold_in(run key, k) (``_sample``);
  2. score: rewards on the host, then DAPO's dynamic sampling if enabled (drop groups with equal rewards,
     sample more prompts to refill) (``_sample``);
  3. advantages: per completion by grpo.algorithm (group-normalised, leave-one-out or batch-normalised
     rewards), or per token from step rewards (``_advantages``); PPO's and those with the KL penalty in the
     reward come after stage 4 (grpo_jax.trainer.advantages);
  4. the batch goes to the mesh once, split into minibatches (``_minibatches``); pi_old and pi_ref are
     computed there and stay there (``_add_logprobs``): pi_old is the sampler's log-probabilities when mu = 1,
     else recomputed once for the batch; pi_ref comes from the frozen reference when beta > 0; every
     run.logprob_diff_steps steps (every step when mu > 1, where they are free) the sampler's and the training
     forward's log-probs of the same tokens are compared (rollout/logprob_diff_*); with PPO the critic's values
     of the batch, then GAE gives the per-token advantages and returns (``_token_advantages``);
  5. update: mu passes over num_minibatches minibatches, one jitted, donated, sharded update each, dispatched
     without waiting for the device (``_update``); with PPO each pass first updates the critic on every
     minibatch (the policy not during ppo.critic_warmup_steps);
  6. metrics: the host's rollout statistics are computed while the device runs the updates; the device's
     metrics are fetched once, at the end of the step (``step``). An update whose loss, gradient
     norm or parameter update is not finite was not applied (grpo_jax.trainer.nonfinite); the step then stops
     the run before its checkpoint (run.on_nonfinite=stop), or counts it in ``nonfinite/skipped_updates``.
     The loop then writes the metrics to OUTPUT_DIR/metrics.jsonl + TensorBoard, evaluates every eval_steps
     and checkpoints every save_steps.

A checkpoint at step k holds the TrainState after k steps and the prompt stream's position, so a resumed run
draws the same prompts and random numbers as the uninterrupted one and ends bit-identical on the same mesh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import run_lock, storage
from grpo_jax import sampling as sampling_lib
from grpo_jax.checkpoint import Checkpointer
from grpo_jax.distributed import to_host
from grpo_jax.errors import CheckpointDamagedError, ConfigError, NonFiniteError, OutputExistsError
from grpo_jax.losses import process_advantages
from grpo_jax.metrics import MetricsWriter, plot_metrics, read_metrics, summarize
from grpo_jax.models.lora import count_params
from grpo_jax.models.model import without_adapters
from grpo_jax.models.shared_prompt import layout_prompt_group
from grpo_jax.trainer import advantages as advantages_lib
from grpo_jax.trainer import rollout as rollout_lib
from grpo_jax.trainer.config import TrainConfig, apply_overrides
from grpo_jax.trainer.context import RunContext, build_context
from grpo_jax.trainer.critic import critic_optimizer, critic_values, run_critic, value_forward, value_objective
from grpo_jax.trainer.evaluation import SOLVED
from grpo_jax.trainer.lora import base_pointer, check_base, fingerprint, sampling_policy, split_trained
from grpo_jax.trainer.nonfinite import NonFiniteGuard
from grpo_jax.trainer.reduction import mean_over_updates
from grpo_jax.trainer.sft import run_sft
from grpo_jax.trainer.state import (
    abstract_train_state,
    build_optimizer,
    checkpoint_tree,
    create_state,
    from_checkpoint_tree,
    state_shardings,
)
from grpo_jax.trainer.step import (
    compile_counts,
    grpo_objective,
    make_logprobs_fn,
    make_rows_fn,
    make_update_fn,
    place_rows,
)
from grpo_jax.trainer.tasks import step_reward_fn

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# the sections an exact resume needs unchanged (of ``sampling``, all but its SAME_TOKENS fields)
RESUME_SECTIONS = ("model", "data", "grpo", "ppo", "sampling", "tools", "optimizer")


def total_compiles() -> int:
    """Programs compiled so far in this process: the sampler's and the training programs'."""
    return sampling_lib.compile_count() + sum(compile_counts().values())


@jax.jit
def logprob_gap_sums(sampler_NxT: jax.Array, trainer_NxT: jax.Array, mask_NxT: jax.Array) -> jax.Array:
    """[3] float32: the sum of |sampler - trainer| over the completion tokens (``mask`` > 0) of [N, T]
    log-probabilities, the number of those tokens, and their maximum (0 without tokens). Sums of minibatches
    add up to the batch's; ``logprob_gap`` turns them into the metrics."""
    keep = mask_NxT > 0
    diff = jnp.where(keep, jnp.abs(sampler_NxT.astype(jnp.float32) - trainer_NxT.astype(jnp.float32)), 0.0)
    return jnp.stack([jnp.sum(diff), jnp.sum(keep).astype(jnp.float32), jnp.max(diff, initial=0.0)])


def logprob_gap(sums: Sequence[Any]) -> dict[str, float]:
    """``rollout/logprob_diff_mean`` / ``_max`` from the ``logprob_gap_sums`` of one or more minibatches
    (host or device arrays); both 0 when there is no completion token."""
    total = np.sum([np.asarray(s, np.float64) for s in sums], axis=0)
    largest = max(float(np.asarray(s)[2]) for s in sums)
    return {"rollout/logprob_diff_mean": float(total[0] / total[1]) if total[1] else 0.0,
            "rollout/logprob_diff_max": largest}


@dataclasses.dataclass
class Minibatch:
    """One optimizer update's share of a step's sequence batch, on the mesh (rows over its batch axes).

    arrays: input_ids / attention_mask [M, P + T], completion_mask [M, T], advantages [M] or [M, T],
      old_logprobs [M, T] and, when beta > 0, ref_logprobs [M, T] (see grpo_jax.trainer.step); with PPO the
      critic's old_values [M, T] and the GAE returns [M, T].
    rows: the minibatch's rows of the step's batch.
    prompt_group: the runs of rows that share a prompt, computed once per run (make_update_fn).
    sampler_logprobs: the sampler's log-probs [M, T] when they are compared with the training forward's.
    """

    arrays: dict[str, jax.Array]
    rows: slice
    prompt_group: int
    sampler_logprobs: jax.Array | None = None


class GRPOTrainer:
    """Runs GRPO steps for a RunContext. ``run()`` trains to ``run.max_steps`` and returns the final metrics.

    ``params`` are the policy's initial parameters (``build_context``'s); the trainer takes them over: they
    become its state's (a fresh run; the update donates them), or are freed before a checkpoint's parameters
    are restored (``resume``), so the caller must not use them afterwards.

    The trainer holds the run directory's lock (grpo_jax.run_lock) from construction until ``run()`` ends:
    a second trainer of the same directory is refused before it reads or writes anything there.
    """

    def __init__(self, ctx: RunContext, params: Any, *, resume: bool = False):
        # before anything is read from or written to the run directory: one live run per directory
        self.lock = run_lock.acquire(ctx.output_dir)
        try:
            self._setup(ctx, params, resume)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, ctx: RunContext, params: Any, resume: bool) -> None:
        self.ctx = ctx
        config = ctx.config
        self.grpo = config.grpo
        self.group_size = ctx.sampling.num_generations
        self.step_reward = step_reward_fn(config.grpo)
        self.is_writer = jax.process_index() == 0
        total_updates = config.run.max_steps * self.grpo.num_iterations * self.grpo.num_minibatches
        self.optimizer, self.schedule = build_optimizer(config.trained_optimizer, total_updates)
        self.ppo = config.ppo if self.grpo.algorithm == "ppo" else None
        self.critic_optimizer, self.critic_schedule = critic_optimizer(config, total_updates)
        self.checkpointer = Checkpointer(storage.join(ctx.output_dir, CHECKPOINT_DIR),
                                         max_to_keep=config.run.save_total_limit, async_save=config.run.async_save)
        self.stream = ctx.prompt_stream(batch_size=config.data.batch_size, seed=config.data.seed)
        self.start_step = 0
        self.resumed = False
        self.guard = NonFiniteGuard(config.run.on_nonfinite, config.run.max_nonfinite_skips)
        latest = self.checkpointer.latest_step()
        if latest is not None and not resume:
            raise OutputExistsError(
                f"{ctx.output_dir} already holds checkpoints (latest step {latest}); pass --resume to continue "
                "that run or choose another --output-dir"
            )
        if resume and latest is not None:
            # the newest intact step: a damaged newest one is refused, or set aside with run.resume_fallback
            frozen, trained = split_trained(ctx.model, params)
            self.base_fingerprint = fingerprint(frozen)
            state = self._restore(trained, self.checkpointer.resume_step(fallback=config.run.resume_fallback))
            self.state = state.replace(frozen=frozen)
        else:
            if config.sft.steps:
                params = run_sft(ctx, params)
            frozen, trained = split_trained(ctx.model, params)
            self.base_fingerprint = fingerprint(frozen)
            critic = run_critic(config, ctx.model, trained, ctx.mesh, self.critic_optimizer)
            self.state = create_state(trained, self.optimizer, ctx.mesh, seed=config.run.seed,
                                      with_reference=self.grpo.beta > 0 and frozen is None, frozen=frozen,
                                      critic=critic)
        del params, trained, frozen  # the state owns the parameters from here on
        self.param_counts = {"params/trainable": count_params(self.state.params),
                             "params/total": count_params(self.state.policy_params())}
        if self.ppo is not None:
            self.param_counts["params/critic"] = count_params(self.state.critic.params)
            self._setup_critic()
        self.update = make_update_fn(
            ctx.model, self.optimizer, self.schedule, ctx.mesh, state_shardings(self.state),
            objective=grpo_objective(self.grpo), temperature=ctx.sampling.temperature,
            accumulation_steps=config.optimizer.gradient_accumulation_steps,
            token_weighted=self.grpo.aggregation == "token-mean", name="grpo_update",
        )
        self.logprobs = make_logprobs_fn(ctx.model, ctx.mesh, ctx.sampling.temperature,
                                         micro_batches=config.optimizer.gradient_accumulation_steps)
        # the reference policy: the base model over the frozen weights under LoRA; else the policy's own
        # function, so the one compiled program serves both (no compile at the first log-prob gap measurement)
        self.reference_logprobs = self.logprobs if ctx.model.config.lora is None else make_logprobs_fn(
            without_adapters(ctx.model), ctx.mesh, ctx.sampling.temperature,
            micro_batches=config.optimizer.gradient_accumulation_steps)
        self.metrics = MetricsWriter(ctx.output_dir, enabled=self.is_writer, tensorboard=config.run.tensorboard,
                                     progress=config.run.progress, total_steps=config.run.max_steps,
                                     resume_step=self.start_step if resume else None)
        if self.is_writer:
            storage.write_text(storage.join(ctx.output_dir, CONFIG_FILE), json.dumps(config.to_dict(), indent=2))

    def _setup_critic(self) -> None:
        """PPO's critic programs: its update (make_update_fn over the critic's state) and its values."""
        ctx, micro_batches = self.ctx, self.ctx.config.optimizer.gradient_accumulation_steps
        self.critic_update = make_update_fn(
            ctx.model, self.critic_optimizer, self.critic_schedule, ctx.mesh, state_shardings(self._critic()),
            objective=value_objective(self.ppo), forward=value_forward(ctx.model),
            temperature=ctx.sampling.temperature, accumulation_steps=micro_batches, token_weighted=True,
            name="critic_update")
        self.values = make_rows_fn(lambda params, *batch: critic_values(ctx.model, *params, *batch), ctx.mesh,
                                   micro_batches, "values")

    def _critic(self):
        """The critic's state as its programs take it: with the policy's parameters as its ``frozen`` trunk
        when it has no trunk of its own (ppo.critic = "head")."""
        policy = self.state.policy_params() if self.ppo.critic == "head" else None
        return self.state.critic.replace(frozen=policy)

    def _restore(self, params: Any, step: int):
        """The TrainState of checkpoint ``step`` (without a LoRA run's frozen base); ``params``, the trained
        parameters, give the shapes and shardings, then are freed."""
        config = self.ctx.config
        # the settings first: they decide the state's structure (a reference model only when beta > 0), so a
        # changed one would otherwise surface as orbax's structure error after reading the whole checkpoint
        meta = self.checkpointer.restore_meta(step)
        self._check_resumable(meta)
        check_base(meta, self.base_fingerprint, self.ctx.output_dir)
        target = abstract_train_state(params, self.optimizer, self.ctx.mesh,
                                      with_reference=self.grpo.beta > 0 and self.ctx.model.config.lora is None,
                                      critic=run_critic(config, self.ctx.model, params, self.ctx.mesh,
                                                        self.critic_optimizer, abstract=True))
        _free(params)  # before the restored parameters arrive
        while True:
            try:
                state, meta = self.checkpointer.restore(checkpoint_tree(target), step=step)
                break
            except CheckpointDamagedError as e:  # unreadable although its files are all there (corrupt in place)
                if not config.run.resume_fallback:
                    raise
                logger.warning("%s Falling back (run.resume_fallback=true).", e)
                self.checkpointer.set_aside(step)
                step = self.checkpointer.resume_step(fallback=True)
                if step is None:
                    raise
        state = from_checkpoint_tree(state)
        self.resumed = True
        self.stream.restore(meta["data"])
        self.start_step = int(meta["step"])
        logger.info("resumed from %s at step %d", self.checkpointer.directory, self.start_step)
        if self.start_step >= config.run.max_steps:
            logger.warning("the run is complete: checkpoint step %d >= run.max_steps=%d; nothing to do",
                           self.start_step, config.run.max_steps)
        saved_steps = meta["config"]["run"]["max_steps"]
        if config.optimizer.lr_scheduler_type != "constant" and saved_steps != config.run.max_steps:
            logger.warning("run.max_steps changed from %s to %d: the %s learning-rate schedule is stretched "
                           "from here on", saved_steps, config.run.max_steps, config.optimizer.lr_scheduler_type)
        return state

    def _check_resumable(self, meta: dict) -> None:
        try:  # read back through the config type: fields added since the checkpoint take their defaults
            saved = TrainConfig.from_dict(meta.get("config", {})).to_dict()
        except ConfigError as e:
            raise ConfigError(f"cannot resume {self.ctx.output_dir}: the checkpoint's config does not load: {e}") from e
        now = self.ctx.config.to_dict()
        for config in (saved, now):  # how the sampler runs, not what it samples: free to change
            for name in sampling_lib.same_tokens_fields():
                config["sampling"].pop(name)
        changed = [section for section in RESUME_SECTIONS if saved[section] != now[section]]
        if changed:
            raise ConfigError(
                f"cannot resume {self.ctx.output_dir}: the config's section(s) {changed} differ from the checkpoint's; "
                "an exact resume needs the same model, data, algorithm, sampling, tool and optimizer settings"
            )

    # -- the stages of one step -------------------------------------------------------------------------
    def _sample(self, key: jax.Array) -> tuple[rollout_lib.Rollout, dict[str, float]]:
        """Stages 1-2: a scored rollout of B groups (with dynamic sampling: informative groups first)."""
        ctx = self.ctx
        rounds = []

        def sample_round(round_key):
            examples = self.stream.next_batch()
            texts = [ctx.render(e) for e in examples]
            return rollout_lib.rollout(
                *sampler_policy, ctx.tokenizer, examples, round_key, ctx.sampling, list(ctx.specs),
                prompt_texts=texts, add_special_tokens=ctx.add_special_tokens,
                overlong_buffer=self.grpo.overlong_buffer if self.grpo.overlong_penalty else None,
                tools=ctx.config.tools)

        sampler_policy = sampling_policy(ctx.model, self.state.policy_params(), ctx.config.model.lora_merged_sampling)
        key, round_key = jax.random.split(key)
        rounds.append(sample_round(round_key))
        if not self.grpo.dynamic_sampling:
            return rounds[0], {}
        num_prompts = len(rounds[0].examples)
        accuracy = self.grpo.accuracy_reward_name  # DAPO filters on accuracy, not on length penalties

        def informative(round_index):
            rewards = rounds[round_index].per_reward[accuracy]
            return [(round_index, i) for i in np.flatnonzero(rollout_lib.informative_groups(rewards, self.group_size))]

        keep = informative(0)
        for _ in range(self.grpo.max_resample_rounds):
            if len(keep) >= num_prompts:
                break
            key, round_key = jax.random.split(key)
            rounds.append(sample_round(round_key))
            keep += informative(len(rounds) - 1)
        num_informative = len(keep)
        chosen = keep[:num_prompts]
        chosen_set = set(chosen)
        filler = [(r, i) for r in range(len(rounds)) for i in range(num_prompts) if (r, i) not in chosen_set]
        chosen += filler[: num_prompts - len(chosen)]
        stats = {"dynamic/rounds": len(rounds), "dynamic/informative_groups": num_informative,
                 "dynamic/filled_with_zero_signal": max(num_prompts - num_informative, 0)}
        return rollout_lib.select_groups(rounds, sorted(chosen), ctx.sampling.pad_token_id), stats

    def _advantages(self, rollout: rollout_lib.Rollout) -> np.ndarray:
        """Stage 3: [N] outcome advantages by grpo.algorithm (grpo_jax.trainer.advantages), or [N, T] token
        advantages from step rewards (process supervision)."""
        if self.step_reward is None:
            return advantages_lib.sequence_advantages(self.grpo, rollout.rewards, self.group_size)
        columns = rollout_lib.example_columns(rollout.examples, self.group_size, rollout.owned)
        step_rewards, step_ends = rollout_lib.step_arrays(self.ctx.tokenizer, rollout,
                                                          self.step_reward(rollout.texts, **columns))
        return np.asarray(process_advantages(step_rewards, step_ends, rollout.completion_mask, self.group_size))

    def _minibatches(self, rollout: rollout_lib.Rollout, host: dict[str, np.ndarray], advantages: np.ndarray | None,
                     measure_gap: bool) -> list[Minibatch]:
        """Stage 4a: the step's sequence batch ``host`` (rollout.sequence_batch) on the mesh, in
        ``num_minibatches`` minibatches, with ``advantages`` unless they come later (``_token_advantages``).
        At mu = 1 the sampler's log-probs are pi_old; otherwise ``_add_logprobs`` recomputes it."""
        host = dict(host)
        if advantages is not None:
            host["advantages"] = advantages
        if self.grpo.num_iterations == 1:
            host["old_logprobs"] = rollout.policy_logprobs
        size = len(rollout.tokens) // self.grpo.num_minibatches
        accumulation_steps = self.ctx.config.optimizer.gradient_accumulation_steps
        minibatches = []
        for m in range(self.grpo.num_minibatches):
            rows = slice(m * size, (m + 1) * size)
            arrays = {name: place_rows(value[rows], self.ctx.mesh) for name, value in host.items()}
            sampler = None
            if measure_gap:
                sampler = arrays.get("old_logprobs")
                if sampler is None:
                    sampler = place_rows(rollout.policy_logprobs[rows], self.ctx.mesh)
            # rows of a group share their prompt: each program computes it once per run of such rows
            group = layout_prompt_group(self.group_size, size, accumulation_steps, first_row=m * size)
            minibatches.append(Minibatch(arrays, rows, group, sampler))
        return minibatches

    def _add_logprobs(self, minibatches: list[Minibatch]) -> list[jax.Array]:
        """Stage 4b: pi_old (mu > 1) and pi_ref (beta > 0) on the mesh, minibatch by minibatch (no more memory
        than the update); returns the log-prob gap sums of the minibatches that measure it."""
        gap_sums = []
        for mb in minibatches:
            ids, mask = mb.arrays["input_ids"], mb.arrays["attention_mask"]
            completion_length = mb.arrays["completion_mask"].shape[1]
            if self.grpo.num_iterations > 1 or mb.sampler_logprobs is not None:
                # the training forward under the sampling params: pi_old when mu > 1, else only to measure how
                # far the sampler's log-probs (pi_old at mu = 1) are from it
                trainer = self.logprobs(self.state.policy_params(), ids, mask, completion_length, mb.prompt_group)
                if self.grpo.num_iterations > 1:
                    mb.arrays["old_logprobs"] = trainer
                if mb.sampler_logprobs is not None:
                    gap_sums.append(logprob_gap_sums(mb.sampler_logprobs, trainer, mb.arrays["completion_mask"]))
            if self.grpo.beta > 0:
                mb.arrays["ref_logprobs"] = self.reference_logprobs(self.state.reference_params(), ids, mask,
                                                                    completion_length, mb.prompt_group)
        return gap_sums

    def _token_advantages(self, host: dict[str, np.ndarray], rollout: rollout_lib.Rollout,
                          minibatches: list[Minibatch]) -> np.ndarray:
        """Stage 4c (PPO, or the KL penalty in the reward): per-token rewards, then PPO's GAE over the critic's
        values or REINFORCE++'s normalised returns (grpo_jax.trainer.advantages). The [N, T] advantages (and
        PPO's old_values and returns) join the minibatches; returns the advantages."""
        grpo, mask = self.grpo, host["completion_mask"]
        device: dict[str, Any] = {}
        if grpo.kl_penalty == "reward" and grpo.beta > 0:
            device["ref"] = [mb.arrays["ref_logprobs"] for mb in minibatches]
            if grpo.num_iterations > 1:  # pi_old recomputed on the mesh; at mu = 1 the sampler's
                device["old"] = [mb.arrays["old_logprobs"] for mb in minibatches]
        if self.ppo is not None:
            critic = self._critic()
            device["values"] = []
            for mb in minibatches:
                ids, attention = mb.arrays["input_ids"], mb.arrays["attention_mask"]
                mb.arrays["old_values"] = self.values((critic.params, critic.frozen), ids, attention,
                                                      mask.shape[1], mb.prompt_group)
                device["values"].append(mb.arrays["old_values"])
        fetched = {name: np.concatenate(arrays) for name, arrays in to_host(device).items()}
        old = fetched.get("old", rollout.policy_logprobs)
        rewards = advantages_lib.token_rewards(rollout.rewards, mask, old if "ref" in fetched else None,
                                               fetched.get("ref"), beta=grpo.beta, kl_estimator=grpo.kl_estimator)
        advantages, returns = advantages_lib.token_advantages(grpo, self.ctx.config.ppo, rewards, mask,
                                                              fetched.get("values"))
        for mb in minibatches:
            mb.arrays["advantages"] = place_rows(advantages[mb.rows], self.ctx.mesh)
            if returns is not None:
                mb.arrays["returns"] = place_rows(returns[mb.rows], self.ctx.mesh)
        return advantages

    def _update(self, minibatches: list[Minibatch],
                step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
        """Stage 5: mu passes of one optimizer update per minibatch, dispatched without waiting for the device;
        returns each policy update's and each critic update's metrics (still on the device), and the seconds
        the critic's updates took (PPO: each pass updates the critic on every minibatch first, then waits for
        it, so that the step's time splits between the two; no policy update during ppo.critic_warmup_steps)."""
        history, critic_history, critic_s = [], [], 0.0
        train_policy = self.ppo is None or step > self.ppo.critic_warmup_steps
        for _ in range(self.grpo.num_iterations):
            if self.ppo is not None:
                jax.block_until_ready(self.state.params)  # the previous pass's policy updates: not the critic's time
                start = time.perf_counter()
                for mb in minibatches:
                    critic, update_metrics = self.critic_update(self._critic(), mb.arrays, mb.prompt_group)
                    self.state = self.state.replace(critic=critic.replace(frozen=None))
                    critic_history.append(update_metrics)
                jax.block_until_ready(self.state.critic.params)
                critic_s += time.perf_counter() - start
            for mb in minibatches if train_policy else ():
                self.state, update_metrics = self.update(self.state, mb.arrays, mb.prompt_group)
                history.append(update_metrics)
        return history, critic_history, critic_s

    def _sync_reference(self, step: int) -> None:
        """Copy the policy into the reference model every ``grpo.ref_model_sync_steps`` steps."""
        every = self.grpo.ref_model_sync_steps
        if every and step % every == 0 and self.state.ref_params is not None:
            self.state = self.state.replace(ref_params=jax.tree.map(jnp.copy, self.state.params))

    def _rollout_metrics(self, rollout: rollout_lib.Rollout, advantages: np.ndarray) -> dict[str, float]:
        """The host's statistics of a scored rollout: rewards, accuracy, advantages, lengths."""
        lengths = rollout.model_mask.sum(axis=1)  # the model's tokens (a tool's output is not its length)
        # per completion (outcome) or per completion token (process supervision)
        advantage_values = advantages if advantages.ndim == 1 else advantages[rollout.model_mask > 0]
        solved = rollout.per_reward[self.grpo.accuracy_reward_name] >= SOLVED
        grouped = rollout.rewards.reshape(-1, self.group_size)
        return {
            "reward/mean": float(rollout.rewards.mean()), "reward/std": float(rollout.rewards.std()),
            **{f"reward/{name}/{stat}": float(getattr(values, stat)()) for name, values in rollout.per_reward.items()
               for stat in ("mean", "std")},
            "reward/failures": rollout.num_failures, "rollout/rows_scored_here": len(rollout.owned),
            "accuracy": float(solved.mean()),
            "groups/zero_signal_frac": float(np.mean(np.all(grouped == grouped[:, :1], axis=1))),
            "advantage/mean": float(advantage_values.mean()), "advantage/std": float(advantage_values.std()),
            "advantage/abs_mean": float(np.abs(advantage_values).mean()),
            "completion/length_mean": float(lengths.mean()), "completion/length_max": int(lengths.max()),
            "completion/truncated_frac": float(1.0 - rollout.finished.mean()),
            "tokens/sampled_per_s": float(lengths.sum() / max(rollout.sample_s, 1e-9)),
            "batch/prompt_length": int(rollout.prompt_ids.shape[1]),
            **(tool_metrics(rollout) if self.ctx.config.tools.enabled else {}),
        }

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step (stages 1-6 of the module docstring); returns its metrics."""
        start = time.perf_counter()
        compiles_before = total_compiles()
        key = jax.random.fold_in(jax.random.wrap_key_data(self.state.rng), step)
        rollout, dynamic_stats = self._sample(key)
        host = rollout_lib.sequence_batch(rollout, mask_truncated=self.grpo.mask_truncated_completions)
        token_level = advantages_lib.needs_token_advantages(self.grpo)
        advantages = None if token_level else self._advantages(rollout)
        logprobs_start = time.perf_counter()
        every = self.ctx.config.run.logprob_diff_steps
        measure_gap = every > 0 and (self.grpo.num_iterations > 1 or step % every == 0)
        minibatches = self._minibatches(rollout, host, advantages, measure_gap)
        gap_sums = self._add_logprobs(minibatches)
        if token_level:
            advantages = self._token_advantages(host, rollout, minibatches)
        jax.block_until_ready([mb.arrays for mb in minibatches])  # a timing point, no copy to the host
        update_start = time.perf_counter()
        history, critic_history, critic_s = self._update(minibatches, step)
        self._sync_reference(step)
        host_metrics = self._rollout_metrics(rollout, advantages)  # while the device runs the updates
        # the step's one wait for the device
        device_metrics = to_host({"updates": history, "critic": critic_history, "gap": gap_sums})
        update_s = time.perf_counter() - update_start
        updates, critic_updates = device_metrics["updates"], device_metrics["critic"]
        nonfinite_codes = [int(update.pop("nonfinite").value) for update in updates + critic_updates]
        applied = [u for u, code in zip(updates, nonfinite_codes[:len(updates)], strict=True) if code == 0]
        critic_applied = [u for u, code in zip(critic_updates, nonfinite_codes[len(updates):], strict=True)
                          if code == 0]
        # the tokens each update pass attends: the prompt once per completion, and the completions
        attended_tokens = int(rollout.prompt_mask.sum()) * self.group_size + int(rollout.completion_mask.sum())
        out = {
            **host_metrics,
            **mean_over_updates(applied or updates),  # the skipped updates' NaNs only when none was applied
            **{f"critic/{name}": value for name, value in mean_over_updates(critic_applied or critic_updates).items()},
            "nonfinite/skipped_updates": len(updates) + len(critic_updates) - len(applied) - len(critic_applied),
            **(logprob_gap(device_metrics["gap"]) if device_metrics["gap"] else {}),
            "tokens/update_per_s": float(attended_tokens * self.grpo.num_iterations / max(update_s, 1e-9)),
            "time/sample_s": rollout.sample_s, "time/reward_s": rollout.reward_s,
            **({"time/tools_s": rollout.tools_s} if self.ctx.config.tools.enabled else {}),
            "time/logprobs_s": update_start - logprobs_start, "time/update_s": update_s - critic_s,
            **({"time/critic_update_s": critic_s} if self.ppo is not None else {}),
            "compile/count": total_compiles(), "compile/new": total_compiles() - compiles_before,
            "data/epoch": self.stream.epoch,
            **{f"data/{kind}_prompts": count for kind, count in self.stream.stats.items()},  # so far, for length
            "batch/prompt_group": min(mb.prompt_group for mb in minibatches), **dynamic_stats,
            **self.param_counts,
        }
        out["time/step_s"] = time.perf_counter() - start
        try:
            self.guard.check(step, nonfinite_codes, saved=self._newest_checkpoint_note())
        except NonFiniteError as e:
            e.metrics = out  # the run writes them before it stops: they show what went non-finite
            raise
        return out

    def _newest_checkpoint_note(self) -> str:
        latest = self.checkpointer.latest_step()
        return (f"; the newest checkpoint, step {latest} in {self.checkpointer.directory}, is the last finite state"
                if latest is not None else "")

    # -- the run ----------------------------------------------------------------------------------------
    def _meta(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        meta = {"step": step, "data": self.stream.state(), "config": self.ctx.config.to_dict(),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        if self.base_fingerprint is not None:
            meta["lora_base"] = base_pointer(self.ctx.config, self.base_fingerprint)
        return meta

    def _save(self, step: int, metrics: dict[str, Any]) -> None:
        """Checkpoint ``step``: the state without a LoRA run's frozen base (its pointer is in the meta)."""
        self.checkpointer.save(step, checkpoint_tree(self.state), self._meta(step, metrics))

    def _eval(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        key = jax.random.fold_in(jax.random.wrap_key_data(self.state.rng), 1_000_000_000 + step)
        out = self.ctx.eval_metrics(self.state.policy_params(), key)
        if out:
            out["time/eval_s"] = time.perf_counter() - start
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
                self._save(0, first)
            for step in range(self.start_step + 1, run.max_steps + 1):
                try:
                    last = self.step(step)
                except NonFiniteError as e:
                    self.metrics.write(step, e.metrics)
                    raise
                if step == run.max_steps or (run.eval_steps and step % run.eval_steps == 0):
                    last.update(self._eval(step))
                self.metrics.write(step, last)
                if step == run.max_steps or (run.save_steps and step % run.save_steps == 0):
                    self.metrics.flush()  # the metrics up to a checkpoint are at the output dir before it
                    self._save(step, last)
            self.checkpointer.wait_until_finished()
        finally:
            try:
                self.metrics.close()
                self.checkpointer.close()
            finally:
                self.lock.release()
        if self.is_writer and run.plot:
            plot_metrics(self.ctx.output_dir)
        return last


def tool_metrics(rollout: rollout_lib.Rollout) -> dict[str, float]:
    """tools/*: calls per completion, errored calls (a count over the step), the share of completions that called
    at least once or tried a call beyond the budget, the tool's share of the trajectories' tokens, and the calls
    this process ran."""
    tokens = rollout.completion_mask.sum()
    return {
        "tools/calls_per_completion": float(rollout.tool_calls.mean()),
        "tools/errors": int(rollout.tool_errors.sum()),
        "tools/error_frac": float(rollout.tool_errors.sum() / max(rollout.tool_calls.sum(), 1)),
        "tools/used_frac": float((rollout.tool_calls > 0).mean()),
        "tools/over_budget_frac": float(rollout.tool_over_budget.mean()),
        "tools/token_frac": float(rollout.tool_mask.sum() / max(tokens, 1)),
        # this process runs the calls of the rows it owns (and scores), as it does code rewards
        "tools/calls_run_here": int(rollout.tool_calls[rollout.owned].sum()),
    }


def _free(params: Any) -> None:
    """Release the device memory of ``params`` now, whoever else still refers to them."""
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array):
            leaf.delete()


def train(config: TrainConfig, *, output_dir: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``config`` end to end; returns the last step's metrics. Writes into ``output_dir``: checkpoints/,
    metrics.jsonl, tensorboard/, curves.png, config.json (see the README)."""
    ctx, params = build_context(config, output_dir)
    storage.makedirs(ctx.output_dir)
    trainer = GRPOTrainer(ctx, params, resume=resume)
    del params
    last = trainer.run()
    if trainer.is_writer:
        logger.info("run summary:\n%s", summarize(read_metrics(ctx.output_dir)))
    return last


def load_run_config(run_dir: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The TrainConfig a run in ``run_dir`` was trained with (its config.json), with ``overrides`` applied."""
    path = storage.join(run_dir, CONFIG_FILE)
    if not storage.exists(path):
        raise ConfigError(f"{run_dir!r} is not a training run directory: it has no {CONFIG_FILE}")
    try:
        values = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); it is the run's config, written by the trainer") from e
    return apply_overrides(TrainConfig.from_dict(values), overrides)


def restore_params(ctx: RunContext, params: Any, step: int | None = None) -> tuple[Any, int]:
    """The policy parameters of checkpoint ``step`` (default: the latest) of the run in ``ctx.output_dir``.
    ``params`` (``build_context``'s) give their shapes and shardings and are freed first; under LoRA the
    base in them is kept (checked against the checkpoint's pointer) and joined with the restored adapters."""
    optimizer, _ = build_optimizer(ctx.config.trained_optimizer, 1)
    frozen, trained = split_trained(ctx.model, params)
    del params
    critic = run_critic(ctx.config, ctx.model, trained, ctx.mesh, critic_optimizer(ctx.config, 1)[0], abstract=True)
    target = abstract_train_state(trained, optimizer, ctx.mesh,
                                  with_reference=ctx.config.grpo.beta > 0 and frozen is None, critic=critic)
    _free(trained)
    with Checkpointer(storage.join(ctx.output_dir, CHECKPOINT_DIR), async_save=False, max_to_keep=None) as ckpt:
        if step is None:  # the newest; if it is damaged, the error names the intact step to pass instead
            step = ckpt.resume_step(fallback=False)
        check_base(ckpt.restore_meta(step), fingerprint(frozen), ctx.output_dir)
        tree, meta = ckpt.restore(checkpoint_tree(target), step=step)
    return from_checkpoint_tree(tree).replace(frozen=frozen).policy_params(), int(meta["step"])
