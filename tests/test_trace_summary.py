"""benchmarks/trace_summary.py: per-program and per-op time from a jax.profiler Perfetto trace."""

import gzip
import json
import pathlib
import subprocess
import sys

import pytest
from benchmark_scripts import ROOT, load

trace_summary = load("trace_summary")


def _op(module, op, dur_us, tid=1):
    return {"ph": "X", "pid": 1, "tid": tid, "ts": 0.0, "dur": dur_us, "name": op,
            "args": {"hlo_module": module, "hlo_op": op, "device_ordinal": "0"}}


def _write_trace(directory: pathlib.Path, events) -> None:
    run = directory / "plugins" / "profile" / "2026_01_01_00_00_00"
    run.mkdir(parents=True)
    with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "cpu"}},
                                   {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 9e6, "name": "PjitFunction(f)"},
                                   *events]}, f)


def test_ops_are_summed_per_program_and_ranked(tmp_path):
    _write_trace(tmp_path, [_op("jit_update", "ynn_fusion.1", 3000), _op("jit_update", "ynn_fusion.1", 1000, tid=2),
                            _op("jit_update", "copy_fusion.2", 1000), _op("jit_generate", "dot.3", 500)])
    times = trace_summary.op_times(trace_summary.load_events(str(tmp_path)))
    assert times == {("jit_update", "ynn_fusion.1"): [3.0, 1.0], ("jit_update", "copy_fusion.2"): [1.0],
                     ("jit_generate", "dot.3"): [0.5]}  # ms; events without an hlo_op are not ops
    table = trace_summary.summarise(times, top=2)
    assert "| jit_update | 5.0 | 3 |" in table and "| jit_generate | 0.5 | 1 |" in table
    assert "| jit_update | ynn_fusion.1 | 4.0 | 2 | 2.000 | 80.0% |" in table
    assert "| jit_update | copy_fusion.2 | 1.0 | 1 | 1.000 | 20.0% |" in table
    assert "dot.3 |" not in table.split("| op |")[1]  # only the top 2 ops
    only = trace_summary.summarise(times, top=5, module="generate").split("| op |")[1]
    assert "dot.3" in only and "ynn_fusion" not in only
    # the trace file itself, as gpu_session.sh copies it out
    (file,) = tmp_path.glob("plugins/profile/*/perfetto_trace.json.gz")
    assert trace_summary.op_times(trace_summary.load_events(str(file))) == times


def test_ops_grouped_by_kind():
    times = {("jit_update", "copy_bitcast_fusion.22"): [3.0], ("jit_update", "copy_bitcast_fusion.1"): [1.0, 2.0],
             ("jit_update", "dot"): [0.5], ("jit_generate", "copy_bitcast_fusion.3"): [4.0]}
    assert dict(trace_summary.by_kind(times)) == {("jit_update", "copy_bitcast_fusion"): [3.0, 1.0, 2.0],
                                                  ("jit_update", "dot"): [0.5],
                                                  ("jit_generate", "copy_bitcast_fusion"): [4.0]}


def test_a_directory_without_a_trace_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "trace_summary.py"), str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "no perfetto_trace.json.gz under" in result.stderr
    with pytest.raises(SystemExit, match="create_perfetto_trace=True"):
        trace_summary.load_events(str(tmp_path))
