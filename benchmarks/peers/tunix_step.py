"""The Tunix (google-tunix) worker of the side-by-side GRPO step benchmark (issue 8).

Run with the venv that ``setup_tunix.sh`` makes (never with the project's own environment)::

    python benchmarks/peers/tunix_step.py --checkpoint DIR --size small --steps N --out result.json

It loads the workload's Qwen2 safetensors checkpoint with Tunix's own Qwen2 model and safetensors loader
(fp32), a second copy as the reference model, the word-level tokenizer as a Hugging Face tokenizer, and runs
Tunix's ``GRPOLearner`` on one CPU device (a 1x1 ``fsdp`` x ``tp`` mesh with Auto axes) with the vanilla
rollout engine, no checkpoints and no metrics backend. The first step is the untimed warm-up (compile
included); ``--steps`` timed steps follow. Phases are timed by wrapping Tunix methods (see ``_instrument``).
The result (workload.py's schema) is the last stdout line and goes to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workload  # noqa: E402

# One CPU device, no accelerator probing; quiet TF/absl chatter. Set before jax is imported.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _versions() -> str:
    from importlib import metadata

    out = []
    for name in ("google-tunix", "jax", "jaxlib", "flax", "optax", "transformers"):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=missing")
    return ", ".join(out)


def _model_config(checkpoint: str, dtype: str = "float32"):
    """Tunix's Qwen2 ModelConfig from the checkpoint's Hugging Face config.json: float32 parameters,
    ``dtype`` compute."""
    import jax.numpy as jnp
    from tunix.models.qwen2 import model as qwen2_model

    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    heads = hf["num_attention_heads"]
    return qwen2_model.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(rope_theta),
        norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.float32,
    )


class _Timers:
    """Per-step phase accumulators filled by the wrapped Tunix methods."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.generation_s = 0.0
        self.reward_s = 0.0
        self.logprobs_s = 0.0
        self.update_s = 0.0
        self.generated_tokens = 0


