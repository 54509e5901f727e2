"""grpo_jax's side of the GRPO step benchmark (see workload.py): whole GRPOTrainer steps on the workload.

    python benchmarks/peers/grpo_jax_step.py --checkpoint DIR --size small --steps 3 --out result.json

The trainer's own step (``GRPOTrainer.step``) runs as in training: sampling (incl. decoding to text),
rewards on the host, the reference log-probs, the jitted update; its per-phase timers are reported. The
prompts replace the task's examples, and no token stops a completion (every one runs 128 tokens).
Options --num-generations / --max-new-tokens / --prompts-per-step change the workload for scaling curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--num-generations", type=int, default=workload.NUM_GENERATIONS)
    parser.add_argument("--max-new-tokens", type=int, default=workload.MAX_NEW_TOKENS)
    parser.add_argument("--prompts-per-step", type=int, default=workload.PROMPTS_PER_STEP)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1,
                        help="micro-batches per update (less memory for long completions)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype; parameters and optimizer state stay float32 (mixed precision)")
    parser.add_argument("--profile", metavar="DIR",
                        help="write a jax.profiler trace of the last timed step to DIR (Perfetto JSON included; "
                             "summarise it with benchmarks/trace_summary.py)")
    args = parser.parse_args()

    start = time.perf_counter()
    import jax

    from grpo_jax.trainer import TrainConfig, build_context
    from grpo_jax.trainer.config import (
        DataConfig,
        GRPOConfig,
        ModelSpec,
        OptimizerConfig,
        RunConfig,
        SamplingConfig,
        SFTConfig,
    )
    from grpo_jax.trainer.loop import GRPOTrainer

    vocab = workload.SIZES[args.size]["vocab_size"]
    config = TrainConfig(
        name="bench",
        model=ModelSpec(path=args.checkpoint, dtype=args.dtype),
        data=DataConfig(task="arithmetic", num_examples=64, eval_examples=0, batch_size=args.prompts_per_step,
                        max_prompt_length=workload.PROMPT_WORDS),
        grpo=GRPOConfig(num_iterations=workload.NUM_ITERATIONS, beta=workload.BETA, epsilon=workload.EPSILON,
                        loss_type="grpo", scale_rewards="group", rewards=("workload:reward_fn",)),
        sampling=SamplingConfig(num_generations=args.num_generations, max_new_tokens=args.max_new_tokens,
                                temperature=workload.TEMPERATURE),
        optimizer=OptimizerConfig(learning_rate=workload.LEARNING_RATE, adam_beta1=workload.ADAM_BETAS[0],
                                  adam_beta2=workload.ADAM_BETAS[1], weight_decay=workload.WEIGHT_DECAY,
                                  max_grad_norm=workload.MAX_GRAD_NORM, lr_scheduler_type="constant",
                                  warmup_steps=0, gradient_accumulation_steps=args.gradient_accumulation_steps),
        sft=SFTConfig(steps=0),
        run=RunConfig(max_steps=args.steps + 1, eval_steps=0, save_steps=0, tensorboard=False, progress=False,
                      plot=False),
    )
    with tempfile.TemporaryDirectory() as out_dir:
        ctx, params = build_context(config, out_dir)
        prompts = workload.make_prompts(vocab, args.steps + 1)
        if args.prompts_per_step != workload.PROMPTS_PER_STEP:
            prompts = (prompts * args.prompts_per_step)[: (args.steps + 1) * args.prompts_per_step]
        ctx = dataclasses.replace(ctx, train_examples=[{"prompt": p} for p in prompts],
                                  # no stop token: every completion runs the full length
                                  sampling=dataclasses.replace(ctx.sampling, eos_token_ids=()))
        trainer = GRPOTrainer(ctx, params)
        del params
        parameters = sum(x.size for x in jax.tree.leaves(trainer.state.params))
        setup_s = time.perf_counter() - start
        steps = []
        first = None
        for k in range(1, args.steps + 2):
            if args.profile and k == args.steps + 1:
                with jax.profiler.trace(args.profile, create_perfetto_trace=True):
                    m = trainer.step(k)
            else:
                m = trainer.step(k)
            if k == 1:
                first = m["time/step_s"]
                continue
            steps.append({"step_s": m["time/step_s"], "generation_s": m["time/sample_s"],
                          "reward_s": m["time/reward_s"], "logprobs_s": m["time/logprobs_s"],
                          "update_s": m["time/update_s"], "compiles": m["compile/new"],
                          "generated_tokens": int(round(m["completion/length_mean"] * args.prompts_per_step
                                                        * args.num_generations))})
        trainer.metrics.close()
        trainer.checkpointer.close()
    result = {"framework": "grpo_jax", "size": args.size,
              "parameters": parameters, "steps": steps, "first_step_s": first, "setup_s": setup_s,
              "num_generations": args.num_generations, "max_new_tokens": args.max_new_tokens,
              "prompts_per_step": args.prompts_per_step,
              "gradient_accumulation_steps": args.gradient_accumulation_steps, "dtype": args.dtype,
              "notes": f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} device(s), "
                       f"{args.dtype} compute, float32 parameters"}
    workload.write_result(result, args.out)


if __name__ == "__main__":
    main()
