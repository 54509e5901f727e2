#!/usr/bin/env python3
"""Start the same ``grpo-jax train`` command on every worker of a TPU VM, in the background, with a log file.

  python tpu_scripts/launch.py --name my-tpu --zone us-west4-a \\
      --config experiments/gsm8k_qwen2p5_0p5b.py --output-dir gs://my-bucket/gsm8k-0p5b max_steps=200

The recipe file is copied to every worker first (to the same path under ~/grpo_jax when it is inside this
repository, else to ~/grpo_jax/tpu_configs/), so local edits take effect without re-running setup.py. Then
every worker runs, from ~/grpo_jax:

  nohup ~/grpo_jax_venv/bin/grpo-jax train --distributed-auto --config C --output-dir D [--resume] \\
      [field=value ...] > ~/grpo_jax_train.log 2>&1 < /dev/null &

One process per host, all with the same arguments: with --distributed-auto each joins the others through
jax.distributed (the hosts come from the TPU VM metadata), and JAX's multi-controller runtime makes them one
program over the slice's global device mesh. Stop a run with delete.py --stop-only before launching another.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence

import _common

_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)
_OVERRIDE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=.*", re.S)


def _env(value: str) -> str:
    if not _ENV_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _common.parser(
        "Copy a recipe file to every worker and start the same grpo-jax train command on all of them in the "
        "background, its output going to a log file (see logs.py).",
        epilog="example:\n  %(prog)s --name my-pod --zone us-central2-b --config experiments/gsm8k_qwen2p5_1p5b.py"
               " \\\n      --output-dir gs://my-bucket/runs/gsm8k-1p5b run.mesh=fsdp:-1 max_steps=200")
    p.add_argument("--config", help="the recipe file (default: grpo-jax's embedded default run)")
    p.add_argument("--output-dir", required=True,
                   help="the run directory, the same for every host: a GCS path (gs://bucket/run) on a pod "
                        "slice, where every host writes its checkpoint shards")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint")
    p.add_argument("--no-distributed-auto", dest="distributed_auto", action="store_false",
                   help="do not pass --distributed-auto (by default every process joins the others through "
                        "jax.distributed, which finds the slice's hosts from the TPU VM metadata; harmless on "
                        "one host)")
    p.add_argument("--env", action="append", default=[], type=_env, metavar="NAME=VALUE",
                   help="an environment variable for the training processes (repeatable), e.g. "
                        "--env JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache")
    p.add_argument("--log-file", default=_common.DEFAULT_LOG,
                   help=f"the log on each worker, relative to the home directory (default: {_common.DEFAULT_LOG})")
    p.add_argument("overrides", nargs="*", metavar="field=value",
                   help="configuration overrides passed to grpo-jax train, e.g. max_steps=20 run.mesh=fsdp:-1")
    return p


def remote_config_path(config: str) -> str:
    """Where the recipe goes on the workers, relative to ~/grpo_jax (the training command's directory)."""
    path = os.path.abspath(config)
    rel = os.path.relpath(path, _common.ROOT)
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        rel = os.path.relpath(_common.REMOTE_CONFIG_DIR, _common.REMOTE_DIR) + "/" + os.path.basename(path)
    return rel.replace(os.sep, "/")


def train_argv(args: argparse.Namespace) -> list[str]:
    """The training command every host runs (the program path is the remote virtual environment's)."""
    argv = ["train"] + (["--distributed-auto"] if args.distributed_auto else [])
    if args.config:
        argv += ["--config", remote_config_path(args.config)]
    argv += ["--output-dir", args.output_dir]
    if args.resume:
        argv.append("--resume")
    return argv + list(args.overrides)


def launch_command(args: argparse.Namespace) -> str:
    """The remote shell command: cd to the repository, start the training in the background, return."""
    program = _common.home(_common.REMOTE_VENV) + "/bin/grpo-jax"
    env = [f"{name}={shlex.quote(value)}" for name, value in (e.split("=", 1) for e in args.env)]
    words = [*env, "nohup", program, *(shlex.quote(a) for a in train_argv(args))]
    log_dir = os.path.dirname(args.log_file)
    mkdir = f"mkdir -p {_common.home(log_dir)} && " if log_dir else ""
    return (f"cd {_common.home(_common.REMOTE_DIR)} && {mkdir}{' '.join(words)} > {_common.home(args.log_file)} "
            "2>&1 < /dev/null &")


def commands(args: argparse.Namespace) -> list[list[str]]:
    cmds = []
    if args.config:
        cmds.append(_common.scp(args, os.path.abspath(args.config),
                                _common.REMOTE_DIR + "/" + remote_config_path(args.config)))
    cmds.append(_common.ssh(args, launch_command(args)))
    return cmds


def _check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if args.config and not os.path.isfile(args.config):
        p.error(f"--config {args.config!r}: no such file")
    for override in args.overrides:
        if not _OVERRIDE_RE.fullmatch(override):
            p.error(f"{override!r} is not a field=value override (e.g. max_steps=20, grpo.beta=0)")
    if not args.log_file or os.path.isabs(args.log_file) or args.log_file.startswith("~"):
        p.error(f"--log-file {args.log_file!r}: give a path relative to the remote home directory")


def run(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _check(args, p)
    if not args.output_dir.startswith("gs://"):
        print(f"launch.py: note: --output-dir {args.output_dir!r} is each worker's own disk; a multi-host slice "
              "needs one directory all hosts share (gs://...)", file=sys.stderr)
    _common.run_commands(commands(args), dry_run=args.dry_run)
    if not args.dry_run:
        print(f"started on all workers of {args.name}; follow with: python tpu_scripts/logs.py --name {args.name} "
              f"--zone {args.zone}" + (f" --project {args.project}" if args.project else "")
              + (f" --log-file {shlex.quote(args.log_file)}" if args.log_file != _common.DEFAULT_LOG else ""),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_common.main(run))
