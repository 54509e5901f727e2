"""``grpo-jax compare``: GRPO against PPO with a learned critic, and the critic-free RLOO and REINFORCE++, on one
task with the same model, data, rewards, sampler, optimizer and hardware.

Each (algorithm, seed) trains in a process of its own, so that its peak RSS is its own, into
OUTPUT_DIR/<algorithm>-seed<k>/ (a normal run directory: metrics.jsonl, checkpoints, curves.png). Every run
samples the same number of completions per step: GRPO, RLOO and REINFORCE++ G for each of B prompts, PPO one
for each of B * G prompts (its critic, not a group, supplies the baseline). Only ``grpo.algorithm`` (and for
PPO the batch layout) differs from the base config.

``--variant NAME=field=value,...`` (repeatable) compares named variants of the base config instead of
algorithms, e.g. tool calls against the same budget without them::

    grpo-jax compare --config experiments/tool_products.py --output-dir runs/tools --variant tools= \
        --variant no-tools=tools.max_tool_calls=0,sft.tool_code_field=None

Then OUTPUT_DIR gets:

  compare.json  every run's figures and each algorithm's summary over seeds
  compare.md    the side-by-side table
  compare.png   held-out accuracy against steps and against training seconds, mean over seeds, min-max band

Measured per run: held-out accuracy at every eval step; seconds per step by phase (median over steps after the
first, which compiles); parameter and optimizer bytes (policy, reference, critic); XLA's memory analysis of
each update program (the policy's and, for PPO, the critic's) compiled for the first step's minibatch; the
process's peak RSS. A directory whose run finished already is read, not run again; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from grpo_jax import storage
from grpo_jax.metrics import read_metrics
from grpo_jax.trainer.config import ALGORITHMS, TrainConfig, apply_overrides

logger = logging.getLogger(__name__)

REQUEST_FILE = "compare_request.json"  # a run's config, as the parent hands it to the child
RESULT_FILE = "compare_result.json"  # what the child measured inside the run (bytes, XLA memory analysis)
RESULTS_JSON, TABLE_FILE, PLOT_FILE = "compare.json", "compare.md", "compare.png"
PHASES = ("time/sample_s", "time/tools_s", "time/reward_s", "time/logprobs_s", "time/update_s",
          "time/critic_update_s", "time/step_s")
MB = 1e6
PHASE_NAMES = {"time/sample_s": "sample", "time/tools_s": "tool calls", "time/reward_s": "reward",
               "time/logprobs_s": "log-probs+values", "time/update_s": "policy update",
               "time/critic_update_s": "critic update"}


def algorithm_config(base: TrainConfig, algorithm: str, seed: int) -> TrainConfig:
    """``base`` trained by ``algorithm`` from ``seed``, at the same number of completions per step."""
    overrides = [f"grpo.algorithm={algorithm}", f"run.seed={seed}", f"data.seed={seed}"]
    if algorithm == "ppo":
        completions = base.data.batch_size * base.sampling.num_generations
        overrides += ["sampling.num_generations=1", f"data.batch_size={completions}"]
    return apply_overrides(base, overrides)


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """"NAME=field=value,field=value" (or "NAME=" for the base config itself) -> (NAME, overrides)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or "/" in name:
        raise ValueError(f"--variant {spec!r}: expected NAME=field=value,... (or NAME= for the base config)")
    return name.strip(), [item.strip() for item in rest.split(",") if item.strip()]


def variant_config(base: TrainConfig, overrides: Sequence[str], seed: int) -> TrainConfig:
    """``base`` with a variant's ``overrides``, from ``seed``."""
    return apply_overrides(base, [*overrides, f"run.seed={seed}", f"data.seed={seed}"])


# ---- one run, in its own process ------------------------------------------------------------------------

