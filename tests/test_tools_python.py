"""The sandboxed Python tool: notebook-cell output, errors, truncation, and hostile snippets that cost only
their own call (in the real sandbox, as tests/test_rewards_code.py's adversarial suite)."""

import socket
import time

import pytest

from grpo_jax.rewards.sandbox import isolation
from grpo_jax.tools import ToolResult, run_python_tool, run_python_tools
from grpo_jax.tools.python_tool import TRUNCATED

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
FLOOD = "while True:\n    print('x' * 1000)"
NETWORK = "import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=2)"
UNREACHABLE = "OSError: [Errno 101] Network is unreachable"  # the sandbox has only a downed loopback


def test_sandbox_is_namespaced_on_this_machine():
    """The network tests below rely on the sandbox's own network namespace."""
    assert isolation() in ("namespaces-root", "namespaces-user")


def test_cell_semantics_last_expression_is_printed():
    ok = run_python_tool("4821*93017")
    assert ok == ToolResult("448434957\n", False, False, False, ok.seconds) and 0 < ok.seconds < 5
    assert run_python_tool("print('product:')\nx = 4821\nx * 93017").output == "product:\n448434957\n"
    assert run_python_tool("def f(n):\n    return [n] * 2\nf('a')").output == "['a', 'a']\n"
    assert run_python_tool("None").output == ""
    assert run_python_tool("x = 1").output == ""
    assert run_python_tool("").output == ""
    assert run_python_tool("import sys\nprint('shown')\nprint('hidden', file=sys.stderr)").output == "shown\n"


def test_exceptions_report_their_last_traceback_line():
    res = run_python_tool("print('before')\n1 / 0\nprint('after')")
    assert res.output == "before\nZeroDivisionError: division by zero"
    assert res.error and not res.timed_out and not res.truncated
    assert run_python_tool("x = (").output == "SyntaxError: '(' was never closed"
    assert run_python_tool("import json\njson.loads('{')").output.startswith("json.decoder.JSONDecodeError: ")
    assert run_python_tool("raise ValueError('two\\nlines')").output == "ValueError: two\nlines"
    assert run_python_tool("input()").output == "EOFError: EOF when reading a line"  # stdin holds only the code


def test_non_zero_exits_and_signals():
    res = run_python_tool("print('hi')\nimport sys\nsys.exit(3)")
    assert (res.output, res.error) == ("hi\nError: exited with status 3", True)
    assert run_python_tool("import os\nos._exit(4)").output == "Error: exited with status 4"
    assert run_python_tool("import ctypes\nctypes.string_at(0)").output == "Error: killed"  # SIGSEGV
    assert run_python_tool("import sys\nsys.exit(0)") == ToolResult("", False, False, False, pytest.approx(0, abs=5))


def test_timeout_is_bounded():
    for hang in ("while True:\n    pass", "import time\ntime.sleep(100)"):
        start = time.monotonic()
        res = run_python_tool(hang, timeout_s=1)
        assert time.monotonic() - start < 3
        assert (res.output, res.error, res.timed_out) == ("Error: timed out after 1 s", True, True)
    # stdout is line-buffered: what was printed before the hang is shown
    assert run_python_tool("print('step 1')\nwhile True:\n    pass", timeout_s=0.5).output == \
        "step 1\nError: timed out after 0.5 s"


def test_output_is_truncated_to_the_budget():
    flood = run_python_tool(FLOOD, timeout_s=1, max_output_chars=100)
    assert flood.output == "x" * 100 + "\n" + TRUNCATED
    assert flood.error and flood.truncated and not flood.timed_out and flood.seconds < 1  # killed at the cap
    long = run_python_tool("print('y' * 2000)\n'done'", max_output_chars=50)
    assert long == ToolResult("y" * 50 + "\n" + TRUNCATED, False, False, True, long.seconds)
    exact = run_python_tool("print('z' * 49)", max_output_chars=50)  # 49 + newline fits
    assert (exact.output, exact.truncated) == ("z" * 49 + "\n", False)
    # the error line keeps its place in the budget
    res = run_python_tool("print('w' * 500)\n1 / 0", max_output_chars=60)
    assert res.output == "w" * 25 + "\n" + TRUNCATED + "\nZeroDivisionError: division by zero"
    assert res.error and res.truncated
    assert run_python_tool("print('é' * 30)", max_output_chars=10).output == "é" * 10 + "\n" + TRUNCATED


