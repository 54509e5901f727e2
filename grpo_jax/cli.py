"""The ``grpo-jax`` command line.

  grpo-jax train  [--config experiments/X.py] [--output-dir DIR] [--resume] [field=value ...]
                  GRPO (after the recipe's SFT warm-up, if any). No --config: the embedded default run.
  grpo-jax sft    [--config ...] [--output-dir DIR] [field=value ...]
                  only the supervised warm-up; writes a Hugging Face checkpoint to DIR/hf
  grpo-jax eval   RUN_DIR [--step N] [field=value ...]   held-out metrics of a checkpoint (JSON)
  grpo-jax export RUN_DIR OUT_DIR [--step N] [--dtype bfloat16] [--overwrite] [--adapter-only]
                  checkpoint -> Hugging Face directory (a non-empty OUT_DIR only with --overwrite); a LoRA
                  run's model is merged, or with --adapter-only its adapters go to a PEFT directory
  grpo-jax demo   GRPO on single-digit addition with a tabular policy (seconds)

Overrides are ``section.field=value`` (or a bare field name when unique), e.g. ``grpo.beta=0``,
``max_steps=20``, ``run.mesh=fsdp:-1``; ``--section.field=value`` is accepted too. Unknown fields and invalid
values are errors before anything is built.

Exit status: 0 on success; 2 with one line ``grpo-jax: error: ...`` for a config or input error (a setting, a
flag or an input file to fix: grpo_jax.errors.ConfigError); 3 when a run stopped on purpose (e.g. its loss
turned NaN: grpo_jax.errors.RunFailure), also without a traceback; any other exception is a bug and shows its
traceback (1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from grpo_jax import run_lock, storage
from grpo_jax.errors import ConfigError, OutputExistsError, RunFailure


def _add_dataclass_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    for field in dataclasses.fields(config_type):
        parser.add_argument(
            "--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
            help=f"(default: {field.default})",
        )


def _demo(args: argparse.Namespace) -> int:
    from grpo_jax.demo import DemoConfig, run

    config = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    history = run(config)
    first, last = history[0], history[-1]
    print(
        f"reward mean {first['reward/mean']:.3f} -> {last['reward/mean']:.3f}; "
        f"greedy accuracy {first['eval/accuracy']:.3f} -> {last['eval/accuracy']:.3f}"
    )
    return 0


def _config_from(args: argparse.Namespace):
    from grpo_jax import distributed
    from grpo_jax.trainer import apply_overrides, load_config
    from grpo_jax.trainer.default import get_config

    config = apply_overrides(load_config(args.config) if args.config else get_config(), args.overrides)
    # join the other hosts (if any) after the config is known to be valid and before any JAX call
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           auto=True if args.distributed_auto else None)
    return config


def _train(args: argparse.Namespace) -> int:
    from grpo_jax.metrics import read_metrics, summarize
    from grpo_jax.trainer import build_context
    from grpo_jax.trainer.loop import GRPOTrainer

    config = _config_from(args)
    if args.resume and not args.output_dir and not config.run.output_dir:
        raise ConfigError("--resume needs --output-dir (the run directory to continue)")
    ctx, params = build_context(config, args.output_dir)
    storage.makedirs(ctx.output_dir)
    print(f"grpo-jax: training {config.name!r} into {ctx.output_dir}", file=sys.stderr)
    trainer = GRPOTrainer(ctx, params, resume=args.resume)
    del params  # the trainer owns them
    trainer.run()
    if trainer.is_writer:
        sft_dir = storage.join(ctx.output_dir, "sft")
        if storage.exists(storage.join(sft_dir, "metrics.jsonl")):
            print("SFT warm-up:\n" + summarize(read_metrics(sft_dir)))
        algorithm = {"grpo": "GRPO", "rloo": "RLOO", "reinforce++": "REINFORCE++", "ppo": "PPO"}[config.grpo.algorithm]
        print(f"{algorithm}:\n" + summarize(read_metrics(ctx.output_dir)))
        print(f"outputs in {ctx.output_dir}: {', '.join(_outputs(ctx))}")
    return 0


def _outputs(ctx) -> list[str]:
    """The outputs a finished run wrote, as the closing line names them: only those enabled and on disk."""
    from grpo_jax.trainer.loop import CHECKPOINT_DIR, CONFIG_FILE

    run = ctx.config.run
    candidates = [(f"{CHECKPOINT_DIR}/", True), ("metrics.jsonl", True), ("tensorboard/", run.tensorboard),
                  ("curves.png", run.plot), (CONFIG_FILE, True)]
    return [name for name, enabled in candidates
            if enabled and storage.exists(storage.join(ctx.output_dir, name.rstrip("/")))]


def _sft(args: argparse.Namespace) -> int:
    from grpo_jax.trainer import build_context
    from grpo_jax.trainer.sft import run_sft

    config = _config_from(args)
    if not config.sft.steps:
        raise ConfigError("sft.steps is 0; set e.g. sft.steps=300")
    ctx, params = build_context(config, args.output_dir)
    out = storage.join(ctx.output_dir, "hf")
    with run_lock.acquire(ctx.output_dir):  # one live run per directory, as for train
        params = run_sft(ctx, params)
        _save_hf(ctx, params, out, overwrite=True)  # hf/ belongs to this run: a new warm-up replaces its own
    print(f"SFT checkpoint written to {out} (train from it with model.path={out})")
    return 0


def _restored(args: argparse.Namespace):
    from grpo_jax.trainer import build_context, load_run_config, restore_params

    config = load_run_config(args.run_dir, args.overrides)
    ctx, params = build_context(config, args.run_dir)
    params, step = restore_params(ctx, params, args.step)
    return ctx, params, step


def _eval(args: argparse.Namespace) -> int:
    import jax

    ctx, params, step = _restored(args)
    metrics = ctx.eval_metrics(params, jax.random.key(ctx.config.run.seed + 11))
    if not metrics:
        raise ConfigError("the run's data.eval_examples is 0; pass data.eval_examples=N")
    metrics["step"] = step
    storage.write_text(storage.join(args.run_dir, f"eval-step{step}.json"), json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


def _generation_config(ctx) -> dict:
    """generation_config.json for an export: the source checkpoint's, if it has one, with ``eos_token_id`` the
    run's stop ids, so that training or serving from the export stops where the run did (Qwen's chat models
    name <|im_end|> and <|endoftext|> only there)."""
    source = os.path.join(ctx.config.model.path, "generation_config.json") if ctx.config.model.path else None
    config: dict = {}
    if source and os.path.isfile(source):
        with open(source, encoding="utf-8") as f:
            config = json.load(f)
    config["eos_token_id"] = [int(i) for i in ctx.sampling.eos_token_ids]
    return config


def _refuse_nonempty(out: str) -> None:
    """OutputExistsError when ``out`` (a local path or URL) holds files: an export never replaces a user's files
    unless asked to (``--overwrite``)."""
    entries = storage.listdir(out)
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise OutputExistsError(f"{out} is not empty (it holds {shown}); choose a new directory, or pass "
                                "--overwrite to replace the files of the same names there")


def _write_hf_files(ctx, params, directory: str, **kwargs) -> None:
    """The Hugging Face checkpoint files (safetensors, config, generation config, tokenizer) into ``directory``."""
    from grpo_jax.models import save_pretrained

    save_pretrained(ctx.model, params, directory, **kwargs)
    with open(os.path.join(directory, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump(_generation_config(ctx), f, indent=2, sort_keys=True)
    ctx.tokenizer.save_pretrained(directory)


def _write_adapter_files(ctx, params, directory: str) -> None:
    """A PEFT adapter directory (grpo_jax.models.peft_io) for the run's base, plus its tokenizer."""
    from grpo_jax.models.peft_io import save_peft_adapter

    save_peft_adapter(ctx.model.config, params, directory, base_model_name_or_path=ctx.config.model.path)
    ctx.tokenizer.save_pretrained(directory)


