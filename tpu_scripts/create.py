#!/usr/bin/env python3
"""Create a Cloud TPU VM (single host or pod slice), or a queued resource that becomes one.

  python tpu_scripts/create.py --name my-tpu --zone us-west4-a --accelerator-type v5litepod-8
  python tpu_scripts/create.py --name my-pod --zone us-central2-b --accelerator-type v4-32 --queued --spot
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import _common

# family -> (accelerator-type prefix, default runtime version (cloud.google.com/tpu/docs/runtimes), sizes)
# The suffix counts TensorCores on v4 and v5p (2 per chip, 4 chips per host: v4-8 is one host, v4-32 four)
# and chips on v5e and v6e (v5litepod-8 and v6e-8 are one 8-chip host).
FAMILIES = {
    "v4": ("v4", "tpu-ubuntu2204-base", "a multiple of 8 (TensorCores), e.g. v4-8, v4-32"),
    "v5e": ("v5litepod", "v2-alpha-tpuv5-lite", "one of 1, 4, 8, 16, 32, 64, 128, 256 (chips)"),
    "v5p": ("v5p", "v2-alpha-tpuv5", "a multiple of 8 (TensorCores), e.g. v5p-8, v5p-16"),
    "v6e": ("v6e", "v2-alpha-tpuv6e", "one of 1, 4, 8, 16, 32, 64, 128, 256 (chips)"),
}
_SLICE_SIZES = {1, 4, 8, 16, 32, 64, 128, 256}
_PREFIX_TO_FAMILY = {prefix: family for family, (prefix, _, _) in FAMILIES.items()}


def _size_ok(family: str, size: int) -> bool:
    if family in ("v4", "v5p"):
        return size >= 8 and size % 8 == 0
    return size in _SLICE_SIZES


def parse_accelerator_type(value: str) -> tuple[str, int]:
    """``v5litepod-8`` -> (``v5e``, 8); an unknown family or a size the family has no slice of is an error."""
    match = re.fullmatch(r"([a-z0-9]+)-([0-9]+)", value)
    known = ", ".join(f"{prefix}-N ({family})" for family, (prefix, _, _) in FAMILIES.items())
    if not match:
        raise argparse.ArgumentTypeError(f"{value!r} is not an accelerator type of the form FAMILY-SIZE: {known}")
    prefix, size = match.group(1), int(match.group(2))
    if prefix == "v5e":
        raise argparse.ArgumentTypeError(f"{value!r}: Cloud TPU calls v5e 'v5litepod', e.g. v5litepod-{size}")
    family = _PREFIX_TO_FAMILY.get(prefix)
    if family is None:
        raise argparse.ArgumentTypeError(f"{value!r}: unknown TPU family {prefix!r}; supported: {known}")
    if not _size_ok(family, size):
        raise argparse.ArgumentTypeError(f"{value!r}: the size of a {family} slice is {FAMILIES[family][2]}")
    return family, size


def _accelerator_type(value: str) -> str:
    parse_accelerator_type(value)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _common.parser(
        "Create a Cloud TPU VM, or with --queued a queued resource whose node has the same name.",
        epilog="default runtime versions: " + ", ".join(f"{f}: {v}" for f, (_, v, _) in FAMILIES.items())
        + "\nexamples:\n  %(prog)s --name my-tpu --zone us-west4-a --accelerator-type v5litepod-8"
        "\n  %(prog)s --name my-pod --zone us-central2-b --accelerator-type v4-32 --queued")
    p.add_argument("--accelerator-type", required=True, type=_accelerator_type,
                   help="v4-N, v5litepod-N (v5e), v5p-N or v6e-N, e.g. v5litepod-8, v4-32, v5p-16, v6e-8")
    p.add_argument("--version", help="the TPU software (runtime) version (default: the family's, see below)")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="a Spot TPU: cheaper, can be preempted at any time")
    capacity.add_argument("--reserved", action="store_true", help="use the project's TPU reservation")
    p.add_argument("--queued", action="store_true",
                   help="request a queued resource (gcloud compute tpus queued-resources create) instead; "
                        "it is granted when capacity is free")
    return p


def commands(args: argparse.Namespace) -> list[list[str]]:
    family, _ = parse_accelerator_type(args.accelerator_type)
    version = args.version or FAMILIES[family][1]
    capacity = ["--spot"] if args.spot else ["--reserved"] if args.reserved else []
    if args.queued:
        return [_common.queued_resource(args, "create", f"--node-id={args.name}",
                                        f"--accelerator-type={args.accelerator_type}",
                                        f"--runtime-version={version}", *capacity)]
    return [_common.tpu_vm(args, "create", f"--accelerator-type={args.accelerator_type}",
                           f"--version={version}", *capacity)]


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _common.run_commands(commands(args), dry_run=args.dry_run)
    if args.queued and not args.dry_run:
        where = " ".join(_common.location(args))
        print(f"queued. The TPU VM {args.name} exists once the request is ACTIVE; check with\n"
              f"  gcloud compute tpus queued-resources describe {args.name} {where} --format='value(state.state)'",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_common.main(run))
