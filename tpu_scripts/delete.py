#!/usr/bin/env python3
"""Stop the training on a TPU VM, or delete the TPU VM (or the queued resource that holds it).

  python tpu_scripts/delete.py --name my-tpu --zone us-west4-a --stop-only   # stop grpo-jax train, keep the VM
  python tpu_scripts/delete.py --name my-tpu --zone us-west4-a               # delete the TPU VM
  python tpu_scripts/delete.py --name my-pod --zone us-central2-b --queued   # delete the queued resource and node

Stopping sends SIGTERM to every ``grpo-jax train`` process on all workers, waits up to 30 s for them to exit,
then SIGKILLs what is left, so the TPU is free for the next launch. Deleting needs no stop first; it asks no
confirmation (gcloud --quiet).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import _common


def build_parser() -> argparse.ArgumentParser:
    p = _common.parser("Stop the grpo-jax training processes on all workers, or delete the TPU VM / queued resource.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stop-only", action="store_true",
                      help="only stop the training processes on all workers; keep the TPU VM")
    mode.add_argument("--queued", action="store_true",
                      help="the TPU was created with create.py --queued: delete the queued resource and its node")
    return p


def stop_command() -> str:
    pattern = f'"{_common.TRAIN_PATTERN}"'
    return (f"pkill -f {pattern} || exit 0; "
            f"for _ in $(seq 30); do pgrep -f {pattern} > /dev/null || exit 0; sleep 1; done; "
            f"pkill -KILL -f {pattern}; exit 0")


def commands(args: argparse.Namespace) -> list[list[str]]:
    if args.stop_only:
        return [_common.ssh(args, stop_command())]
    if args.queued:
        return [_common.queued_resource(args, "delete", "--force", "--quiet")]
    return [_common.tpu_vm(args, "delete", "--quiet")]


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _common.run_commands(commands(args), dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(_common.main(run))
