#!/usr/bin/env python3
"""Show the training log that launch.py started on a TPU VM (worker 0 by default), following it.

  python tpu_scripts/logs.py --name my-tpu --zone us-west4-a            # tail -F on worker 0; Ctrl-C stops
  python tpu_scripts/logs.py --name my-pod --zone us-central2-b --worker all --lines 20 --no-follow

With several workers, gcloud interleaves their output, so each line is prefixed with the host's name.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import _common


def build_parser() -> argparse.ArgumentParser:
    p = _common.parser("Tail the training log on one, several or all workers of a TPU VM.")
    p.add_argument("--worker", default="0", type=_common.worker_spec,
                   help="'all', or worker indices such as 0, 0,3 or 1-3 (default: 0, the process that writes metrics)")
    p.add_argument("--lines", type=int, default=100, help="how many lines of the end to show first (default: 100)")
    p.add_argument("--no-follow", action="store_true", help="print the last lines and return instead of following")
    p.add_argument("--log-file", default=_common.DEFAULT_LOG,
                   help=f"the log, relative to the home directory (default: {_common.DEFAULT_LOG})")
    return p


def tail_command(args: argparse.Namespace) -> str:
    """``tail -n N [-F] ~/LOG``, with a ``[hostname]`` prefix per line when more than one worker answers."""
    command = f"tail -n {args.lines}{'' if args.no_follow else ' -F'} {_common.home(args.log_file)}"
    if not args.worker.isdigit():  # all, a list or a range
        command += ' | sed -u "s/^/[$(hostname)] /"'
    return command


def run(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.lines < 0:
        p.error(f"--lines {args.lines}: expected a number >= 0")
    if not args.log_file or args.log_file.startswith(("/", "~")):
        p.error(f"--log-file {args.log_file!r}: give a path relative to the remote home directory")
    _common.run_commands([_common.ssh(args, tail_command(args), worker=args.worker)], dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(_common.main(run))
