"""Attention in rematerialised query blocks (grpo_jax.models.attention) against one block, by length.

On the step benchmark's model (workload.py's Qwen2 sizes, random weights, fp32) and a GRPO batch of
``--prompts`` prompts x G completions with the prompt run once per group (as the trainer does), for each
completion length: the reference log-probs (forward) and the gradient of the summed log-probs with the
entropy metric (the update's bulk), with ``attention_query_block`` = the whole sequence (one block, the
scores of every layer kept for the backward pass) and = ``--query-block``, alternating, medians of
``--repeats``. Beside the times, each compiled program's temporary memory from XLA's buffer assignment
(``memory_analysis().temp_size_in_bytes``). A program whose one-block temporaries exceed ``--max-temp-gib``
is compiled but not run (it would not fit the machine).

    python benchmarks/bench_attention.py [--size small] [--completion-lengths 256 512 1024] [--markdown FILE]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))

import workload  # noqa: E402
from bench_shared_prompt import alternate, grpo_batch, logprob_programs, model_config, workload_parser  # noqa: E402
from report import emit_table, machine_description  # noqa: E402


def measure(size: str, prompts: int, group: int, prompt_length: int, completion_length: int, query_block: int,
            repeats: int, max_temp_gib: float) -> dict[str, dict[str, dict[str, float | None]]]:
    """{program: {"one block" | "blocks": {"seconds": median or None (not run), "temp_gib": ...}}}."""
    import jax

    from grpo_jax.models import build_model, init_params

    blocks = {"one block": prompt_length + completion_length, "blocks": query_block}
    models = {label: build_model(model_config(size, attention_query_block=b)) for label, b in blocks.items()}
    params = init_params(models["blocks"], jax.random.key(0))
    ids, mask = grpo_batch(models["blocks"].config.vocab_size, prompts, group, prompt_length, completion_length)
    compiled = {label: {name: fn.lower(params).compile()
                        for name, fn in logprob_programs(model, ids, mask, completion_length, group).items()}
                for label, model in models.items()}
    temp = {label: {name: c.memory_analysis().temp_size_in_bytes / 2**30 for name, c in programs.items()}
            for label, programs in compiled.items()}
    result = {name: {label: {"seconds": None, "temp_gib": temp[label][name]} for label in compiled}
              for name in temp["blocks"]}
    for name in result:
        runnable = {label: {name: compiled[label][name]} for label in compiled if temp[label][name] <= max_temp_gib}
        for label, seconds in (alternate(runnable, params, repeats)[name] if runnable else {}).items():
            result[name][label]["seconds"] = seconds
    return result


def main() -> None:
    parser = workload_parser(__doc__, prompts=4)
    parser.add_argument("--prompt-length", type=int, default=workload.PROMPT_WORDS)
    parser.add_argument("--completion-lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--query-block", type=int, default=128)
    parser.add_argument("--max-temp-gib", type=float, default=16.0)
    args = parser.parse_args()

    g, p = args.num_generations, args.prompt_length
    lines = [
        f"{machine_description()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {args.size} model, "
        f"{args.prompts} prompts x G {g}, {p} prompt tokens, fp32, median of {args.repeats} alternating repeats.",
        "",
        f"| completion tokens | program | one block s | blocks of {args.query_block} s | blocks / one | "
        "one block temp GiB | blocks temp GiB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in args.completion_lengths:
        result = measure(args.size, args.prompts, g, p, t, args.query_block, args.repeats, args.max_temp_gib)
        for name, by_label in result.items():
            one, blocked = by_label["one block"], by_label["blocks"]
            secs = [f"{x['seconds']:.2f}" if x["seconds"] is not None else "not run" for x in (one, blocked)]
            ratio = (f"{blocked['seconds'] / one['seconds']:.2f}"
                     if one["seconds"] is not None and blocked["seconds"] is not None else "")
            lines.append(f"| {t} | {name} | {secs[0]} | {secs[1]} | {ratio} | {one['temp_gib']:.2f} "
                         f"| {blocked['temp_gib']:.2f} |")
            print(lines[-1], flush=True)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
