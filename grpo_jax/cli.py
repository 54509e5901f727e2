"""The ``grpo-jax`` command line.

Sub-commands so far:
  demo   a full GRPO run on single-digit addition with a tabular policy (seconds on a CPU).
The trainer (``train``, ``eval``, ``export``) joins here as it lands.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence


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


def build_parser() -> argparse.ArgumentParser:
    from grpo_jax.demo import DemoConfig

    parser = argparse.ArgumentParser(prog="grpo-jax", description="GRPO training in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run GRPO on single-digit addition with a tabular policy")
    _add_dataclass_flags(demo, DemoConfig)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ValueError as e:  # configuration errors: one clear line, no traceback
        print(f"grpo-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
