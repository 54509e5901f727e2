"""A trained run's export, scored by transformers: the same held-out greedy accuracy as grpo_jax's own eval.

What users keep of a run is ``grpo-jax export``'s Hugging Face directory: that is what they serve, share or
train further, with PyTorch stacks that know nothing of grpo_jax. This script checks that the model in it
is the model that was trained and evaluated. It exports a checkpoint of RUN_DIR (float32), then

  - grpo_jax side: builds the run's context as ``grpo-jax eval`` does and computes its held-out greedy
    accuracy (``ctx.eval_metrics``), and the greedy completions of the same problems (``rollout`` with the
    eval's greedy sampling settings and batches);
  - transformers side: loads the export with ``AutoTokenizer`` / ``AutoModelForCausalLM`` only, encodes the
    same rendered prompts (chat template applied, left padding), runs ``generate`` greedily with the run's
    completion length and stop tokens, decodes the new tokens up to and including the first stop token
    as the rollout decodes (special tokens skipped), and scores them with the run's reward specs.

Equal accuracies, and above all identical completion texts, show that the weights, the model config, the
tokenizer, the chat template and the stop tokens survive the export. Greedy decoding in two frameworks can
still part ways where two tokens' logits are within rounding of each other, so the accuracies must agree
within ``--tolerance-points`` (percentage points) and the fraction of identical completions is reported
with every mismatching problem. The prompts' token ids under both tokenizers are compared as well: for some
model types (qwen2) transformers' AutoTokenizer loads its own tokenizer class whatever the export names, and
a prompt encoded differently is a cause of a mismatch that the weights are not to blame for. grpo_jax
evaluates at the run's compute dtype (model.dtype) and transformers in float32: for a run that computes in
bfloat16, pass ``model.dtype=float32`` to compare the weights alone. Exit status 1 when the accuracies
differ by more than the tolerance.

    python benchmarks/transformers_eval.py RUN_DIR [--step N] [--export-dir DIR] [--json OUT]
                                            [--batch-size B] [--tolerance-points P] [field=value ...]

Without ``--export-dir`` the export goes to a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run's output directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--export-dir", help="where the Hugging Face export is written and kept "
                                             "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--json", help="write the result here as JSON")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="prompts per transformers generate call (default: the run's eval_batch_size)")
    parser.add_argument("--tolerance-points", type=float, default=2.0,
                        help="largest accepted |accuracy difference| in percentage points")
    parser.add_argument("overrides", nargs="*", help="field=value overrides of the run's config, as for "
                                                     "grpo-jax eval (e.g. run.eval_batch_size=50)")
    return parser.parse_args(argv)


def grpo_jax_completions(ctx, params) -> list[str]:
    """The greedy completions of ``ctx.eval_examples``, in the eval's batches and greedy sampling settings."""
    import jax

    from grpo_jax.trainer.rollout import rollout

    greedy = dataclasses.replace(ctx.sampling, num_generations=1, greedy=True)
    prompts = [ctx.render(e) for e in ctx.eval_examples]
    size = ctx.config.run.eval_batch_size
    texts: list[str] = []
    for start in range(0, len(prompts), size):
        batch = [ctx.eval_examples[i] for i in range(start, min(start + size, len(prompts)))]
        r = rollout(ctx.model, params, ctx.tokenizer, batch, jax.random.key(0), greedy, ctx.specs,
                    prompt_texts=prompts[start:start + size], add_special_tokens=ctx.add_special_tokens)
        texts += r.texts
    return texts


def stop_mask(tokens: np.ndarray, stop_ids: Sequence[int]) -> np.ndarray:
    """[B, T] int32: 1 up to and including each row's first stop token (all of a row without one), as the
    grpo_jax sampler's completion mask."""
    stops = np.isin(tokens, np.asarray(stop_ids))
    before = np.cumsum(stops, axis=1) - stops  # stop tokens strictly before each position
    return (before == 0).astype(np.int32)


