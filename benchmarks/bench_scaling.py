"""Scaling curves of a grpo_jax GRPO step (issue 8): step time and its phases against G and against the
completion length, prefill time against G (it should stay flat: the prompt is prefilled once per group),
and peak memory against G. PNG + markdown table.

    python benchmarks/bench_scaling.py --size small --png docs/scaling_curves.png --markdown docs/benchmarks.md

Every point is a fresh worker process (benchmarks/peers/grpo_jax_step.py: one warm-up step, then --steps
timed steps; the median is reported), on the workload of benchmarks/peers/workload.py with one setting
changed. Prefill: ``grpo_jax.sampling.generate`` with max_new_tokens = 1 (prefill plus one decode step of
B * G rows), median of 3 after a compile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_grpo_step import PHASES, run_worker, workload  # noqa: E402
from report import emit_table  # noqa: E402

G_VALUES = (2, 4, 8, 16, 32, 64)
LENGTHS = (64, 128, 256, 512, 1024)


def prefill_times(checkpoint: str, g_values, prompts: int) -> dict[int, float]:
    """Seconds of prefill + one decode step for ``prompts`` prompts at each G, in a fresh process."""
    code = f"""
import json, statistics, time, sys
import jax, numpy as np
sys.path.insert(0, {os.path.join(HERE, 'peers')!r})
import workload
from grpo_jax.models import load_pretrained
from grpo_jax.sampling import SamplingConfig, generate
model, params = load_pretrained({checkpoint!r})
rng = np.random.default_rng(0)
ids = rng.integers(2, model.config.vocab_size, ({prompts}, workload.PROMPT_WORDS)).astype(np.int32)
out = {{}}
for g in {list(g_values)!r}:
    config = SamplingConfig(num_generations=g, max_new_tokens=1)
    jax.block_until_ready(generate(model, params, ids, np.ones_like(ids), jax.random.key(0), config).tokens)
    times = []
    for i in range(3):
        t = time.perf_counter()
        jax.block_until_ready(generate(model, params, ids, np.ones_like(ids), jax.random.key(i), config).tokens)
        times.append(time.perf_counter() - t)
    out[g] = statistics.median(times)
print(json.dumps(out))
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def point(checkpoint: str, size: str, steps: int, work: str, g: int, length: int, prompts: int) -> dict:
    """One measured point; a worker killed for memory (SIGKILL from the OOM killer) is recorded as such."""
    try:
        result = run_worker("grpo_jax", checkpoint, size, steps, work, f"g{g}-t{length}",
                            ["--num-generations", str(g), "--max-new-tokens", str(length),
                             "--prompts-per-step", str(prompts)])
    except RuntimeError as e:
        if "failed (-9)" not in str(e):
            raise
        return {"g": g, "length": length, "killed": "out of memory (SIGKILL)"}
    steps_ = result["steps"]
    return {"g": g, "length": length, "step_s": statistics.median(s["step_s"] for s in steps_),
            **{p: statistics.median(s[p] for s in steps_) for p in PHASES},
            "peak_rss_mb": result["peak_rss_mb"], "first_step_s": result["first_step_s"]}


def plot(by_g: list[dict], by_length: list[dict], prefill: dict[int, float], png: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_g, ax_t, ax_mem = fig.subplots(1, 3)
    for ax, points, key, label in ((ax_g, by_g, "g", "G (completions per prompt)"),
                                   (ax_t, by_length, "length", "completion length (tokens)")):
        points = [p for p in points if "killed" not in p]
        xs = [p[key] for p in points]
        ax.plot(xs, [p["step_s"] for p in points], marker="o", label="whole step", color="black")
        for phase in PHASES:
            ax.plot(xs, [p[phase] for p in points], marker=".", label=phase.removesuffix("_s"))
        if key == "g":
            ax.plot(list(prefill), list(prefill.values()), marker="x", linestyle="--", label="prefill + 1 step")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    kept = [p for p in by_g if "killed" not in p]
    ax_mem.plot([p["g"] for p in kept], [p["peak_rss_mb"] for p in kept], marker="o")
    ax_mem.set_xscale("log", base=2)
    ax_mem.set_xlabel("G")
    ax_mem.set_ylabel("peak RSS MB")
    ax_mem.grid(alpha=0.3)
    fig.suptitle(title, fontsize="small")
    fig.savefig(png, dpi=100)


def measure(args, g_values, lengths):
    """(points against G, points against length, prefill seconds by G, parameter count)."""
    with tempfile.TemporaryDirectory() as work:
        checkpoint = os.path.join(work, args.size)
        parameters = workload.make_checkpoint(checkpoint, args.size)
        prefill = prefill_times(checkpoint, g_values, args.prompts_per_step)
        print(json.dumps({"prefill": prefill}), flush=True)
        by_g = []
        for g in g_values:
            by_g.append(point(checkpoint, args.size, args.steps, work, g, workload.MAX_NEW_TOKENS,
                              args.prompts_per_step))
            print(json.dumps(by_g[-1]), flush=True)
        by_length = []
        for t in lengths:
            found = [p for p in by_g if p["g"] == workload.NUM_GENERATIONS and t == workload.MAX_NEW_TOKENS]
            by_length.append(found[0] if found else point(checkpoint, args.size, args.steps, work,
                                                          workload.NUM_GENERATIONS, t, args.prompts_per_step))
            print(json.dumps(by_length[-1]), flush=True)
    return by_g, by_length, prefill, parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--prompts-per-step", type=int, default=workload.PROMPTS_PER_STEP)
    parser.add_argument("--g-values", default=",".join(map(str, G_VALUES)))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--png")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--from-json", help="plot and tabulate the points of an earlier run's --json instead")
    parser.add_argument("--parameters", type=float, default=12.6e6, help="with --from-json: for the title")
    args = parser.parse_args()
    g_values = [int(x) for x in args.g_values.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            saved = json.load(f)
        by_g, by_length = saved["by_g"], saved["by_length"]
        prefill = {int(k): v for k, v in saved["prefill"].items()}
        parameters = args.parameters
    else:
        by_g, by_length, prefill, parameters = measure(args, g_values, lengths)
    title = (f"grpo_jax GRPO step, Qwen2 {parameters / 1e6:.1f}M, {args.prompts_per_step} prompts x "
             f"{workload.PROMPT_WORDS} tokens, {os.cpu_count()}-core CPU")
    if args.png:
        plot(by_g, by_length, prefill, args.png, title)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"by_g": by_g, "by_length": by_length, "prefill": prefill}, f, indent=1)

    def row(p):
        if "killed" in p:
            return f"| {p['g']} | {p['length']} | {p['killed']} |" + " |" * 6
        return (f"| {p['g']} | {p['length']} | {p['step_s']:.2f} | "
                + " | ".join(f"{p[k]:.2f}" for k in PHASES) + f" | {p['peak_rss_mb']:,.0f} |")

    lines = [title + f"; median of {args.steps} timed step(s) after a warm-up.", "",
             "| G | completion tokens | step s | generation s | reward s | ref logprobs s | update s | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [row(p) for p in by_g] + [row(p) for p in by_length if p["g"] != workload.NUM_GENERATIONS
                                       or p["length"] != workload.MAX_NEW_TOKENS]
    lines += ["", "| G | " + " | ".join(str(g) for g in prefill) + " |", "| --- |" + " --- |" * len(prefill),
              "| prefill + 1 step s | " + " | ".join(f"{v:.3f}" for v in prefill.values()) + " |"]
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
