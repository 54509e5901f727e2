"""Decoding with a KV cache grown in phases (SamplingConfig.decode_phase_tokens) against one full-length cache.

On the step benchmark's model (workload.py's Qwen2 sizes, random weights, fp32): ``--prompts`` prompts of
32 tokens, G completions each, ``max_new_tokens`` from ``--lengths`` with no stop token (every row runs the
whole length), temperature 1. ``generate`` with ``decode_phase_tokens`` = ``--phase`` and = the whole
length (one phase, what every decode step read before), alternating, medians of ``--repeats`` (compile
excluded). Predicted: a decode step's attention reads the prompt's p slots once per group of G rows plus
each row's own slots up to the current phase's end, instead of up to max_new_tokens, and the rest of the
step (the matmuls over the weights, the sampling over the vocabulary) does not change.

    python benchmarks/bench_decode_phases.py [--size small] [--lengths 512 1024] [--markdown FILE]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import workload  # noqa: E402
from bench_shared_prompt import alternate, grpo_batch, model_config, workload_parser  # noqa: E402
from report import emit_table, machine_description  # noqa: E402


def read_fraction(prompt_length: int, new_tokens: int, phase: int, group: int = 1) -> float:
    """Cache slots a decode step reads with phases, over those it reads with one cache, averaged over steps;
    the prompt's slots are shared by ``group`` rows (read once for them)."""
    ends = [*range(phase, new_tokens, phase), new_tokens]
    starts = [0, *ends[:-1]]
    shared = prompt_length / group
    read = sum((end - start) * (shared + end) for start, end in zip(starts, ends, strict=True))
    return read / (new_tokens * (shared + new_tokens))


def measure(size: str, prompts: int, group: int, prompt_length: int, new_tokens: int, phase: int,
            repeats: int) -> dict[str, float]:
    """{"one phase" | "phases": median seconds of one generate call}."""
    import jax

    from grpo_jax.models import build_model, init_params
    from grpo_jax.sampling import SamplingConfig, generate

    model = build_model(model_config(size))
    params = init_params(model, jax.random.key(0))
    ids, mask = grpo_batch(model.config.vocab_size, prompts, 1, prompt_length, 0)
    variants = {}
    for label, p in (("one phase", new_tokens), ("phases", phase)):
        config = SamplingConfig(num_generations=group, max_new_tokens=new_tokens, decode_phase_tokens=p,
                                eos_token_ids=(), prompt_length_buckets=(prompt_length,))
        variants[label] = {"generate": lambda params, config=config: generate(
            model, params, ids, mask, jax.random.key(1), config).tokens}
    return alternate(variants, params, repeats)["generate"]


def main() -> None:
    parser = workload_parser(__doc__, prompts=4)
    parser.add_argument("--prompt-length", type=int, default=workload.PROMPT_WORDS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--phase", type=int, default=256)
    args = parser.parse_args()

    g, p = args.num_generations, args.prompt_length
    lines = [
        f"{machine_description()}; {args.size} model, {args.prompts} prompts of {p} tokens x G {g}, no stop "
        f"token, fp32, median of {args.repeats} alternating repeats.",
        "",
        f"| new tokens | one phase s | phases of {args.phase} s | phases / one | cache slots read, phases / one |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in args.lengths:
        result = measure(args.size, args.prompts, g, p, t, args.phase, args.repeats)
        lines.append(f"| {t} | {result['one phase']:.2f} | {result['phases']:.2f} "
                     f"| {result['phases'] / result['one phase']:.2f} | {read_fraction(p, t, args.phase, g):.2f} |")
        print(lines[-1], flush=True)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
