"""The Hugging Face TRL worker of the side-by-side GRPO benchmark (issue 8).

Runs ``workload.py``'s GRPO step with TRL's ``GRPOTrainer`` on the CPU and writes the result JSON
(``workload.write_result``). Run it with the TRL venv's python (``benchmarks/peers/setup_trl.sh`` prints it):

    python benchmarks/peers/trl_step.py --checkpoint DIR --size small --steps N --out result.json [--threads T]

Step boundaries come from a TrainerCallback (on_step_begin / on_step_end); the phases from timers wrapped
around the trainer's own hook points:

  generation_s  the policy's ``model.generate`` (called by ``GRPOTrainer._generate_single_turn``)
  reward_s      ``GRPOTrainer._calculate_rewards`` (calls the reward function, gathers the rewards)
  logprobs_s    ``GRPOTrainer._get_per_token_logps_and_entropies`` under no_grad: the reference model's
                per-token log-probs (and the old policy's, were TRL to compute them: with num_iterations=1 and
                steps_per_generation=1 it does not, and the loss uses the current log-probs detached)
  update_s      the rest of the step: tokenizing / decoding, advantages, the loss forward and backward,
                gradient clipping and the optimizer step

The first step is the warm-up (``first_step_s``); the ``--steps`` steps after it are timed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workload  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint made by workload.make_checkpoint")
    p.add_argument("--size", required=True, choices=sorted(workload.SIZES))
    p.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    p.add_argument("--out", default=None, help="where to write the result JSON")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: os.cpu_count())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype: bfloat16 is TRL's bf16=True (autocast; float32 weights and optimizer)")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="micro-batches per optimizer step (the 128 completions are still generated at once)")
    return p.parse_args(argv)


class PhaseTimer:
    """Adds up the wall time of wrapped calls per phase within the current step."""

    def __init__(self):
        self.phases = {"generation": 0.0, "reward": 0.0, "logprobs": 0.0}
        self.generated_tokens = 0
        self.calls = {"generate": 0, "ref_logprobs": 0, "old_logprobs": 0, "policy_logprobs": 0}

    def reset(self):
        for k in self.phases:
            self.phases[k] = 0.0
        self.generated_tokens = 0

    def add(self, phase, seconds):
        self.phases[phase] += seconds


def timed(timer: PhaseTimer, phase, fn, on_result=None):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        timer.add(phase, time.perf_counter() - t0)
        if on_result is not None:
            on_result(out)
        return out

    return wrapper


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count()

    import torch

    torch.set_num_threads(threads)
    t_import = time.perf_counter()
    import datasets
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    import_s = time.perf_counter() - t_import
    notes = []
    shape = workload.SIZES[args.size]

    # ---- setup: model load + trainer build -------------------------------------------------------------
    t_setup = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(workload.tokenizer_dir(args.checkpoint))
    vocab_size = model.config.vocab_size
    if vocab_size != shape["vocab_size"]:
        notes.append(f"checkpoint vocab {vocab_size} != size {args.size}'s {shape['vocab_size']}")
    parameters = model.num_parameters()

    prompts = workload.make_prompts(vocab_size, args.steps + 1)
    train_dataset = datasets.Dataset.from_dict({"prompt": prompts})

    def even_word_reward(completions, **kwargs):
        return workload.reward(completions)

    completions_per_step = workload.PROMPTS_PER_STEP * workload.NUM_GENERATIONS
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-"),
        # batch: 16 prompts x G=8 = 128 completions generated and trained on per optimizer step
        # with accumulation K: K micro-batches of 128 / K rows, still one generation and one optimizer step
        per_device_train_batch_size=completions_per_step // args.gradient_accumulation_steps,
        generation_batch_size=completions_per_step,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_generations=workload.NUM_GENERATIONS,
        max_steps=args.steps + 1,
        shuffle_dataset=False,
        seed=args.seed,
        data_seed=args.seed,
        # generation: the full 128 new tokens, plain sampling at temperature 1
        max_completion_length=workload.MAX_NEW_TOKENS,
        generation_kwargs={"min_new_tokens": workload.MAX_NEW_TOKENS},
        temperature=workload.TEMPERATURE,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        use_vllm=False,
        use_transformers_continuous_batching=False,
        # loss
        loss_type="grpo",
        beta=workload.BETA,
        epsilon=workload.EPSILON,
        num_iterations=workload.NUM_ITERATIONS,
        scale_rewards="group",
        mask_truncated_completions=False,
        # optimizer: AdamW, constant LR, no warm-up
        learning_rate=workload.LEARNING_RATE,
        adam_beta1=workload.ADAM_BETAS[0],
        adam_beta2=workload.ADAM_BETAS[1],
        weight_decay=workload.WEIGHT_DECAY,
        max_grad_norm=workload.MAX_GRAD_NORM,
        lr_scheduler_type="constant",
        warmup_steps=0,
        # fp32 on the CPU unless --dtype bfloat16 (mixed precision), no gradient checkpointing (GRPOConfig
        # defaults to bf16 and checkpointing)
        use_cpu=True,
        bf16=args.dtype == "bfloat16",
        fp16=False,
        activation_checkpointing=False,  # transformers 5.24's name for gradient_checkpointing
        torch_compile=False,
        # no logging anywhere, no checkpoints
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )

    timer = PhaseTimer()
    steps = []  # (step_s, phases, generated_tokens) for every step, the warm-up included

    class StepClock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            timer.reset()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args_, state, control, **kwargs):
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args_, state, control, **kwargs):
            timer.add("_optimizer", time.perf_counter() - self.t_opt)

        def on_step_end(self, args_, state, control, **kwargs):
            steps.append((time.perf_counter() - self.t0, dict(timer.phases), timer.generated_tokens))

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=even_word_reward,
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    for cb in (PrinterCallback, ProgressCallback):  # keep stdout for the result line
        trainer.remove_callback(cb)

    # ---- phase timers around the trainer's hook points -----------------------------------------------
    policy = trainer.model

    def count_generate(out):
        timer.calls["generate"] += 1

    policy.generate = timed(timer, "generation", policy.generate, count_generate)

    def count_tokens(out):
        completion_ids, _ = out
        timer.generated_tokens += sum(len(ids) for ids in completion_ids)

    orig_single_turn = trainer._generate_single_turn
    trainer._generate_single_turn = timed(timer, "_single_turn", orig_single_turn, count_tokens)
    trainer._calculate_rewards = timed(timer, "reward", trainer._calculate_rewards)
    # breakdown of update_s, for the notes only: the loss forward, its backward, the optimizer step
    for k in ("_single_turn", "_loss_forward", "_backward", "_optimizer"):
        timer.phases[k] = 0.0
    trainer.compute_loss = timed(timer, "_loss_forward", trainer.compute_loss)
    trainer.accelerator.backward = timed(timer, "_backward", trainer.accelerator.backward)

    orig_logps = trainer._get_per_token_logps_and_entropies

    @functools.wraps(orig_logps)
    def logps(model_, *a, **kw):
        if torch.is_grad_enabled():  # the loss's own forward: part of the update
            timer.calls["policy_logprobs"] += 1
            return orig_logps(model_, *a, **kw)
        is_ref = trainer.ref_model is not None and model_ is trainer.ref_model
        timer.calls["ref_logprobs" if is_ref else "old_logprobs"] += 1
        t0 = time.perf_counter()
        out = orig_logps(model_, *a, **kw)
        timer.add("logprobs", time.perf_counter() - t0)
        return out

    trainer._get_per_token_logps_and_entropies = logps
    setup_s = time.perf_counter() - t_setup

    # ---- train: 1 warm-up step + args.steps timed steps -----------------------------------------------
    trainer.train()
    if len(steps) != args.steps + 1:
        raise RuntimeError(f"expected {args.steps + 1} steps, the callback saw {len(steps)}")

    generate_seen = timer.calls["generate"] > 0
    if not generate_seen:
        notes.append("model.generate was not seen (a wrapper model?): generation_s times "
                     "GRPOTrainer._generate_single_turn instead")
    results = []
    breakdown = {"_loss_forward": 0.0, "_backward": 0.0, "_optimizer": 0.0}
    for _step_s, ph, _tokens in steps[1:]:
        for k in breakdown:
            breakdown[k] += ph[k] / max(1, len(steps) - 1)
    for step_s, ph, tokens in steps:
        gen = ph["generation"] if generate_seen else ph["_single_turn"]
        update = step_s - gen - ph["reward"] - ph["logprobs"]
        results.append({"step_s": step_s, "generation_s": gen, "reward_s": ph["reward"],
                        "logprobs_s": ph["logprobs"], "update_s": update, "generated_tokens": tokens})

    expected_tokens = completions_per_step * workload.MAX_NEW_TOKENS
    short = [r["generated_tokens"] for r in results if r["generated_tokens"] != expected_tokens]
    if short:
        notes.append(f"generated_tokens != {expected_tokens} in some steps: {short}")
    n_steps = args.steps + 1
    notes += [
        f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
        f"datasets {datasets.__version__}",
        f"torch threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}",
        f"optimizer {config.optim}, per_device_train_batch_size {config.per_device_train_batch_size}, "
        f"steps_per_generation {config.steps_per_generation}",
        "logprobs_s = reference-model log-probs only: TRL skips the old-policy log-probs when "
        "num_iterations=1 and steps_per_generation=1 (calls over all steps: "
        f"ref {timer.calls['ref_logprobs']}, old {timer.calls['old_logprobs']}, "
        f"loss forward {timer.calls['policy_logprobs']}, generate {timer.calls['generate']} for {n_steps} steps)",
        "update_s = step_s - the other phases (includes tokenize / decode / advantages / loss fwd+bwd / optimizer); "
        f"of it, mean over timed steps: loss forward {breakdown['_loss_forward']:.3f}s, "
        f"backward {breakdown['_backward']:.3f}s, optimizer step {breakdown['_optimizer']:.3f}s",
        f"imports took {import_s:.2f}s (not in setup_s)",
        f"{args.dtype} compute" + (" (bf16=True: autocast, float32 weights and optimizer)"
                                   if args.dtype == "bfloat16" else ""),
    ]
    result = {
        "framework": "trl",
        "size": args.size,
        "parameters": parameters,
        "steps": results[1:],
        "first_step_s": results[0]["step_s"],
        "setup_s": setup_s,
        "dtype": args.dtype,
        "notes": "; ".join(notes),
    }
    workload.write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
