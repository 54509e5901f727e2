"""Where the time of grpo_jax's reference forward and update goes, on the step benchmark's batch (issue 8).

Times, on the 12.6M workload checkpoint and a 128 x 160-token batch (16 prompts x G 8, 32 + 128 tokens):
the model body to its final hidden states; ``completion_logprobs`` (adds the chunked LM head and
log-softmax); the same with the entropy metric; and the gradient of the summed log-probs with and without
the entropy computed (the update's backward). jit-compiled, one call to compile, then medians.

    python benchmarks/ablate_logprobs_cpu.py [--size small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from grpo_jax.models import load_pretrained
    from grpo_jax.models.model import positions_from_mask
    from grpo_jax.trainer.step import completion_logprobs

    with tempfile.TemporaryDirectory() as path:
        workload.make_checkpoint(path, args.size)
        model, params = load_pretrained(path)
    rows = workload.PROMPTS_PER_STEP * workload.NUM_GENERATIONS
    t = workload.MAX_NEW_TOKENS
    ids = jnp.asarray(np.random.default_rng(0).integers(2, model.config.vocab_size, (rows, workload.PROMPT_WORDS + t)),
                      jnp.int32)
    mask = jnp.ones_like(ids)

    def logp(p, entropy=False):
        out = completion_logprobs(model, p, ids, mask, t, temperature=1.0, with_entropy=entropy)
        return out[0] if entropy else out

    programs = {
        "body forward (final hidden states)": lambda p: model.apply(
            {"params": p}, ids, positions_from_mask(mask), mask, return_hidden=True)[0],
        "completion_logprobs": logp,
        "completion_logprobs + entropy": lambda p: logp(p, True),
        "grad of summed log-probs": jax.grad(lambda p: jnp.sum(logp(p))),
        "grad of summed log-probs, entropy computed": jax.grad(lambda p: jnp.sum(logp(p, True))),
    }
    from bench_gpu_roofline import timed  # the benchmarks' one timing loop (this script's folder is on sys.path)

    for name, fn in programs.items():
        jitted = jax.jit(fn)
        jax.block_until_ready(jitted(params))  # compile
        seconds = statistics.median(timed(lambda jitted=jitted: jitted(params), args.repeats))
        print(f"{name}: {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
