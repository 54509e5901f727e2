"""The Python tool: model-written snippets run, during multi-turn rollouts, in the code sandbox.

A tool call's code is untrusted: it runs in grpo_jax.rewards.sandbox (own namespaces, no network, resource
limits, killed at its time limit), one sandboxed process per call. Nothing it prints is trusted or parsed as
anything but text to show the model, and that text is cut to a budget before it is tokenized.

The snippet runs like a notebook cell: its statements are executed, and when the last one is an expression
its value's repr is printed (``4821 * 93017`` alone prints ``448434957``; a None value prints nothing). The
output is what it printed to stdout (stderr is never shown), followed by one error line when the call failed:
  * an exception (a SyntaxError included): the traceback's last line, e.g. ``ZeroDivisionError: division by
    zero`` (a memory hog past ``memory_mb`` usually ends as ``MemoryError``);
  * its time limit: ``Error: timed out after {timeout_s} s`` (``Error: timed out at the batch's time limit``
    at ``batch_timeout_s``); stdout is line-buffered, so the lines printed before a hang are shown;
  * a non-zero exit (``sys.exit(3)``, ``os._exit(3)``): ``Error: exited with status 3``; a signal: ``Error:
    killed``;
  * more stdout than the sandbox takes (4 x max_output_chars bytes, at least 64 KiB): the process is killed,
    and the output is its start and the truncation marker.
Output longer than ``max_output_chars`` characters is cut there and ends in a line ``... [output truncated]``;
an error line, itself at most ``max_output_chars`` characters, takes its place in that budget.

Arguments: ``code`` is one snippet's source (``codes``: N of them -> N results, in input order);
``timeout_s`` wall seconds per call (the CPU limit is ceil(timeout_s) + 1 s); ``memory_mb`` address space per
process in MiB; ``max_output_chars`` characters of output; for a batch, ``max_workers`` calls run at once and
``batch_timeout_s`` bounds the whole batch's wall time.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from grpo_jax.rewards.sandbox import SandboxLimits, SandboxResult, run_python

TRUNCATED = "... [output truncated]"
_RAISED = 1  # the bootstrap's exit status after reporting an exception

# Trusted: reads the snippet from stdin, runs it as a cell; an exception's last traceback line goes to a private
# copy of stderr (the snippet's own stderr goes to /dev/null), then it exits with status _RAISED.
_BOOTSTRAP = r"""
import ast, os, sys, traceback
source = sys.stdin.buffer.read().decode("utf-8", "replace")
report = os.fdopen(os.dup(2), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
sys.stdout.reconfigure(line_buffering=True)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    tree = ast.parse(source, "<cell>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:  # "single" mode prints a non-None value's repr (sys.displayhook), as a notebook does
        exec(compile(ast.Interactive([last]), "<cell>", "single"), namespace)
except SystemExit:
    raise
except BaseException as e:
    lines = traceback.format_exception_only(type(e), e)
    report.write("".join(line for line in lines if not line.startswith("  ")).strip())  # a SyntaxError's
    report.flush()                                                                      # location lines go
    sys.exit(RAISED)
""".replace("RAISED", str(_RAISED))


@dataclasses.dataclass(frozen=True)
class ToolResult:
    output: str  # the text to show the model (already truncated to the budget; for errors the error text)
    error: bool  # the call raised, timed out, was killed, flooded output, or exited non-zero
    timed_out: bool
    truncated: bool  # output was longer than max_output_chars and was cut
    seconds: float  # wall time of this call


def _check_args(timeout_s: float, memory_mb: int, max_output_chars: int) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
        raise ValueError(f"python tool: `timeout_s` must be a finite number of seconds > 0, got {timeout_s!r}")
    for name, value in (("memory_mb", memory_mb), ("max_output_chars", max_output_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"python tool: `{name}` must be an int >= 1, got {value!r}")


def _join(*parts: str) -> str:
    """The non-empty parts, each starting on a line of its own."""
    out = ""
    for part in filter(None, parts):
        out += part if not out or out.endswith("\n") else "\n" + part
    return out


def _to_result(run: SandboxResult, seconds: float, timeout_s: float, max_output_chars: int,
               batch_cancelled: bool) -> ToolResult:
    if run.timed_out:
        line = "Error: timed out " + ("at the batch's time limit" if batch_cancelled else f"after {timeout_s:g} s")
    elif run.returncode == 0 or run.output_overflow:
        line = ""  # the overflow is an error; the truncation marker says what happened
    elif run.returncode == _RAISED and run.stderr.strip():
        line = run.stderr.decode("utf-8", "replace").strip()
    elif run.returncode is None or run.returncode < 0:
        line = "Error: killed"
    else:
        line = f"Error: exited with status {run.returncode}"
    truncated = len(line) > max_output_chars
    line = line[:max_output_chars]
    printed, room = run.stdout.decode("utf-8", "replace"), max_output_chars - len(line)
    if len(printed) > room or run.output_overflow:
        printed, truncated = _join(printed[:room], TRUNCATED), True
    error = run.timed_out or run.output_overflow or run.returncode != 0
    return ToolResult(_join(printed, line), error, run.timed_out, truncated, seconds)


def _run(code: str, timeout_s: float, memory_mb: int, max_output_chars: int,
         cancel: threading.Event | None) -> ToolResult:
    limits = SandboxLimits(wall_s=timeout_s, cpu_s=math.ceil(timeout_s) + 1, memory_mb=memory_mb,
                           max_output_bytes=max(4 * max_output_chars, 64 * 1024))
    start = time.monotonic()
    if cancel is not None and cancel.is_set():  # the batch's deadline passed before this call started
        run = SandboxResult(b"", b"", None, True, False)
    else:
        run = run_python(["-c", _BOOTSTRAP], code.encode("utf-8", "replace"), limits, cancel)
    return _to_result(run, time.monotonic() - start, timeout_s, max_output_chars,
                      run.timed_out and cancel is not None and cancel.is_set())


def run_python_tool(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512,
                    max_output_chars: int = 512) -> ToolResult:
    """Run one snippet in the sandbox; its output (see the module docstring) and how it ended."""
    _check_args(timeout_s, memory_mb, max_output_chars)
    return _run(code, timeout_s, memory_mb, max_output_chars, None)


def run_python_tools(codes: Sequence[str], *, timeout_s: float = 5.0, memory_mb: int = 512,
                     max_output_chars: int = 512, max_workers: int = 8,
                     batch_timeout_s: float | None = None) -> list[ToolResult]:
    """Run N snippets in parallel sandboxes (``max_workers`` at a time); N results in input order. Calls not
    finished ``batch_timeout_s`` after the start are killed (or never started) and time out."""
    _check_args(timeout_s, memory_mb, max_output_chars)
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"python tool: `max_workers` must be an int >= 1, got {max_workers!r}")
    if batch_timeout_s is not None and not 0 < batch_timeout_s < math.inf:
        raise ValueError(f"python tool: `batch_timeout_s` must be None or a finite number of seconds > 0, "
                         f"got {batch_timeout_s!r}")
    codes = list(codes)
    if not codes:
        return []
    deadline = None if batch_timeout_s is None else time.monotonic() + batch_timeout_s
    cancel = threading.Event()  # set at the batch's deadline: the sandboxes still running are killed
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(codes)), thread_name_prefix="python-tool")
    try:
        futures = [pool.submit(_run, code, timeout_s, memory_mb, max_output_chars, cancel) for code in codes]
        for future in futures:
            try:
                future.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                cancel.set()
    finally:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)  # the killed ones end within the sandbox's poll
    never_ran = ToolResult("Error: timed out at the batch's time limit", True, True, False, 0.0)
    return [never_ran if future.cancelled() else future.result() for future in futures]