def _tree_bytes(tree: Any) -> int:
    import jax

    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _memory_analysis(lowered) -> dict[str, int]:
    analysis = lowered.compile().memory_analysis()
    sizes = {name: int(getattr(analysis, f"{name}_size_in_bytes")) for name in ("argument", "output", "temp", "alias")}
    sizes["peak"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
    return sizes


def run_child(run_dir: str) -> None:
    """Train the run described by RUN_DIR/compare_request.json (resuming it if it has checkpoints) and write
    RUN_DIR/compare_result.json: state bytes and the update programs' XLA memory analysis."""
    from grpo_jax.trainer import build_context
    from grpo_jax.trainer.loop import GRPOTrainer

    config = TrainConfig.from_dict(json.loads(storage.read_text(storage.join(run_dir, REQUEST_FILE))))
    ctx, params = build_context(config, run_dir)
    trainer = GRPOTrainer(ctx, params, resume=True)
    del params
    first: dict[str, Any] = {}
    update = trainer._update

    def keep_first_minibatch(minibatches, step):  # the programs' arguments, for their memory analysis after the run
        first.setdefault("minibatch", minibatches[0])
        return update(minibatches, step)

    trainer._update = keep_first_minibatch
    trainer.run()
    state = trainer.state
    result: dict[str, Any] = {
        "bytes": {"policy_params": _tree_bytes(state.params), "policy_optimizer": _tree_bytes(state.opt_state),
                  "reference": _tree_bytes(state.ref_params),
                  "critic_params": _tree_bytes(state.critic.params) if state.critic is not None else 0,
                  "critic_optimizer": _tree_bytes(state.critic.opt_state) if state.critic is not None else 0},
        "xla": {},
    }
    mb = first.get("minibatch")
    if mb is not None:
        result["xla"]["policy_update"] = _memory_analysis(trainer.update.lower(state, mb.arrays, mb.prompt_group))
        if state.critic is not None:
            result["xla"]["critic_update"] = _memory_analysis(
                trainer.critic_update.lower(trainer._critic(), mb.arrays, mb.prompt_group))
    storage.write_text(storage.join(run_dir, RESULT_FILE), json.dumps(result, indent=2))


def run_in_subprocess(config: TrainConfig, run_dir: str) -> int:
    """Run ``config`` into ``run_dir`` in a child process (``run_child``); returns the child's peak RSS in
    bytes. Raises RuntimeError naming the run directory when the child fails."""
    storage.makedirs(run_dir)
    storage.write_text(storage.join(run_dir, REQUEST_FILE), json.dumps(config.to_dict(), indent=2))
    child = subprocess.Popen([sys.executable, "-m", "grpo_jax.compare", "--child", run_dir])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the run in {run_dir} failed (exit status {child.returncode}); its output above says "
                           "why, and `grpo-jax compare` with the same arguments resumes it")
    return int(usage.ru_maxrss) * 1024  # Linux reports KiB


# ---- figures of a finished run --------------------------------------------------------------------------

def run_figures(run_dir: str) -> dict[str, Any]:
    """The figures of one finished run: its eval curve (step, accuracy, training seconds so far), its training
    batches' curve (step, the sampled completions' accuracy, and with tools the share that called the tool),
    the median seconds of each phase over the steps after the first, and the child's measurements."""
    records = read_metrics(run_dir)
    train_seconds, curve, batch_curve = 0.0, [], []
    for r in records:
        train_seconds += r.get("time/step_s", 0.0)
        if "eval/accuracy" in r:
            curve.append({"step": r["step"], "accuracy": r["eval/accuracy"], "train_s": train_seconds})
        if "accuracy" in r:
            batch_curve.append({"step": r["step"], "accuracy": r["accuracy"],
                                **({"tool_use": r["tools/used_frac"]} if "tools/used_frac" in r else {})})
    steps = [r for r in records if r["step"] >= 2 and "time/step_s" in r]
    phases = {name: statistics.median(r[name] for r in steps) for name in PHASES if steps and name in steps[0]}
    last = records[-1] if records else {}
    evals = [r for r in records if "eval/tool_calls_per_completion" in r]
    tools = {"tool_calls_eval_last": evals[-1]["eval/tool_calls_per_completion"]} if evals else {}
    return {"curve": curve, "batch_curve": batch_curve, "phases_s": phases, "train_s": train_seconds,
            "reward_last": last.get("reward/mean"), **tools,
            **json.loads(storage.read_text(storage.join(run_dir, RESULT_FILE)))}


