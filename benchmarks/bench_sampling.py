"""Sampling throughput: grpo_jax.sampling.generate against transformers' generate, same checkpoint.

Workload (issue 4): random-init Qwen2-architecture checkpoints, 16 prompts of 32 tokens, G = 8 samples
each (128 sequences), 128 new tokens (no EOS, so both run the full length), temperature 1, on the CPU.
Each framework runs in its own subprocess (so peak RSS is its own), repeated and alternated; we report
medians, the ratio, grpo_jax's compile time, its prefill / decode split, and prefill time against G.

    python benchmarks/bench_sampling.py [--repeats 3] [--sizes small,medium] [--markdown docs/benchmarks.md]

Needs PyTorch (CPU) and transformers for the reference; the checkpoints are made here, nothing downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from report import emit_table

SIZES = {  # Qwen2 architecture; "small" is the 12.9M model DESIGN.md's peer timings use
    "small": dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=2),
    "medium": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=12, num_key_value_heads=4),
}
PROMPTS, PROMPT_LEN, G, NEW = 16, 32, 8, 128


def make_checkpoint(path: str, size: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", tie_word_embeddings=True, max_position_embeddings=1024, **SIZES[size])
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    return model.num_parameters()


def prompts():
    import numpy as np

    rng = np.random.RandomState(0)
    return rng.randint(1, 8000, (PROMPTS, PROMPT_LEN)).astype(np.int32)


def worker_torch(path: str, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.as_tensor(prompts(), dtype=torch.long)
    times = []
    for i in range(repeats):
        torch.manual_seed(i)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, num_return_sequences=G, max_new_tokens=NEW,
                                 min_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
        times.append(time.perf_counter() - start)
        assert out.shape == (PROMPTS * G, PROMPT_LEN + NEW)
    return {"times": times}


def worker_jax(path: str, repeats: int, g_values: list[int]) -> dict:
    import jax
    import numpy as np

    from grpo_jax.models import load_pretrained
    from grpo_jax.sampling import SamplingConfig, generate

    model, params = load_pretrained(path)
    ids = prompts()
    mask = np.ones_like(ids)

    def run(config, key):
        start = time.perf_counter()
        result = generate(model, params, ids, mask, jax.random.key(key), config)
        jax.block_until_ready(result.tokens)
        return time.perf_counter() - start, result

    full = SamplingConfig(num_generations=G, max_new_tokens=NEW)
    first, result = run(full, 0)
    assert int(result.decode_steps) == NEW and result.tokens.shape == (PROMPTS * G, NEW)
    times = [run(full, i + 1)[0] for i in range(repeats)]
    prefill_times = {}
    for g in g_values:  # prefill + one decode step, the "decode" of a 1-token completion
        config = SamplingConfig(num_generations=g, max_new_tokens=1)
        run(config, 0)
        prefill_times[g] = statistics.median(run(config, i)[0] for i in range(repeats))
    return {"times": times, "first_call_s": first, "prefill_s_by_g": prefill_times}


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--markdown")
    parser.add_argument("--worker", choices=["torch", "jax"])
    parser.add_argument("--path")
    args = parser.parse_args()

    if args.worker:
        result = (worker_torch(args.path, args.repeats) if args.worker == "torch"
                  else worker_jax(args.path, args.repeats, [2, 4, 8, 16]))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    tokens = PROMPTS * G * NEW
    lines = [
        f"Machine: {os.cpu_count()}-core CPU; {PROMPTS} prompts x {PROMPT_LEN} tokens, G = {G}, {NEW} new tokens "
        f"({tokens:,} generated tokens per call), fp32, median of {args.repeats} (alternating frameworks).",
        "",
        "| model | transformers s (tok/s) | grpo_jax s (tok/s) | speed-up | grpo_jax compile + first call s "
        "| prefill+1 step s at G = 2 / 4 / 8 / 16 | peak RSS MB transformers / grpo_jax |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as path:
            n_params = make_checkpoint(path, size)
            torch_runs, jax_runs = [], []
            for _ in range(2):  # alternate the frameworks, each run in a fresh process
                torch_runs.append(_subprocess(["--worker", "torch", "--path", path, "--repeats", str(args.repeats)]))
                jax_runs.append(_subprocess(["--worker", "jax", "--path", path, "--repeats", str(args.repeats)]))
        t_torch = statistics.median(t for r in torch_runs for t in r["times"])
        t_jax = statistics.median(t for r in jax_runs for t in r["times"])
        prefill = jax_runs[-1]["prefill_s_by_g"]
        lines.append(
            f"| Qwen2 {n_params / 1e6:.1f}M ({size}) | {t_torch:.2f} ({tokens / t_torch:,.0f}) "
            f"| {t_jax:.2f} ({tokens / t_jax:,.0f}) | {t_torch / t_jax:.1f}x "
            f"| {statistics.median(r['first_call_s'] for r in jax_runs):.1f} "
            f"| {' / '.join(f'{prefill[str(g)] if str(g) in prefill else prefill[g]:.3f}' for g in (2, 4, 8, 16))} "
            f"| {max(r['peak_rss_mb'] for r in torch_runs):,.0f} / {max(r['peak_rss_mb'] for r in jax_runs):,.0f} |"
        )
        print(lines[-1], flush=True)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
