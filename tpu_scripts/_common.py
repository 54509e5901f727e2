"""What the tpu_scripts share: the common flags, the gcloud command builders, the remote layout and the runner.

Standard library only. Every script builds the full list of commands first (argument lists, never shell
strings), then either prints them (``--dry-run``: one line each, shell-quoted, prefixed with ``+ ``) or
runs them one after the other, stopping at the first that fails with an error that names it.

Remote layout on every worker (paths relative to the login user's home directory, where ``gcloud ...
ssh --command`` starts):

  ~/grpo_jax/                 the repository, unpacked from ``git archive`` by setup.py (cwd of training)
  ~/grpo_jax/tpu_configs/     recipe files from outside the repository, copied by launch.py
  ~/grpo_jax_venv/            the virtual environment grpo_jax is installed into (Python from uv)
  ~/grpo_jax_train.log        the training log launch.py writes and logs.py tails (``--log-file``)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REMOTE_DIR = "grpo_jax"
REMOTE_CONFIG_DIR = REMOTE_DIR + "/tpu_configs"
REMOTE_VENV = "grpo_jax_venv"
REMOTE_TARBALL = "grpo_jax.tar.gz"
DEFAULT_LOG = "grpo_jax_train.log"
# The training processes, for pgrep/pkill -f. The brackets keep the pattern from matching the remote shell
# whose own command line contains the pattern text.
TRAIN_PATTERN = "[g]rpo-jax train"

_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_ZONE_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_WORKER_RE = re.compile(r"all|[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*")


class ScriptError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _tpu_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a valid TPU name: lowercase letters, digits and hyphens, starting with a letter, "
            "not ending with a hyphen, at most 63 characters")
    return value


def _zone(value: str) -> str:
    if not _ZONE_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a zone name such as us-central2-b or europe-west4-a")
    return value


def worker_spec(value: str) -> str:
    """``all`` or worker indices (``0``, ``0,3``, ``1-3``), as gcloud's --worker takes them."""
    if not _WORKER_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a worker: expected 'all' or indices such as 0, 0,3 or 1-3")
    return value


def parser(description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An argument parser with the flags every script takes: --name, --zone, --project, --dry-run."""
    p = argparse.ArgumentParser(description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, type=_tpu_name, help="the TPU VM's name (and the queued resource's)")
    p.add_argument("--zone", required=True, type=_zone, help="the zone, e.g. us-central2-b (v4), us-west4-a (v5e)")
    p.add_argument("--project", help="the Google Cloud project (default: gcloud's configured core/project)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands (one per line, prefixed with '+ ') and run nothing")
    return p


def location(args: argparse.Namespace) -> list[str]:
    """``--zone=Z`` and, when given, ``--project=P``."""
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def tpu_vm(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
    """``gcloud compute tpus tpu-vm VERB NAME --zone=Z [--project=P] REST...``."""
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, *location(args), *rest]


def queued_resource(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
    """``gcloud compute tpus queued-resources VERB NAME --zone=Z [--project=P] REST...``."""
    return ["gcloud", "compute", "tpus", "queued-resources", verb, args.name, *location(args), *rest]


def ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
    """Run the shell ``command`` on the workers (all by default; gcloud runs them in parallel)."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *location(args), f"--worker={worker}",
            "--command", command]


def scp(args: argparse.Namespace, local_path: str, remote_path: str, worker: str = "all") -> list[str]:
    """Copy one local file to ``remote_path`` (relative to the home directory) on the workers."""
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", local_path, f"{args.name}:{remote_path}",
            *location(args), f"--worker={worker}"]


def home(path: str) -> str:
    """A path relative to the remote home directory, written for the remote shell: ``~/`` + quoted path."""
    return "~/" + shlex.quote(path)


def require_tools(commands: Sequence[Sequence[str]]) -> None:
    """Raise ScriptError, before anything runs, if a program the commands need is not on PATH."""
    for tool in dict.fromkeys(argv[0] for argv in commands):
        if shutil.which(tool) is None:
            hint = (" (install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install)"
                    if tool == "gcloud" else "")
            raise ScriptError(f"{tool!r} was not found on PATH{hint}; nothing was run. "
                              "--dry-run prints the commands without running them.")


def run_commands(commands: Sequence[Sequence[str]], *, dry_run: bool) -> None:
    """Print (dry run) or run each command in order; raise ScriptError naming the first that fails."""
    if dry_run:
        for argv in commands:
            print("+ " + shlex.join(argv), flush=True)
        return
    require_tools(commands)
    for argv in commands:
        line = shlex.join(argv)
        print("+ " + line, file=sys.stderr, flush=True)
        try:
            subprocess.run(list(argv), check=True)
        except subprocess.CalledProcessError as e:
            code = e.returncode if e.returncode > 0 else 1
            raise ScriptError(f"command failed with exit status {e.returncode}: {line}", code) from None
        except OSError as e:
            raise ScriptError(f"could not run {line}: {e}") from None


def main(build: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call a script's ``build(argv)``; report ScriptError and Ctrl-C as one line on stderr."""
    prog = os.path.basename(sys.argv[0])
    try:
        return build(argv)
    except ScriptError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
