"""code_reward: run each completion's code against its task's tests, in the sandbox, under time limits.

Two kinds of tests, and for both the verdict is decided outside the untrusted process:
  * stdin/stdout cases, ``[{"input": str, "output": str}, ...]``: the sandbox only runs the program once
    per case and hands back what it printed; *this* process compares it with the expected output (which
    never enters the sandbox; trailing whitespace on each line is ignored).
  * a HumanEval-style check program (``def check(candidate): assert ...``) with an ``entry_point``: the
    completion is loaded into a sandboxed server that answers calls of the entry point; the check program
    (trusted dataset code) runs *here* with ``candidate`` a proxy that sends the arguments in and receives
    plain data back (grpo_jax.rewards.wire). Asserts are evaluated here on those values, so exiting
    early, printing "passed", patching builtins or the check function, raising SystemExit or writing a
    result file inside the sandbox cannot earn anything: only correct return values can.
Each top-level statement of ``check`` that contains an assert counts as one test ("fraction" mode scores
passed / total; "all" scores 1 only when every test passes). Each candidate call has ``timeout_s``; after a
timeout the rest of that completion's tests fail.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import select
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from grpo_jax.rewards import pyast, wire
from grpo_jax.rewards.sandbox import SandboxLimits, open_python, run_python

_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The last ```python block of a completion, else the whole text."""
    blocks = _CODE_BLOCK.findall(text)
    return blocks[-1] if blocks else text


# ---- stdin/stdout cases ------------------------------------------------------------------------------

_IO_RUNNER = r"""
import json, os, signal, subprocess, sys
job = json.loads(sys.stdin.read())
with open("prog.py", "w") as f:
    f.write(job["program"])

def end_case(proc):
    # nothing a case started may work on into the next case's time: its process group dies, and in the
    # sandbox's own PID namespace (where this runner is process 1) every other process, however detached
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        try:
            while True:
                os.waitpid(-1, 0)
        except ChildProcessError:
            pass

results = []
for case in job["inputs"]:
    proc = subprocess.Popen([sys.executable, "-I", "-S", "prog.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(case.encode(), timeout=job["timeout_s"])
        # past the cap the case fails: nothing after the cap is seen, so it cannot count
        results.append({"stdout": out[:job["max_case_output"]].decode("utf-8", "replace"),
                        "ok": len(out) <= job["max_case_output"]})
    except subprocess.TimeoutExpired:
        results.append({"stdout": "", "ok": False})
    end_case(proc)
sys.stdout.write(json.dumps(results))
"""


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _run_io_cases(program: str, cases: Sequence[dict], timeout_s: float, limits: SandboxLimits,
                  cancel: threading.Event | None = None) -> tuple[int, int]:
    inputs = [str(c["input"]) for c in cases]
    expected = [_normalise(str(c["output"])) for c in cases]
    cap = max(len(e) for e in expected) * 2 + 1024
    job = {"program": program, "inputs": inputs, "timeout_s": timeout_s, "max_case_output": cap}
    # the runner's report carries every case's capped output, JSON-escaped (at most 6 bytes per byte)
    report = len(cases) * (6 * cap + 64)
    budget = SandboxLimits(**{**limits.__dict__, "wall_s": limits.wall_s + timeout_s * len(cases),
                              "cpu_s": int(limits.cpu_s + timeout_s * len(cases)) + 1,
                              "max_output_bytes": max(limits.max_output_bytes, report)})
    result = run_python(["-c", _IO_RUNNER], json.dumps(job).encode(), budget, cancel)
    try:
        outputs = json.loads(result.stdout.decode("utf-8", "replace"))
        got = [_normalise(o["stdout"]) if o.get("ok") is True else None for o in outputs]
    except (ValueError, TypeError, AttributeError, KeyError):
        return 0, len(cases)  # no readable report: nothing passed
    # a report cut short (the runner killed mid-way) has fewer outputs: the missing cases did not pass
    return sum(1 for g, e in zip(got, expected, strict=False) if g == e), len(cases)


# ---- HumanEval-style check programs -------------------------------------------------------------------

