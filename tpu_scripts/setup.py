#!/usr/bin/env python3
"""Install grpo_jax on every worker of a TPU VM: ship the repository with ``git archive``, install with pip.

  python tpu_scripts/setup.py --name my-tpu --zone us-west4-a

Steps: (1) ``git archive`` packs the committed tree (``--ref``, default HEAD; uncommitted changes are not
shipped) into a local tarball; (2) ``gcloud compute tpus tpu-vm scp --worker=all`` copies it to every
worker; (3) one ``gcloud compute tpus tpu-vm ssh --worker=all`` unpacks it into ~/grpo_jax and installs
``pip install -c constraints.txt '.[tpu,gcs]'`` into ~/grpo_jax_venv. The constrained JAX needs Python >= 3.11
and the TPU images ship Ubuntu 22.04's Python 3.10, so the virtual environment gets its Python from uv
(installed with the image's pip). Files other than the package under ~/grpo_jax (weights, data) survive a
re-run.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence

import _common

DEFAULT_TARBALL = os.path.join(_common.ROOT, "build", "tpu_scripts", _common.REMOTE_TARBALL)


def _python_version(value: str) -> str:
    if not re.fullmatch(r"3\.[0-9]+", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Python version such as 3.11")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _common.parser(
        "Copy this repository (git archive of --ref) to every worker of a TPU VM and install grpo_jax with "
        "its tpu and gcs extras (jax[tpu], gcsfs for gs:// run directories) into a virtual environment there.",
        epilog="example:\n  %(prog)s --name my-pod --zone us-central2-b --verify")
    p.add_argument("--ref", default="HEAD", help="the git commit, branch or tag to ship (default: HEAD)")
    p.add_argument("--tarball", default=DEFAULT_TARBALL,
                   help="where the local tarball is written (default: build/tpu_scripts/grpo_jax.tar.gz)")
    p.add_argument("--python-version", default="3.11", type=_python_version,
                   help="Python of the remote virtual environment (default: 3.11, as CI)")
    p.add_argument("--verify", action="store_true",
                   help="afterwards run jax on all workers at once and print each host's process index, "
                        "process count and device counts (the TPU must be free)")
    return p


def install_command(python_version: str) -> str:
    """The remote shell command that unpacks the tarball and installs grpo_jax into the virtual environment."""
    repo, venv, tarball = _common.home(_common.REMOTE_DIR), _common.home(_common.REMOTE_VENV), \
        _common.home(_common.REMOTE_TARBALL)
    steps = [
        # the package sources and setuptools' build/ are replaced, so no stale module is installed
        f"rm -rf {repo}/grpo_jax {repo}/build",
        f"mkdir -p {_common.home(_common.REMOTE_CONFIG_DIR)}",
        f"tar -xzf {tarball} -C {repo}",
        f"rm -f {tarball}",
        "python3 -m pip install --user --quiet --upgrade uv",
        f"python3 -m uv venv --seed --allow-existing --python {shlex.quote(python_version)} {venv}",
        f"cd {repo}",
        f"{venv}/bin/python -m pip install --quiet -c constraints.txt \".[tpu,gcs]\"",
    ]
    return " && ".join(steps)


# double-quoted for the remote shell, so it holds no quote, $, backquote or backslash
VERIFY_PROGRAM = ("import jax; print(dict(process=jax.process_index(), processes=jax.process_count(),"
                  " local_devices=jax.local_device_count(), devices=jax.device_count()))")


def commands(args: argparse.Namespace) -> list[list[str]]:
    tarball = os.path.abspath(args.tarball)
    archive = ["git", "-C", _common.ROOT, "archive", "--format=tar.gz", "-o", tarball, args.ref]
    cmds = [archive,
            _common.scp(args, tarball, _common.REMOTE_TARBALL),
            _common.ssh(args, install_command(args.python_version))]
    if args.verify:
        python = _common.home(_common.REMOTE_VENV) + "/bin/python"
        cmds.append(_common.ssh(args, f'{python} -c "{VERIFY_PROGRAM}"'))
    return cmds


def _warn_if_dirty(ref: str) -> None:
    if ref != "HEAD":
        return
    try:
        out = subprocess.run(["git", "-C", _common.ROOT, "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return  # git archive below reports the problem
    if out.strip():
        print("setup.py: warning: the working tree has uncommitted changes; git archive ships HEAD without them",
              file=sys.stderr)


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmds = commands(args)
    if not args.dry_run:
        _common.require_tools(cmds)
        _warn_if_dirty(args.ref)
        os.makedirs(os.path.dirname(os.path.abspath(args.tarball)), exist_ok=True)
    _common.run_commands(cmds, dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(_common.main(run))