def _timed(obj, name: str, timers: _Timers, field: str, block: bool = False, count_tokens: bool = False):
    """Replace ``obj.name`` (an instance attribute, so only this object is affected) with a timing wrapper.

    ``block`` waits for the returned JAX arrays, so asynchronously dispatched work is charged to this phase
    rather than to whichever later phase first touches the result."""
    import jax

    original = getattr(obj, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        if block:
            out = jax.block_until_ready(out)
        setattr(timers, field, getattr(timers, field) + time.perf_counter() - start)
        if count_tokens:
            timers.generated_tokens += int(sum(len(t) for t in out.tokens))
        return out

    setattr(obj, name, wrapper)


def _instrument(learner, cluster, rollout_config, timers: _Timers, step_times: list[float]):
    """Wraps, on these instances only:

    - ``RLCluster.generate``: the rollout (vanilla sampler prefill + decode, detokenisation) -> generation_s;
      its output's token lists give generated_tokens;
    - ``RLLearner._compute_rewards``: the reward manager calling our reward function -> reward_s;
    - ``RLCluster.get_ref_per_token_logps`` (blocked on its result): the reference model's forward ->
      logprobs_s (no old-policy pass: num_iterations = 1, so Tunix reuses the stop-gradient policy log-probs);
    - ``RLCluster.update_actor``: the actor trainer's jitted loss + grad + AdamW update; Tunix's trainer
      waits for its in-flight computations before returning -> update_s;
    - ``RLLearner._run_global_step``: one whole GRPO step (data loading, the phases above, GRPO advantage
      computation, metric buffering) -> step_s, blocked on the policy parameters at its end.
    """
    import jax
    from flax import nnx

    _timed(cluster, "generate", timers, "generation_s", count_tokens=True)
    _timed(learner, "_compute_rewards", timers, "reward_s")
    _timed(cluster, "get_ref_per_token_logps", timers, "logprobs_s", block=True)
    _timed(cluster, "update_actor", timers, "update_s")

    original = learner._run_global_step

    @functools.wraps(original)
    def run_global_step(*args, **kwargs):
        # The vanilla sampler uses PRNGKey(0) on every call when the rollout config has no seed, so every
        # step would draw the same noise; give each step its own seed (an int: no recompilation).
        rollout_config.seed = len(step_times)
        timers.reset()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        step_times.append(time.perf_counter() - start)
        phases.append(dict(generation_s=timers.generation_s, reward_s=timers.reward_s,
                           logprobs_s=timers.logprobs_s, update_s=timers.update_s,
                           generated_tokens=timers.generated_tokens))
        print(f"[tunix] step {len(step_times) - 1}: {step_times[-1]:.2f} s "
              f"(generation {timers.generation_s:.2f}, reward {timers.reward_s:.3f}, "
              f"logprobs {timers.logprobs_s:.2f}, update {timers.update_s:.2f}; "
              f"{timers.generated_tokens} tokens)", file=sys.stderr, flush=True)
        return out

    phases: list[dict] = []
    learner._run_global_step = run_global_step
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="workload checkpoint directory")
    parser.add_argument("--size", required=True, choices=sorted(workload.SIZES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--out", default=None, help="where to write the result JSON")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (parameters and optimizer state stay float32)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    t_setup = time.perf_counter()
    import jax
    import numpy as np
    import optax
    from flax import nnx
    from transformers import AutoTokenizer
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    devices = jax.devices("cpu")[:1]
    # Tunix's Qwen2 shards over ("fsdp", "tp") and expects Auto axes (recent JAX makes Explicit ones by
    # default); a 1x1 mesh on one CPU device.
    mesh = jax.sharding.Mesh(np.array(devices).reshape(1, 1), ("fsdp", "tp"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 2)

    config = _model_config(args.checkpoint, args.dtype)
    shape = workload.SIZES[args.size]
    if config.vocab_size != shape["vocab_size"] or config.num_layers != shape["num_hidden_layers"]:
        raise SystemExit(f"checkpoint {args.checkpoint} does not match size {args.size!r}")

    def load():
        return qwen2_params.create_model_from_safe_tensors(args.checkpoint, config, mesh=mesh,
                                                           dtype=jax.numpy.float32)

    policy = load()
    reference = load()  # beta > 0: a second copy of the same weights, kept fixed
    parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(policy, nnx.Param)))

    tokenizer = AutoTokenizer.from_pretrained(workload.tokenizer_dir(args.checkpoint))
    assert tokenizer.pad_token_id == workload.PAD_ID and tokenizer.eos_token_id == workload.EOS_ID

    optimizer = optax.chain(
        optax.clip_by_global_norm(workload.MAX_GRAD_NORM),
        optax.adamw(workload.LEARNING_RATE, b1=workload.ADAM_BETAS[0], b2=workload.ADAM_BETAS[1],
                    weight_decay=workload.WEIGHT_DECAY),
    )
    total_steps = args.steps + 1  # warm-up + timed
    # Tunix's sampler stops a row at any id in eos_tokens and falls back to the tokenizer's EOS for an
    # empty list, so give it an id the model can never sample (== vocab size): every row then runs the
    # full MAX_NEW_TOKENS, and a sampled EOS (id 1) is an ordinary token.
    never_sampled = config.vocab_size
    rollout_config = base_rollout.RolloutConfig(
        max_tokens_to_generate=workload.MAX_NEW_TOKENS,
        max_prompt_length=workload.PROMPT_WORDS,
        kv_cache_size=workload.PROMPT_WORDS + workload.MAX_NEW_TOKENS,
        temperature=workload.TEMPERATURE,
        top_p=1.0,
        top_k=None,
        eos_tokens=[never_sampled],
    )
    cluster_config = rl_cluster_lib.ClusterConfig(
        role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                      rl_cluster_lib.Role.ROLLOUT: mesh},
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optimizer,
            eval_every_n_steps=10**9,
            max_steps=total_steps,
            mini_batch_size=workload.PROMPTS_PER_STEP,
            train_micro_batch_size=workload.PROMPTS_PER_STEP,
            checkpoint_root_directory=None,
            metrics_logging_options=None,
            pbar_description=None,
        ),
        rollout_config=rollout_config,
    )
    cluster = rl_cluster_lib.RLCluster(actor=policy, reference=reference, tokenizer=tokenizer,
                                       cluster_config=cluster_config)
    algo_config = grpo_learner.GRPOConfig(
        num_generations=workload.NUM_GENERATIONS,
        num_iterations=workload.NUM_ITERATIONS,
        beta=workload.BETA,
        epsilon=workload.EPSILON,
    )

    def reward_fn(prompts, completions, **kwargs):
        return workload.reward(completions)

    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo_config, reward_fns=[reward_fn])
    timers = _Timers()
    step_times: list[float] = []
    phases = _instrument(learner, cluster, rollout_config, timers, step_times)

    prompts = workload.make_prompts(shape["vocab_size"], total_steps)
    n = workload.PROMPTS_PER_STEP
    # prompts as a NumPy string array per batch (the learner np.repeat's each field G times)
    dataset = [{"prompts": np.array(prompts[i * n:(i + 1) * n])} for i in range(total_steps)]
    setup_s = time.perf_counter() - t_setup
    print(f"[tunix] setup {setup_s:.1f} s, {parameters} parameters; {_versions()}", file=sys.stderr,
          flush=True)

    learner.train(dataset)
    if len(step_times) != total_steps:
        raise SystemExit(f"expected {total_steps} GRPO steps, ran {len(step_times)}")

    steps = [dict(step_s=t, **p) for t, p in zip(step_times[1:], phases[1:], strict=True)]
    result = {
        "framework": "tunix",
        "size": args.size,
        "parameters": parameters,
        "steps": steps,
        "first_step_s": step_times[0],
        "setup_s": setup_s,
        "dtype": args.dtype,
        "notes": (
            f"{_versions()}; Tunix Qwen2 model + safetensors loader (fp32 parameters, {args.dtype} compute), "
            "separate reference copy; "
            "GRPOLearner, vanilla rollout sharing the actor's weights (same mesh, no weight sync), "
            "1-device CPU mesh (fsdp=1, tp=1, Auto axes); setup_s includes importing jax/tunix; "
            "rollout seed = step index (Tunix's sampler otherwise reuses PRNGKey(0) every step); "
            "EOS never stops generation (eos_tokens = [vocab_size], an id never sampled), "
            f"kv cache {rollout_config.kv_cache_size}; loss_agg_mode sequence-mean-token-mean (Tunix default); "
            "tokens equal to the pad id (0) that the model samples are masked out of the loss by Tunix's "
            "completion mask (completion != pad); "
            "phases: generation = RLCluster.generate, reward = RLLearner._compute_rewards, "
            "logprobs = RLCluster.get_ref_per_token_logps (reference only; num_iterations=1 so no "
            "old-policy pass), update = RLCluster.update_actor; step_s = RLLearner._run_global_step "
            "(also advantages, data loading, metric buffering)"
        ),
    }
    workload.write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