def _save_hf(ctx, params, out: str, *, overwrite: bool = False, adapter_only: bool = False, **kwargs) -> None:
    """A Hugging Face checkpoint at ``out``, a local path or a URL, that never leaves a half-written or mixed
    directory. A non-empty ``out`` is refused unless ``overwrite`` (then files of the same names are replaced,
    weight files the new ones make stale are removed, and other files stay).

    Local: the files are written into a temporary sibling directory, then renamed into place: the whole
    directory when ``out`` is new or empty, else file by file; a failure before then leaves ``out`` as it was.
    URL: written locally, then copied there (storage.StagedDir). Modes follow the umask, like every output.
    ``adapter_only``: a LoRA run's adapters as a PEFT directory instead of the merged model (weight files of
    an earlier full export there are then left alone).
    """
    from grpo_jax.models.hf_io import stale_weight_files

    def write(directory: str) -> None:
        if adapter_only:
            _write_adapter_files(ctx, params, directory)
        else:
            _write_hf_files(ctx, params, directory, **kwargs)

    def stale(existing: list[str], written: list[str]) -> list[str]:
        return [] if adapter_only else stale_weight_files(existing, written)

    if not overwrite:
        _refuse_nonempty(out)
    if storage.is_url(out):
        stage = storage.StagedDir(out)
        try:
            write(stage.local)
            # an earlier export's weights there would be loaded instead (save_pretrained's note)
            for name in stale(storage.listdir(out), os.listdir(stage.local)):
                storage.remove(storage.join(out, name))
        finally:
            stage.close()
        return
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.export-", dir=parent)  # same file system
    try:
        write(staged)
        os.chmod(staged, storage.default_mode(directory=True))  # mkdtemp's is 0o700
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        if not os.path.exists(out):
            os.rename(staged, out)
            return
        for name in stale(os.listdir(out), os.listdir(staged)):
            os.remove(os.path.join(out, name))
        for root, _, files in os.walk(staged):
            target_dir = os.path.join(out, os.path.relpath(root, staged))
            os.makedirs(target_dir, exist_ok=True)
            for name in files:
                os.replace(os.path.join(root, name), os.path.join(target_dir, name))
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _export(args: argparse.Namespace) -> int:
    from grpo_jax.models.config import DTYPES

    if not args.overwrite:  # before the checkpoint is read: a refused export costs nothing
        _refuse_nonempty(args.out_dir)
    if args.adapter_only:
        from grpo_jax.trainer import load_run_config

        if not load_run_config(args.run_dir, args.overrides).model.lora_rank:
            raise ConfigError(f"--adapter-only: {args.run_dir} trained every parameter (model.lora_rank=0), so it "
                              "has no adapters; export the whole model without --adapter-only")
    ctx, params, step = _restored(args)
    _save_hf(ctx, params, args.out_dir, overwrite=args.overwrite, adapter_only=args.adapter_only,
             dtype=DTYPES[args.dtype])
    what = "the LoRA adapters (PEFT format)" if args.adapter_only else "the model"
    print(f"exported {what} of step {step} of {args.run_dir} to {args.out_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from grpo_jax.compare import TABLE_FILE, compare, parse_variant
    from grpo_jax.trainer import apply_overrides, load_config
    from grpo_jax.trainer.default import get_config

    base = apply_overrides(load_config(args.config) if args.config else get_config(), args.overrides)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--seeds={args.seeds!r}: expected comma-separated integers") from e
    try:
        variants = dict(parse_variant(spec) for spec in args.variant or [])
        compare(base, args.output_dir, algorithms=algorithms, seeds=seeds, variants=variants or None)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    print(storage.read_text(storage.join(args.output_dir, TABLE_FILE)))
    print(f"outputs in {args.output_dir}: compare.md, compare.json, compare.png and one run directory per "
          f"{'variant' if variants else 'algorithm'} and seed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from grpo_jax.demo import DemoConfig
    from grpo_jax.trainer.config import ALGORITHMS

    parser = argparse.ArgumentParser(prog="grpo-jax", description="GRPO training in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="a recipe file defining get_config() (default: the embedded default run)")
        p.add_argument("--coordinator-address", help="multi-host: host:port of process 0 (see grpo_jax.distributed)")
        p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
        p.add_argument("--process-id", type=int, help="multi-host: this process's index")
        p.add_argument("--distributed-auto", action="store_true",
                       help="multi-host: let JAX detect the cluster (Cloud TPU VM pod slices)")
        p.add_argument("--output-dir", help="where outputs go (default: run.output_dir or runs/<name>-<time>)")
        p.add_argument("overrides", nargs="*", help="field=value overrides, e.g. grpo.beta=0 max_steps=20")

    train = sub.add_parser("train", help="train with GRPO (default: the embedded CPU run)")
    run_flags(train)
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir from its latest checkpoint")
    train.set_defaults(handler=_train)

    sft = sub.add_parser("sft", help="run only the supervised warm-up and write a Hugging Face checkpoint")
    run_flags(sft)
    sft.set_defaults(handler=_sft)

    for name, handler, text in (("eval", _eval, "evaluate a run's checkpoint on its held-out split"),
                                ("export", _export, "write a run's checkpoint as a Hugging Face directory")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run_dir", help="a training run's output directory")
        if name == "export":
            p.add_argument("out_dir", help="the Hugging Face directory to write")
            p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
            p.add_argument("--overwrite", action="store_true",
                           help="export into a non-empty OUT_DIR, replacing the files of the same names")
            p.add_argument("--adapter-only", action="store_true",
                           help="a LoRA run: write its adapters as a PEFT adapter directory (adapter_config.json, "
                                "adapter_model.safetensors) instead of the merged model")
        p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
        p.add_argument("overrides", nargs="*", help="field=value overrides, e.g. run.eval_num_samples=8")
        p.set_defaults(handler=handler)

    compare = sub.add_parser("compare", help="train GRPO, PPO (with a critic), RLOO and REINFORCE++ side by side "
                                             "and write a table and a PNG of their accuracy, time and memory")
    compare.add_argument("--config", help="the base recipe (default: the embedded default run)")
    compare.add_argument("--output-dir", required=True, help="one run directory per algorithm and seed go here, "
                                                             "with compare.md, compare.json and compare.png")
    compare.add_argument("--algorithms", default=",".join(ALGORITHMS),
                         help=f"comma-separated, from {', '.join(ALGORITHMS)} (default: all)")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (default: 0,1,2)")
    compare.add_argument("--variant", action="append", metavar="NAME=FIELD=VALUE,...",
                         help="compare named variants of the config instead of algorithms (repeatable), e.g. "
                              "--variant tools= --variant no-tools=tools.max_tool_calls=0,sft.tool_code_field=None")
    compare.add_argument("overrides", nargs="*", help="field=value overrides of the base config, e.g. max_steps=60")
    compare.set_defaults(handler=_compare)

    demo = sub.add_parser("demo", help="run GRPO on single-digit addition with a tabular policy")
    _add_dataclass_flags(demo, DemoConfig)
    demo.set_defaults(handler=_demo)
    return parser


def _split_dashed_overrides(argv: list[str]) -> list[str]:
    """``--grpo.beta=0`` -> ``grpo.beta=0`` (dotted names are never argparse flags)."""
    return [a[2:] if a.startswith("--") and "=" in a and "." in a.split("=", 1)[0] else a for a in argv]


def main(argv: Sequence[str] | None = None) -> int:
    argv = _split_dashed_overrides(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except ConfigError as e:
        # a setting, a flag or an input file to fix: one clear line. Anything else is a bug (or the machine
        # failing) and keeps its traceback (exit status 1).
        print(f"grpo-jax: error: {e}", file=sys.stderr)
        return 2
    except RunFailure as e:  # the run stopped on purpose and says why; its outputs up to then are intact
        print(f"grpo-jax: error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