def summarize_algorithm(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One algorithm over its seeds: held-out accuracy at the start and the end (means; min and max at the end),
    each phase's mean of the per-run medians, and the first seed's memory figures (the same programs and shapes
    in every seed)."""
    finals = [run["curve"][-1]["accuracy"] for run in runs]
    starts = [run["curve"][0]["accuracy"] for run in runs]
    phases = {name: statistics.mean(run["phases_s"][name] for run in runs) for name in runs[0]["phases_s"]}
    first = runs[0]
    tools = ({"tool_calls_eval_last": statistics.mean(run["tool_calls_eval_last"] for run in runs)}
             if "tool_calls_eval_last" in first else {})
    return {**tools, "seeds": len(runs), "accuracy_start": statistics.mean(starts),
            "accuracy_final": statistics.mean(finals),
            "accuracy_final_min": min(finals), "accuracy_final_max": max(finals),
            "train_s": statistics.mean(run["train_s"] for run in runs), "phases_s": phases,
            "bytes": first["bytes"], "xla": first["xla"], "rss_peak": max(run["rss_peak"] for run in runs),
            "completions_per_step": first["completions_per_step"]}


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """The side-by-side markdown table of ``summarize_algorithm``'s results."""
    with_tools = any("tool_calls_eval_last" in s for s in summaries.values())
    head = ("| run | completions / step | held-out accuracy: start → end, mean [min–max] over seeds | "
            + ("tool calls per eval completion (end) | " if with_tools else "")
            + f"s / step ({' / '.join(PHASE_NAMES[k] for k in PHASES[:-1] if with_tools or k != 'time/tools_s')}) | "
            "params + optimizer MB (critic's) | XLA update peak MB (policy + critic) | peak RSS MB |\n"
            + "| --- " * (7 + with_tools) + "|\n")
    rows = []
    for name, s in summaries.items():
        p = s["phases_s"]
        phases = " / ".join(f"{p.get(k, 0.0):.2f}" for k in PHASES[:-1] if with_tools or k != "time/tools_s")
        tools = f"{s.get('tool_calls_eval_last', 0.0):.2f} | " if with_tools else ""
        b = s["bytes"]
        critic_bytes = b["critic_params"] + b["critic_optimizer"]
        total_bytes = b["policy_params"] + b["policy_optimizer"] + b["reference"] + critic_bytes
        xla = s["xla"]
        peaks = " + ".join(f"{xla[k]['peak'] / MB:.1f}" for k in ("policy_update", "critic_update") if k in xla)
        rows.append(f"| {name} | {s['completions_per_step']} | {s['accuracy_start']:.3f} → {s['accuracy_final']:.3f} "
                    f"[{s['accuracy_final_min']:.3f}–{s['accuracy_final_max']:.3f}] | "
                    f"{tools}{p.get('time/step_s', 0):.2f} "
                    f"({phases}) | {total_bytes / MB:.2f} ({critic_bytes / MB:.2f}) | {peaks} | "
                    f"{s['rss_peak'] / MB:.0f} |")
    return head + "\n".join(rows) + "\n"


def plot(results: dict[str, list[dict[str, Any]]], png_path: str) -> str:
    """Held-out accuracy against steps and against training seconds (each run's mean over seeds and its min-max
    band), and the sampled training batches' accuracy against steps (with tools, dashed: the share of
    completions that called the tool). Written atomically; returns the path."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    by_step, by_time, batches = fig.subplots(1, 3)
    for name, runs in results.items():
        steps = [point["step"] for point in runs[0]["curve"]]
        accuracy = np.array([[point["accuracy"] for point in run["curve"]] for run in runs])
        seconds = np.mean([[point["train_s"] for point in run["curve"]] for run in runs], axis=0)
        for ax, x in ((by_step, steps), (by_time, seconds)):
            (line,) = ax.plot(x, accuracy.mean(axis=0), marker="o", markersize=3, label=f"{name} ({len(runs)} seeds)")
            ax.fill_between(x, accuracy.min(axis=0), accuracy.max(axis=0), color=line.get_color(), alpha=0.2)
        batch_runs = [run.get("batch_curve", []) for run in runs]
        if batch_runs[0] and all(len(b) == len(batch_runs[0]) for b in batch_runs):
            x = [point["step"] for point in batch_runs[0]]
            batches.plot(x, np.mean([[p["accuracy"] for p in b] for b in batch_runs], axis=0), color=line.get_color(),
                         label=f"{name}: accuracy")
            if "tool_use" in batch_runs[0][0]:
                batches.plot(x, np.mean([[p["tool_use"] for p in b] for b in batch_runs], axis=0), linestyle="--",
                             color=line.get_color(), label=f"{name}: called the tool")
    by_step.set_xlabel("step")
    by_time.set_xlabel("training seconds (sampling + rewards + updates, no eval)")
    batches.set_xlabel("step")
    for ax in (by_step, by_time):
        ax.set_ylabel("held-out accuracy")
    batches.set_ylabel("sampled training batch (share of completions)")
    for ax in (by_step, by_time, batches):
        ax.grid(alpha=0.3)
    by_step.legend(loc="lower right")
    batches.legend(loc="lower right", fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    storage.write_bytes(png_path, buffer.getvalue())
    return png_path


def compare(base: TrainConfig, output_dir: str, *, algorithms: Sequence[str] = ALGORITHMS,
            seeds: Sequence[int] = (0, 1, 2), variants: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Train every (algorithm, seed) of ``base`` (see the module docstring), or with ``variants`` ({name:
    overrides}) every (variant, seed), and write compare.json, compare.md and compare.png into ``output_dir``;
    returns compare.json's content."""
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if not variants and (unknown or not algorithms) or not seeds:
        raise ValueError(f"compare: algorithms {list(algorithms)} and seeds {list(seeds)}: expected at least one "
                         f"seed and algorithms from {ALGORITHMS}")
    if variants:
        configs = {name: functools.partial(variant_config, base, overrides) for name, overrides in variants.items()}
        for make in configs.values():
            make(seeds[0])  # a bad override fails here, before any run
    else:
        configs = {name: functools.partial(algorithm_config, base, name) for name in algorithms}
    if not base.run.eval_steps:
        raise ValueError("compare: run.eval_steps=0 evaluates only at the start and the end; set it (e.g. 10) "
                         "for a learning curve")
    storage.makedirs(output_dir)
    results: dict[str, list[dict[str, Any]]] = {}
    for algorithm, make_config in configs.items():
        for seed in seeds:
            config = make_config(seed)
            run_dir = storage.join(output_dir, f"{algorithm}-seed{seed}")
            figures_file = storage.join(run_dir, "compare_figures.json")
            if storage.exists(figures_file):  # finished earlier: read, not run again
                figures = json.loads(storage.read_text(figures_file))
            else:
                logger.info("compare: %s, seed %d -> %s", algorithm, seed, run_dir)
                rss = run_in_subprocess(config, run_dir)
                figures = dict(run_figures(run_dir), rss_peak=rss,
                               completions_per_step=config.data.batch_size * config.sampling.num_generations)
                storage.write_text(figures_file, json.dumps(figures, indent=2))
            results.setdefault(algorithm, []).append(figures)
    summaries = {name: summarize_algorithm(runs) for name, runs in results.items()}
    out = {"base_config": base.to_dict(), "seeds": list(seeds), "summaries": summaries, "runs": results}
    storage.write_text(storage.join(output_dir, RESULTS_JSON), json.dumps(out, indent=2))
    storage.write_text(storage.join(output_dir, TABLE_FILE), table(summaries))
    plot(results, storage.join(output_dir, PLOT_FILE))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The child entry point (``python -m grpo_jax.compare --child RUN_DIR``); users run ``grpo-jax compare``."""
    parser = argparse.ArgumentParser(prog="python -m grpo_jax.compare")
    parser.add_argument("--child", required=True, help="the run directory to train (written by `grpo-jax compare`)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_child(args.child)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