def test_fork_bomb_costs_only_its_call():
    start = time.monotonic()
    res = run_python_tool(FORK_BOMB, timeout_s=1)
    assert res.error and res.timed_out and time.monotonic() - start < 4
    assert run_python_tool("6 * 7").output == "42\n"  # nothing it forked is left to slow the next call


def test_no_network_even_to_the_hosts_loopback():
    assert run_python_tool(NETWORK).output == UNREACHABLE
    server = socket.socket()  # listening: the kernel would complete a connection into its backlog
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint(s.recv(10))"
    res = run_python_tool(code, timeout_s=3)
    assert res.output == UNREACHABLE and res.error  # its own loopback is down; the host's is not there
    server.setblocking(False)
    with pytest.raises(BlockingIOError):  # nobody connected
        server.accept()
    server.close()


def test_memory_hog_fails_with_memory_error():
    start = time.monotonic()
    res = run_python_tool("x = bytearray(2 * 1024 ** 3)", memory_mb=512)
    assert (res.output, res.error, res.timed_out) == ("MemoryError", True, False)
    assert time.monotonic() - start < 3
    assert run_python_tool("len(bytearray(100 * 1024 ** 2))", memory_mb=512).output == "104857600\n"


def test_batch_isolates_hostile_calls_and_runs_in_parallel():
    good = ["sum(range(10))", "print('ok')"]
    codes = [good[0], "while True:\n    pass", FLOOD, FORK_BOMB, NETWORK, good[1]]
    start = time.monotonic()
    results = run_python_tools(codes, timeout_s=1, max_output_chars=100, max_workers=6)
    elapsed = time.monotonic() - start
    assert [r.output for r in results] == ["45\n", "Error: timed out after 1 s", "x" * 100 + "\n" + TRUNCATED,
                                           "Error: timed out after 1 s", UNREACHABLE, "ok\n"]
    assert [r.error for r in results] == [False, True, True, True, True, False]
    assert [r.timed_out for r in results] == [False, True, False, True, False, False]
    assert elapsed < 4  # two 1 s timeouts side by side, not one after the other
    assert run_python_tools([]) == []
    assert [r.output for r in run_python_tools([f"{i} ** 2" for i in range(5)], max_workers=2)] == \
        [f"{i ** 2}\n" for i in range(5)]


def test_batch_timeout_cancels_a_hang_early():
    start = time.monotonic()
    results = run_python_tools(["import time\ntime.sleep(100)", "1 + 1", "while True:\n    pass"], timeout_s=30,
                               batch_timeout_s=1)
    assert time.monotonic() - start < 3
    assert [r.output for r in results] == ["Error: timed out at the batch's time limit", "2\n",
                                           "Error: timed out at the batch's time limit"]
    assert [r.timed_out for r in results] == [True, False, True]
    # calls queued behind the hang never start once the deadline has passed
    start = time.monotonic()
    results = run_python_tools(["while True:\n    pass"] * 3, timeout_s=30, max_workers=1, batch_timeout_s=0.5)
    assert time.monotonic() - start < 2.5 and all(r.timed_out and r.error for r in results)


@pytest.mark.parametrize("kwargs, match", [
    (dict(timeout_s=0), "`timeout_s` must be a finite number of seconds > 0, got 0"),
    (dict(timeout_s=float("nan")), "`timeout_s`"),
    (dict(memory_mb=0), "`memory_mb` must be an int >= 1, got 0"),
    (dict(max_output_chars=0), "`max_output_chars` must be an int >= 1, got 0"),
    (dict(max_workers=0), "`max_workers` must be an int >= 1, got 0"),
    (dict(batch_timeout_s=-1.0), "`batch_timeout_s` must be None or a finite number of seconds > 0, got -1.0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_python_tools(["1"], **kwargs)
    if "max_workers" not in kwargs and "batch_timeout_s" not in kwargs:
        with pytest.raises(ValueError, match=match):
            run_python_tool("1", **kwargs)