_SERVER = r"""
import json, os, sys
exec(WIRE_SOURCE)
proto_in = os.fdopen(os.dup(0), "r")
proto_out = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
job = json.loads(proto_in.readline())
namespace = {"__name__": "__main__"}
try:
    exec(compile(job["program"], "solution.py", "exec"), namespace)
    fn = namespace[job["entry_point"]]
except BaseException as e:
    fn = None
for line in proto_in:
    try:
        if fn is None:
            raise NameError("the program did not define the entry point")
        reply = {"ok": encode(fn(*decode(json.loads(line))))}
    except BaseException as e:
        reply = {"error": type(e).__name__}
    proto_out.write(json.dumps(reply) + "\n")
    proto_out.flush()
"""


class CandidateTimeout(BaseException):
    """A call of the sandboxed candidate ran past its time limit. A BaseException, so that a check's own
    ``except Exception`` (around a call it expects to raise) does not swallow it and count the test passed."""


def _candidate_error(name: Any) -> Exception:
    """The exception a candidate call raises when the candidate raised ``name`` in the sandbox: that built-in
    exception class (a check may expect ``ValueError``), else RuntimeError. Only the name crosses over."""
    import builtins

    cls = getattr(builtins, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    return cls(f"candidate raised {name if isinstance(name, str) else '?'}")


class _Candidate:
    """Callable proxy: arguments go into the sandbox, plain data comes back. Each call has ``timeout_s`` for
    sending its arguments and receiving the reply together (the pipe's write blocks while the server is busy
    and its buffer is full, so the write is timed too)."""

    def __init__(self, proc, timeout_s: float) -> None:
        self._proc, self._timeout_s, self.dead = proc, timeout_s, False
        self._buffer = b""

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        poller = select.poll()  # select.select refuses descriptors >= 1024, common in a long-lived trainer
        poller.register(fd, event)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise CandidateTimeout(f"candidate call took longer than {self._timeout_s} s")

    def _send(self, data: bytes, deadline: float) -> None:
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            self._wait(fd, select.POLLOUT, deadline)
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                pass

    def _readline(self, deadline: float) -> bytes:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            self._wait(fd, select.POLLIN, deadline)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise CandidateTimeout("the candidate process ended")
            self._buffer += chunk
            if len(self._buffer) > 16 << 20:
                raise CandidateTimeout("the candidate's reply is too large")
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def start(self, program: str, entry_point: str) -> None:
        """Send the program, the first line the server reads; if that fails in ``timeout_s``, every call fails."""
        job = json.dumps({"program": program, "entry_point": entry_point}).encode() + b"\n"
        try:
            self._send(job, time.monotonic() + self._timeout_s)
        except (CandidateTimeout, OSError):
            self.dead = True

    def __call__(self, *args):
        if self.dead:
            raise CandidateTimeout("the candidate timed out earlier")
        request = wire.dumps(list(args)).encode() + b"\n"
        deadline = time.monotonic() + self._timeout_s
        try:
            self._send(request, deadline)
            reply = json.loads(self._readline(deadline))
        except CandidateTimeout:
            self.dead = True
            raise
        except (OSError, ValueError) as e:
            self.dead = True
            raise CandidateTimeout(f"the candidate process failed: {e}") from e
        if isinstance(reply, dict) and "ok" in reply:
            return wire.decode(reply["ok"])
        raise _candidate_error(reply.get("error") if isinstance(reply, dict) else None)


def program_to_test(code: str, prompt: str, entry_point: str) -> str:
    """The program a check program tests: ``code`` itself when it defines ``entry_point`` at top level (a chat
    model's whole function); else, in HumanEval's completion format, the prompt (the signature and docstring)
    followed by ``code`` (the body a base model writes to continue it)."""
    try:
        tree = pyast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # e.g. an indented body on its own
        tree = None
    defined: set[str] = set()
    for node in tree.body if tree is not None else []:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return code if entry_point in defined or not prompt else prompt + code


def split_check(check_program: str) -> tuple[ast.Module, int]:
    """Rewrite ``check``'s body so each top-level statement containing an assert records pass/fail in
    ``__results`` and carries on; returns the module and the number of such tests (at least 1)."""
    tree = pyast.parse(check_program)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("check program defines no `def check(candidate)`")
    body, tests = [], 0
    for stmt in check.body:
        if not any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            body.append(stmt)
            continue
        tests += 1
        wrapped = pyast.parse(
            "try:\n    pass\n    __results.append(True)\n"
            "except __CandidateTimeout:\n    raise\nexcept BaseException:\n    __results.append(False)\n"
        ).body[0]
        wrapped.body[0] = stmt
        body.append(wrapped)
    if tests:
        check.body = body
    ast.fix_missing_locations(tree)
    return tree, max(tests, 1)


def _run_check(program: str, check_program: str, entry_point: str, setup: str, timeout_s: float,
               limits: SandboxLimits, cancel: threading.Event | None = None) -> tuple[int, int]:
    tree, total = split_check(check_program)
    results: list[bool] = []
    namespace: dict[str, Any] = {"__name__": "__check__", "__results": results,
                                 "__CandidateTimeout": CandidateTimeout}
    server = _SERVER.replace("WIRE_SOURCE", repr(inspect.getsource(wire)))
    with open_python(["-c", server], limits, cancel) as proc:
        candidate = _Candidate(proc, timeout_s)
        candidate.start(program, entry_point)
        try:
            if setup:
                exec(compile(setup, "setup.py", "exec"), namespace)  # trusted task code (e.g. the prompt)
            exec(pyast.compile_tree(tree, "check.py"), namespace)
            namespace["check"](candidate)
            check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
            if not any(isinstance(n, ast.Assert) for n in ast.walk(check)):
                # nothing was counted (no asserts, or only in helpers it calls, as EvalPlus's ``assertion``):
                # one test, passed by returning
                results.append(True)
        except CandidateTimeout:
            pass
        except BaseException:  # the check failed outside a counted statement
            pass
    return sum(results), total


# ---- the reward ----------------------------------------------------------------------------------------


def code_reward(
    completions: Sequence[str],
    *,
    tests: Sequence[Any],
    entry_point: Sequence[str | None] | None = None,
    test_setup: Sequence[str] | None = None,
    timeout_s: float = 1.0,
    mode: str = "fraction",
    limits: SandboxLimits | None = None,
    max_workers: int = 8,
    batch_timeout_s: float | None = None,
    **kwargs: Any,
) -> list[float]:
    """Score each completion's code against its task's tests (TRL reward-function convention).

    Args:
      completions: N completion texts; the code is the last ```python block, else the whole text.
      tests: N entries, each a list of {"input": stdin, "output": expected stdout} cases or a
        HumanEval-style check program (str) defining ``check(candidate)``.
      entry_point: N function names the check program's ``candidate`` stands for (check programs only).
      test_setup: N pieces of trusted task code run before the check program (e.g. HumanEval's prompt,
        whose helper functions some checks call), optional.
      timeout_s: time limit of each test (a stdin/stdout case, or one candidate call).
      mode: "fraction" (share of tests passed) or "all" (1 only if all pass).
      limits: the sandbox's limits per completion (memory, processes, output, wall time of the session).
      max_workers: completions scored in parallel.
      batch_timeout_s: bound on the whole batch's wall time; completions not finished by then score 0.

    Returns N floats in [0, 1].
    """
    if mode not in ("fraction", "all"):
        raise ValueError(f"code_reward: unknown mode={mode!r}; expected 'fraction' or 'all'")
    n = len(completions)
    if len(tests) != n:
        raise ValueError(f"code_reward: `tests` has {len(tests)} entries for {n} completions")
    entry_point = [None] * n if entry_point is None else list(entry_point)
    test_setup = [""] * n if test_setup is None else list(test_setup)
    limits = limits or SandboxLimits(wall_s=max(10.0, 20 * timeout_s))

    def one(i: int) -> float:
        program = extract_code(completions[i])
        if isinstance(tests[i], str):
            if not entry_point[i]:
                raise ValueError(f"code_reward: completion {i} has a check program but no entry_point")
            setup = test_setup[i] or ""
            passed, total = _run_check(program_to_test(program, setup, entry_point[i]), tests[i], entry_point[i],
                                       setup, timeout_s, limits, cancel)
        else:
            if not tests[i]:
                raise ValueError(f"code_reward: completion {i} has an empty list of test cases")
            passed, total = _run_io_cases(program, tests[i], timeout_s, limits, cancel)
        return passed / total if mode == "fraction" else float(passed == total)

    scores = np.zeros(n, np.float32)
    deadline = None if batch_timeout_s is None else time.monotonic() + batch_timeout_s
    cancel = threading.Event()  # set at the batch's deadline: the sandboxes still running are killed
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, n)))
    try:
        futures = [pool.submit(one, i) for i in range(n)]
        for i, future in enumerate(futures):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                scores[i] = future.result(timeout=left)
            except TimeoutError:
                cancel.set()  # this one and every later one unfinished score 0
    finally:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)  # the killed ones end within the sandbox's poll
    return scores.tolist()
