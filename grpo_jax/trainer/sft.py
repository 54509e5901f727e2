"""Supervised warm-up: next-token cross-entropy on the task's reference answers before GRPO.

DeepSeekMath starts RL from an instruct model; a model trained from scratch needs a short warm-up to emit
answers in the task's format at all. The batch uses the GRPO layout (left-padded prompt, then the target
``answer + EOS`` right-padded to max_completion_length) and the same jitted, sharded update machinery with
the NLL objective. Metrics go to OUTPUT_DIR/sft/metrics.jsonl; greedy eval accuracy is measured before and
after. A run killed during the warm-up redoes it on resume (it is short and deterministic). A non-finite
update stops the warm-up, or is skipped, as ``run.on_nonfinite`` says (grpo_jax.trainer.nonfinite).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import jax
import numpy as np

from grpo_jax import storage
from grpo_jax.errors import ConfigError, NonFiniteError
from grpo_jax.metrics import METRICS_FILENAME, MetricsWriter
from grpo_jax.tools.config import render_result
from grpo_jax.trainer.config import OptimizerConfig
from grpo_jax.trainer.context import RunContext
from grpo_jax.trainer.lora import split_trained
from grpo_jax.trainer.nonfinite import NonFiniteGuard
from grpo_jax.trainer.reduction import to_floats
from grpo_jax.trainer.rollout import encode_prompts
from grpo_jax.trainer.state import build_optimizer, create_state, state_shardings
from grpo_jax.trainer.step import make_update_fn, sft_objective

logger = logging.getLogger(__name__)


def is_tool_trace(example: dict, fraction: float) -> bool:
    """Whether ``example``'s warm-up target is a tool-use trace (sft.tool_trace_fraction): a hash of its prompt
    below ``fraction``, so the choice is the same on every host, in every epoch and after a resume."""
    if fraction >= 1:
        return True
    digest = hashlib.blake2b(repr(example["prompt"]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64 < fraction


def target_segments(ctx: RunContext, example: dict, answer_field: str) -> list[tuple[list[int], bool]]:
    """The target completion as (token ids, trained) segments: ``answer EOS``, or with sft.tool_code_field a
    tool-use trace: the call (trained), the tool's output (context, not trained), then ``answer EOS``. Each
    segment is tokenized on its own, as a rollout tokenizes the tool's text apart from the model's tokens."""
    # the tokenizer's own EOS (for chat models the turn end, e.g. <|im_end|>), else the first stop id
    eos = ctx.tokenizer.eos_token_id if ctx.tokenizer.eos_token_id is not None else ctx.sampling.eos_token_ids[0]
    code_field, tools = ctx.config.sft.tool_code_field, ctx.config.tools

    def ids(text: str) -> list[int]:
        return ctx.tokenizer(text, add_special_tokens=False)["input_ids"]

    for field in (answer_field, code_field):
        if field is not None and field not in example:
            name = "answer_field" if field == answer_field else "tool_code_field"
            raise ConfigError(f"sft.{name}={field!r} is not a field of the task's examples (fields: {sorted(example)})")
    answer = str(example[answer_field])
    if code_field is None or not is_tool_trace(example, ctx.config.sft.tool_trace_fraction):
        return [(ids(answer) + [eos], True)]
    call = tools.call_start + str(example[code_field]) + tools.call_end
    return [(ids(call), True), (ids(render_result(answer, tools)), False), (ids(answer) + [eos], True)]


def sft_batch(ctx: RunContext, examples: list[dict], answer_field: str) -> dict[str, np.ndarray]:
    """input_ids / attention_mask [N, P + T] and completion_mask [N, T] for ``prompt -> target`` (the target's
    tokens attended, its trained segments in the loss: ``target_segments``), cut to max_new_tokens."""
    t = ctx.sampling.max_new_tokens
    pad = ctx.sampling.pad_token_id
    ids, mask = encode_prompts(ctx.tokenizer, [ctx.render(e) for e in examples],
                               buckets=ctx.sampling.prompt_length_buckets, pad_id=pad,
                               add_special_tokens=ctx.add_special_tokens)
    targets = np.full((len(examples), t), pad, np.int32)
    target_mask = np.zeros((len(examples), t), np.int32)
    trained = np.zeros((len(examples), t), np.float32)
    for i, example in enumerate(examples):
        segments = target_segments(ctx, example, answer_field)
        row = [token for seg, _ in segments for token in seg][:t]
        targets[i, :len(row)] = row
        target_mask[i, :len(row)] = 1
        trained[i, :len(row)] = [float(train) for seg, train in segments for _ in seg][:t]
    return {
        "input_ids": np.concatenate([ids, targets], axis=1),
        "attention_mask": np.concatenate([mask, target_mask], axis=1),
        "completion_mask": trained,
    }


def run_sft(ctx: RunContext, params: Any) -> Any:
    """``sft.steps`` AdamW updates (cosine schedule, 5% warm-up) from ``params``; returns the new params.
    Under LoRA only the adapters train (at sft.learning_rate times optimizer.lora_lr_scale)."""
    cfg = ctx.config.sft
    optimizer, schedule = build_optimizer(
        OptimizerConfig(learning_rate=cfg.learning_rate * ctx.config.learning_rate_scale, lr_scheduler_type="cosine",
                        warmup_steps=max(cfg.steps // 20, 1), weight_decay=0.0, max_grad_norm=1.0), cfg.steps)
    frozen, trained = split_trained(ctx.model, params)
    state = create_state(trained, optimizer, ctx.mesh, seed=ctx.config.run.seed, with_reference=False, frozen=frozen)
    update = make_update_fn(ctx.model, optimizer, schedule, ctx.mesh, state_shardings(state), objective=sft_objective,
                            temperature=1.0, accumulation_steps=1, token_weighted=True, name="sft_update")
    stream = ctx.prompt_stream(batch_size=cfg.batch_size, seed=ctx.config.data.seed + 1)
    guard = NonFiniteGuard(ctx.config.run.on_nonfinite, ctx.config.run.max_nonfinite_skips, what="SFT step")
    key = jax.random.key(ctx.config.run.seed + 7)
    out_dir = storage.join(ctx.output_dir, "sft")
    earlier = storage.join(out_dir, METRICS_FILENAME)
    if jax.process_index() == 0 and storage.exists(earlier):
        storage.remove(earlier)  # the warm-up always starts from scratch: an interrupted one's lines go
    with MetricsWriter(out_dir, enabled=jax.process_index() == 0, tensorboard=ctx.config.run.tensorboard,
                       progress=ctx.config.run.progress, total_steps=cfg.steps) as writer:
        before = ctx.eval_metrics(state.policy_params(), key)
        if before:
            writer.write(0, before)
        for step in range(1, cfg.steps + 1):
            # prompt_group 1: examples share a prompt only by chance, and a batch where they did would
            # compile another program
            state, metrics = update(state, sft_batch(ctx, stream.next_batch(), cfg.answer_field), 1)
            values = to_floats(metrics)
            code = int(values.pop("nonfinite"))
            record = {f"sft/{k}": v for k, v in values.items()}
            record["sft/nonfinite/skipped_updates"] = int(code != 0)
            try:
                guard.check(step, [code], saved=" (the warm-up saves nothing before it ends)")
            except NonFiniteError:
                writer.write(step, record)
                raise
            if step == cfg.steps:
                record.update(ctx.eval_metrics(state.policy_params(), key))
            writer.write(step, record)
    logger.info("SFT warm-up: %d steps, eval accuracy %s -> %s", cfg.steps, before.get("eval/accuracy"),
                record.get("eval/accuracy"))
    return state.policy_params()
