"""Where the time of a jax.profiler trace went: XLA programs and their ops, summed over the trace.

    python benchmarks/trace_summary.py TRACE_DIR [--top 25] [--module SUBSTRING] [--by-kind]

TRACE_DIR is what ``jax.profiler.trace(TRACE_DIR, create_perfetto_trace=True)`` wrote (for instance
``benchmarks/peers/grpo_jax_step.py --profile TRACE_DIR``); the newest ``perfetto_trace.json.gz`` under it
is read; a path to such a ``.json.gz`` file is read as it is (``gpu_session.sh`` copies one out). On the
CPU backend every executed XLA op (thunk) is a complete event whose args name its ``hlo_module`` and
``hlo_op``; this prints, in milliseconds of wall time summed over all threads:

  1. each program (hlo_module): total op time, number of op events;
  2. the ``--top`` ops by total time (all programs, or those whose name contains ``--module``), with their
     count and mean, and their share of their program's op time.

With ``--by-kind`` the ops are grouped by kind first: the name without its ``.N`` suffix
(``copy_bitcast_fusion.22`` -> ``copy_bitcast_fusion``), which is how docs/benchmarks.md tabulates them.

Op names are XLA's (``fusion.12``, ``ynn_fusion.3``, ``dot.4``, ``scatter.1``); to see what an op computes,
dump the optimised HLO with ``XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`` and look the name up in
``*after_optimizations.txt``. Events overlap when ops run concurrently on several threads, so a program's
op time can exceed its wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re


def load_events(trace_dir: str) -> list[dict]:
    """The complete ('X') events of the newest Perfetto trace under ``trace_dir`` (or of that file)."""
    paths = [trace_dir] if os.path.isfile(trace_dir) else glob.glob(
        os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        raise SystemExit(f"trace_summary: no perfetto_trace.json.gz under {trace_dir!r} "
                         "(trace with jax.profiler.trace(..., create_perfetto_trace=True))")
    with gzip.open(max(paths, key=os.path.getmtime), "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def op_times(events: list[dict]) -> dict[tuple[str, str], list[float]]:
    """{(hlo_module, hlo_op): [duration in ms of each execution]} over the events that name an XLA op."""
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for e in events:
        args = e.get("args") or {}
        if "hlo_op" in args and "hlo_module" in args:
            times[(args["hlo_module"], args["hlo_op"])].append(float(e.get("dur", 0.0)) / 1e3)
    return times


def by_kind(times: dict[tuple[str, str], list[float]]) -> dict[tuple[str, str], list[float]]:
    """The same durations keyed by (hlo_module, op kind), the kind being the op name without ``.N``."""
    kinds: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for (mod, op), durations in times.items():
        kinds[(mod, re.sub(r"\.\d+$", "", op))].extend(durations)
    return kinds


def summarise(times: dict[tuple[str, str], list[float]], top: int, module: str | None = None) -> str:
    """The two markdown tables described in the module docstring."""
    per_module: dict[str, float] = collections.defaultdict(float)
    per_module_count: dict[str, int] = collections.defaultdict(int)
    for (mod, _), durations in times.items():
        per_module[mod] += sum(durations)
        per_module_count[mod] += len(durations)
    lines = ["| program | op time (ms) | op events |", "| --- | ---: | ---: |"]
    for mod, total in sorted(per_module.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {mod} | {total:.1f} | {per_module_count[mod]} |")
    chosen = {key: d for key, d in times.items() if module is None or module in key[0]}
    lines += ["", "| program | op | total (ms) | count | mean (ms) | share of program |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for (mod, op), durations in sorted(chosen.items(), key=lambda kv: -sum(kv[1]))[:top]:
        total = sum(durations)
        share = total / per_module[mod] if per_module[mod] else 0.0
        lines.append(f"| {mod} | {op} | {total:.1f} | {len(durations)} | {total / len(durations):.3f} | {share:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trace_dir")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--module", help="only ops of programs whose name contains this")
    parser.add_argument("--by-kind", action="store_true", help="group ops by name without the .N suffix")
    args = parser.parse_args()
    times = op_times(load_events(args.trace_dir))
    if args.by_kind:
        times = by_kind(times)
    if not times:
        raise SystemExit("trace_summary: the trace has no XLA op events (was anything executed inside it?)")
    print(summarise(times, args.top, args.module))


if __name__ == "__main__":
    main()