def transformers_completions(export_dir: str, prompts: Sequence[str], *, add_special_tokens: bool,
                             max_new_tokens: int, stop_ids: Sequence[int], pad_id: int,
                             batch_size: int) -> tuple[list[str], dict]:
    """Greedy completions of ``prompts`` by transformers from the export alone, and what it was loaded as."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_jax.trainer.rollout import decode_completions

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    tokenizer.padding_side = "left"  # batched generation: every prompt ends at the last column
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    info = {"load_s": time.perf_counter() - t0, "model_class": type(model).__name__,
            "tokenizer_class": type(tokenizer).__name__,
            "export_stop_ids": sorted(np.atleast_1d(model.generation_config.eos_token_id or []).tolist())}
    info["prompt_ids"] = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    t0 = time.perf_counter()
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[start:start + batch_size]), add_special_tokens=add_special_tokens,
                        padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=list(stop_ids), pad_token_id=pad_id)
        new = out[:, enc["input_ids"].shape[1]:].numpy()
        texts += decode_completions(tokenizer, new, stop_mask(new, stop_ids))
    info["generate_s"] = time.perf_counter() - t0
    return texts, info


def solved(ctx, texts: Sequence[str]) -> np.ndarray:
    """[N] bool: whether each eval problem's completion scores as solved by the run's accuracy reward."""
    from grpo_jax.rewards import score
    from grpo_jax.trainer.evaluation import SOLVED
    from grpo_jax.trainer.rollout import example_columns

    _, per_reward, _ = score(ctx.specs, list(texts), example_columns(ctx.eval_examples, 1))
    return per_reward[ctx.config.grpo.accuracy_reward_name] >= SOLVED


def compare(run_dir: str, export_dir: str, *, step: int | None, overrides: Sequence[str],
            batch_size: int | None) -> dict:
    import jax

    from grpo_jax import cli

    times = {}
    t0 = time.perf_counter()
    # the sampled maj@k / pass@k of the eval are not compared: greedy accuracy only
    ctx, params, step = cli._restored(argparse.Namespace(run_dir=run_dir, step=step,
                                                         overrides=[*overrides, "run.eval_num_samples=0"]))
    if not len(ctx.eval_examples):
        raise ValueError("the run's data.eval_examples is 0; pass data.eval_examples=N")
    times["restore_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if cli.main(["export", run_dir, export_dir, "--step", str(step), "--dtype", "float32", *overrides]) != 0:
        raise RuntimeError(f"grpo-jax export of step {step} of {run_dir} failed")
    times["export_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = ctx.eval_metrics(params, jax.random.key(ctx.config.run.seed + 11))  # as grpo-jax eval
    times["grpo_jax_eval_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = grpo_jax_completions(ctx, params)
    times["grpo_jax_completions_s"] = time.perf_counter() - t0

    s = ctx.sampling
    prompts = [ctx.render(e) for e in ctx.eval_examples]
    theirs, info = transformers_completions(
        export_dir, prompts, add_special_tokens=ctx.add_special_tokens, max_new_tokens=s.max_new_tokens,
        stop_ids=s.eos_token_ids, pad_id=s.pad_token_id, batch_size=batch_size or ctx.config.run.eval_batch_size)
    times["transformers_load_s"], times["transformers_generate_s"] = info.pop("load_s"), info.pop("generate_s")

    # a tokenizer that encodes differently (transformers picks its class by the model type for some) is a
    # cause of different completions that the weights are not to blame for
    ids = ctx.tokenizer(prompts, add_special_tokens=ctx.add_special_tokens)["input_ids"]
    same_ids = [list(a) == list(b) for a, b in zip(ids, info.pop("prompt_ids"), strict=True)]
    ours_ok, theirs_ok = solved(ctx, ours), solved(ctx, theirs)
    accuracy, hf_accuracy = metrics["eval/accuracy"], float(theirs_ok.mean())
    same = [a == b for a, b in zip(ours, theirs, strict=True)]
    mismatches = [{"index": i, "prompt": prompts[i], "answer": ctx.eval_examples[i].get("answer"),
                   "grpo_jax": ours[i], "transformers": theirs[i], "same_prompt_tokens": same_ids[i],
                   "grpo_jax_solved": bool(ours_ok[i]), "transformers_solved": bool(theirs_ok[i])}
                  for i in range(len(prompts)) if not same[i]]
    return {
        "run_dir": run_dir, "step": step, "num_problems": len(prompts),
        "accuracy_reward": ctx.config.grpo.accuracy_reward_name,
        "max_new_tokens": s.max_new_tokens, "run_stop_ids": list(s.eos_token_ids), **info,
        "model_dtype": ctx.config.model.dtype, "export_dtype": "float32",
        "grpo_jax_accuracy": accuracy,
        # the same score recomputed from the completions compared below: equal to the eval's unless the
        # rollouts here differ from the eval's own
        "grpo_jax_completions_accuracy": float(ours_ok.mean()),
        "transformers_accuracy": hf_accuracy,
        "difference_points": 100.0 * (hf_accuracy - accuracy),
        "identical_completions": float(np.mean(same)),
        "identical_prompt_tokens": float(np.mean(same_ids)),
        "same_verdict": float(np.mean(ours_ok == theirs_ok)),
        "times": times, "mismatches": mismatches,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    export_dir = args.export_dir or tempfile.mkdtemp(prefix="grpo-jax-export-")
    try:
        result = compare(args.run_dir, export_dir, step=args.step, overrides=args.overrides,
                         batch_size=args.batch_size)
    finally:
        if not args.export_dir:
            shutil.rmtree(export_dir, ignore_errors=True)
    result["export_dir"] = args.export_dir
    result["tolerance_points"] = args.tolerance_points
    result["passed"] = abs(result["difference_points"]) <= args.tolerance_points
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    for m in result["mismatches"]:
        cause = "" if m["same_prompt_tokens"] else " (the prompt's tokens differ)"
        print(f"problem {m['index']}{cause}: grpo_jax {m['grpo_jax']!r} vs transformers {m['transformers']!r}")
    t = result["times"]
    print(f"step {result['step']} of {args.run_dir}, {result['num_problems']} held-out problems, greedy, "
          f"{result['max_new_tokens']} new tokens at most:\n"
          f"  grpo_jax eval accuracy      {100 * result['grpo_jax_accuracy']:6.2f}%  ({t['grpo_jax_eval_s']:.1f} s)\n"
          f"  transformers accuracy       {100 * result['transformers_accuracy']:6.2f}%  "
          f"(load {t['transformers_load_s']:.1f} s, generate {t['transformers_generate_s']:.1f} s)\n"
          f"  difference                  {result['difference_points']:+6.2f} points "
          f"(tolerance {args.tolerance_points:g})\n"
          f"  identical completions       {100 * result['identical_completions']:6.2f}%\n"
          f"  identical prompt tokens     {100 * result['identical_prompt_tokens']:6.2f}%  "
          f"(transformers' {result['tokenizer_class']} against the run's tokenizer)\n"
          f"  export stop ids {result['export_stop_ids']}, run stop ids {result['run_stop_ids']}")
    if not result["passed"]:
        print("transformers_eval: the accuracies differ by more than the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
