"""Whole GRPO steps side by side: grpo_jax against Hugging Face TRL and google-tunix (issue 8).

The workload is benchmarks/peers/workload.py: a random-init Qwen2 checkpoint (small 12.6M, medium 100M),
16 prompts of 32 tokens per step, G = 8, 128 new tokens, mu = 1, beta = 0.04, AdamW at the same settings,
the same rule-based reward. Each framework runs in its own process (its own virtual environment for the
peers), one warm-up step then --steps timed steps; the frameworks alternate for --rounds rounds.

    bash benchmarks/peers/setup_trl.sh; bash benchmarks/peers/setup_tunix.sh   # once: the peers' venvs
    python benchmarks/bench_grpo_step.py --sizes small --rounds 3 --steps 2 --markdown docs/benchmarks.md

Reported per framework: the median step time and its split (generation, reward, reference log-probs,
update), the first step (compile / warm-up), peak RSS; and the ratios peer / grpo_jax as min / median / max
over rounds (each round's ratio is of the two frameworks' median step times in that round).
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
PEERS = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS)
sys.path.insert(0, HERE)

import workload  # noqa: E402
from report import emit_table  # noqa: E402

PEERS_DIR = os.environ.get("GRPO_JAX_PEERS_DIR", "/tmp/grpo-jax-peers")
WORKERS = {  # framework -> (python, worker script)
    "grpo_jax": (sys.executable, os.path.join(PEERS, "grpo_jax_step.py")),
    "trl": (os.path.join(PEERS_DIR, "trl-venv", "bin", "python"), os.path.join(PEERS, "trl_step.py")),
    "tunix": (os.path.join(PEERS_DIR, "tunix-venv", "bin", "python"), os.path.join(PEERS, "tunix_step.py")),
}
PHASES = ("generation_s", "reward_s", "logprobs_s", "update_s")


def run_worker(framework: str, checkpoint: str, size: str, steps: int, out_dir: str, tag: str,
               extra: list[str] | None = None) -> dict:
    """One worker process; its result dict (workload.py's schema)."""
    python, script = WORKERS[framework]
    if not os.path.exists(python):
        raise FileNotFoundError(f"{framework}: no python at {python}; run benchmarks/peers/setup_{framework}.sh")
    out = os.path.join(out_dir, f"{framework}-{size}-{tag}.json")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) if framework == "grpo_jax" else "")
    cmd = [python, script, "--checkpoint", checkpoint, "--size", size, "--steps", str(steps), "--out", out,
           *(extra or [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} worker failed ({proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def median_step(result: dict) -> float:
    return statistics.median(s["step_s"] for s in result["steps"])


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per framework: medians over every timed step of every round, and per-round medians."""
    out = {}
    for framework, results in runs.items():
        steps = [s for r in results for s in r["steps"]]
        phases = {p: (statistics.median(s[p] for s in steps) if all(s.get(p) is not None for s in steps) else None)
                  for p in PHASES}
        out[framework] = {"step_s": statistics.median(s["step_s"] for s in steps), **phases,
                          "round_step_s": [median_step(r) for r in results],
                          "first_step_s": statistics.median(r["first_step_s"] for r in results),
                          "setup_s": statistics.median(r["setup_s"] for r in results),
                          "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                          "tokens_per_step": statistics.median(s["generated_tokens"] for s in steps),
                          "parameters": results[0].get("parameters"), "notes": results[0].get("notes", "")}
    return out


def table(size: str, summary: dict[str, dict]) -> list[str]:
    def fmt(x):
        return "—" if x is None else f"{x:.2f}"

    base = summary["grpo_jax"]["round_step_s"]
    lines = [f"| {size} | {f} | {fmt(s['step_s'])} | " + " | ".join(fmt(s[p]) for p in PHASES)
             + f" | {fmt(s['first_step_s'])} | {s['peak_rss_mb']:,.0f} | {s['tokens_per_step']:,.0f} | "
             + ("—" if f == "grpo_jax" else "{:.1f} / {:.1f} / {:.1f}".format(
                 *(lambda r: (min(r), statistics.median(r), max(r)))(
                     [p / j for p, j in zip(s["round_step_s"], base, strict=True)])))
             + " |" for f, s in summary.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--frameworks", default="grpo_jax,trl,tunix")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per worker run (after one warm-up)")
    parser.add_argument("--json", help="write every worker's result here")
    parser.add_argument("--markdown", help="append the table to this file")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1,
                        help="micro-batches per update, for grpo_jax and TRL (Tunix's worker has no such option)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype in every framework; parameters and optimizer state stay float32 "
                             "(bfloat16: TRL's bf16=True autocast, the JAX models' dtype)")
    args = parser.parse_args()
    if args.gradient_accumulation_steps > 1 and "tunix" in args.frameworks.split(","):
        raise SystemExit("--gradient-accumulation-steps: the Tunix worker cannot accumulate; leave tunix out of "
                         "--frameworks")
    extra = ["--dtype", args.dtype]
    if args.gradient_accumulation_steps > 1:
        extra += ["--gradient-accumulation-steps", str(args.gradient_accumulation_steps)]
    frameworks = args.frameworks.split(",")
    if frameworks[0] != "grpo_jax":
        raise SystemExit("--frameworks must start with grpo_jax (the ratios are against it)")
    lines = [f"Machine: {os.cpu_count()}-core CPU. {workload.PROMPTS_PER_STEP} prompts x {workload.PROMPT_WORDS} "
             f"tokens, G = {workload.NUM_GENERATIONS}, {workload.MAX_NEW_TOKENS} new tokens, mu = 1, "
             f"beta = {workload.BETA}, {args.dtype} compute; {args.rounds} alternating rounds of 1 warm-up + "
             f"{args.steps} timed steps"
             f"; {args.gradient_accumulation_steps} micro-batch(es) per update.",
             "", "| model | framework | step s | generation s | reward s | ref logprobs s | update s | first step s "
             "| peak RSS MB | tokens / step | peer / grpo_jax (min / median / max) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    everything = {}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes.split(","):
            checkpoint = os.path.join(work, size)
            parameters = workload.make_checkpoint(checkpoint, size)
            runs: dict[str, list[dict]] = {f: [] for f in frameworks}
            for r in range(args.rounds):
                for f in frameworks:
                    result = run_worker(f, checkpoint, size, args.steps, work, str(r), extra)
                    runs[f].append(result)
                    print(f"{size} round {r} {f}: median step {median_step(result):.2f} s, "
                          f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
            summary = summarize(runs)
            everything[size] = {"parameters": parameters, "runs": runs, "summary": summary}
            lines += [line.replace(f"| {size} |", f"| {size} ({parameters / 1e6:.1f}M) |", 1)
                      for line in table(size, summary)]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(everything, f, indent=1)
    emit_table(lines, args.markdown)


if __name__ == "__main__":
    main()
