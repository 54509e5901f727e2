"""code_reward and its sandbox: real positives, time limits, and an adversarial suite that must earn 0."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from grpo_jax.rewards.code import code_reward, extract_code, program_to_test, split_check
from grpo_jax.rewards.sandbox import SandboxLimits, isolation, run_python

ADD_CHECK = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
ADD_IO = [{"input": "2 3\n", "output": "5\n"}, {"input": "-1 1\n", "output": "0\n"}]

# Made-up problems in HumanEval's format (prompt with a helper, check(candidate), canonical solution).
HUMANEVAL_STYLE = [
    dict(
        prompt='def running_max(xs: list) -> list:\n    """Running maximum of xs."""\n',
        solution="def running_max(xs):\n    out, best = [], None\n    for x in xs:\n"
                 "        best = x if best is None or x > best else best\n        out.append(best)\n    return out\n",
        entry_point="running_max",
        test="METADATA = {}\n\ndef check(candidate):\n    assert candidate([]) == []\n"
             "    assert candidate([1, 3, 2, 5]) == [1, 3, 3, 5]\n    for n in range(1, 6):\n"
             "        assert candidate(list(range(n, 0, -1))) == [n] * n\n",
    ),
    dict(
        prompt="import math\n\ndef poly(xs, x):\n    return sum(c * math.pow(x, i) for i, c in enumerate(xs))\n\n"
               'def root(xs: list) -> float:\n    """A zero of the odd-degree polynomial xs."""\n',
        solution="def root(xs):\n    lo, hi = -1e3, 1e3\n    f = lambda x: sum(c * x ** i for i, c in enumerate(xs))\n"
                 "    for _ in range(200):\n        mid = (lo + hi) / 2\n"
                 "        if (f(mid) > 0) == (f(lo) > 0):\n            lo = mid\n        else:\n            hi = mid\n"
                 "    return (lo + hi) / 2\n",
        entry_point="root",
        test="def check(candidate):\n    import random\n    rng = random.Random(0)\n    for _ in range(20):\n"
             "        xs = [rng.uniform(-5, 5) for _ in range(4)]\n"
             "        assert abs(poly(xs, candidate(list(xs)))) < 1e-4\n",
    ),
    dict(
        prompt='def count_words(s: str) -> dict:\n    """Word -> count."""\n',
        solution="def count_words(s):\n    out = {}\n    for w in s.split():\n        out[w] = out.get(w, 0) + 1\n"
                 "    return out\n",
        entry_point="count_words",
        test="def check(candidate):\n    assert candidate('a b a') == {'a': 2, 'b': 1}\n"
             "    assert candidate('') == {}\n",
    ),
]


def _score(code, tests=ADD_CHECK, entry="add", **kw):
    text = f"```python\n{code}\n```"
    return code_reward([text], tests=[tests], entry_point=[entry if isinstance(tests, str) else None], **kw)[0]


def test_sandbox_is_namespaced_on_this_machine():
    """CI and the dev machines support namespaces; a silent fallback would weaken every test below."""
    assert isolation() in ("namespaces-root", "namespaces-user")


def test_extract_code_and_split_check():
    assert extract_code("blah\n```python\nx = 1\n```\nthen\n```python\nx = 2\n```") == "x = 2\n"
    assert extract_code("print(1)") == "print(1)"
    _, total = split_check(HUMANEVAL_STYLE[0]["test"])
    assert total == 3  # two asserts and one loop of asserts


def test_positives_and_fraction():
    assert _score("def add(a, b):\n    return a + b") == 1.0
    assert _score("def add(a, b):\n    return 5") == 0.5
    assert _score("def add(a, b):\n    return 5", mode="all") == 0.0
    assert _score("import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)", tests=ADD_IO) == 1.0
    assert _score("print(5)", tests=ADD_IO) == 0.5


def test_humaneval_style_canonical_solutions_pass_and_wrong_ones_fail():
    rewards = code_reward([f"```python\n{p['solution']}```" for p in HUMANEVAL_STYLE],
                          tests=[p["test"] for p in HUMANEVAL_STYLE],
                          entry_point=[p["entry_point"] for p in HUMANEVAL_STYLE],
                          test_setup=[p["prompt"] for p in HUMANEVAL_STYLE])
    assert rewards == [1.0, 1.0, 1.0]
    wrong = code_reward(["def running_max(xs):\n    return xs"], tests=[HUMANEVAL_STYLE[0]["test"]],
                        entry_point=["running_max"], test_setup=[HUMANEVAL_STYLE[0]["prompt"]])
    assert wrong == [pytest.approx(1 / 3)]  # only the empty-list case passes


def test_slow_code_fails_the_time_limit():
    """The seed's two Fibonacci solutions: a loop passes fib(38) within 1 s (naive: ~3.5 s), naive recursion does
    not."""
    check = "def check(candidate):\n    assert candidate(10) == 55\n    assert candidate(38) == 39088169\n"
    loop = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"
    naive = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"
    assert _score(loop, check, "fib", timeout_s=1.0) == 1.0
    assert _score(naive, check, "fib", timeout_s=1.0) == 0.5
    io = [{"input": "38", "output": "39088169"}]
    assert _score(naive + "\nprint(fib(int(input())))", io, timeout_s=1.0) == 0.0
    assert _score(loop + "\nprint(fib(int(input())))", io, timeout_s=1.0) == 1.0


def test_check_programs_see_the_candidates_exception_type_and_its_time_limit():
    """A check that expects ValueError gets ValueError (built-in exception types cross by name); a check's own
    ``except Exception`` around such a call does not swallow a time-out and count the test passed."""
    check = ("def check(candidate):\n    assert candidate(4) == 2\n    try:\n        candidate(-1)\n"
             "        assert False, 'should have raised'\n    except Exception:\n        pass\n")
    raises = "def isqrt(n):\n    if n < 0:\n        raise ValueError(n)\n    return int(n ** 0.5)"
    hangs = "def isqrt(n):\n    while n < 0:\n        pass\n    return int(n ** 0.5)"
    assert _score(raises, check, "isqrt", timeout_s=1.0) == 1.0
    assert _score(hangs, check, "isqrt", timeout_s=1.0) == 0.5
    expects = ("def check(candidate):\n    assert candidate(4) == 2\n    try:\n        candidate(-1)\n"
               "        assert False\n    except ValueError:\n        pass\n")
    assert _score(raises, expects, "isqrt") == 1.0
    assert _score(raises.replace("ValueError(n)", "TypeError(n)"), expects, "isqrt") == 0.5


def test_asserts_in_a_helper_count_as_one_test():
    """EvalPlus's checks call a module-level ``assertion`` helper: nothing in ``check`` is counted, so the whole
    check is one test, passed by returning."""
    check = ("def assertion(out, exp, atol):\n    assert out == exp\n\n"
             "def check(candidate):\n    for inp, exp in zip([[2, 3], [-1, 1]], [5, 0]):\n"
             "        assertion(candidate(*inp), exp, 0)\n")
    assert _score("def add(a, b):\n    return a + b", check) == 1.0
    assert _score("def add(a, b):\n    return 5", check) == 0.0


def test_work_left_running_by_a_case_dies_with_it():
    """A stdin/stdout case that forks a detached worker (new session, closed pipes) to finish slow work after the
    case's time limit, for later cases to read from a file: the worker is killed with the case, so nothing
    passes (it earned half of the cases before)."""
    cheat = ("import os, time\nn = int(input())\nif os.path.exists('table'):\n    print(2 * n)\n"
             "elif not os.path.exists('started'):\n    open('started', 'w').close()\n    if os.fork() == 0:\n"
             "        os.setsid()\n        null = os.open(os.devnull, os.O_RDWR)\n"
             "        for fd in (0, 1, 2):\n            os.dup2(null, fd)\n"
             "        time.sleep(1.0)\n        open('table', 'w').close()\n        os._exit(0)\n"
             "    time.sleep(60)\nelse:\n    time.sleep(60)\n")
    cases = [{"input": f"{k}\n", "output": f"{2 * k}\n"} for k in range(1, 5)]
    assert _score(cheat, cases, timeout_s=0.5) == 0.0
    assert _score("print(2 * int(input()))", cases, timeout_s=0.5) == 1.0


def test_many_cases_with_long_outputs():
    """The runner reports every case's output in one message: 10 cases of 109 KB each (2.2 MB escaped) no longer
    overflow the sandbox's 1 MiB stdout limit and score 0."""
    case = {"input": "20000\n", "output": "\n".join(map(str, range(1, 20001))) + "\n"}
    assert _score("print('\\n'.join(map(str, range(1, int(input()) + 1))))", [case] * 10, timeout_s=2.0) == 1.0


def test_a_body_continuing_the_prompt_is_tested_with_it():
    """HumanEval's completion format: without a chat template a base model continues the prompt's signature and
    docstring with the body alone. The body is run after the prompt (it scored 0 on its own, having no def);
    a whole function is run as it is."""
    problem = HUMANEVAL_STYLE[0]
    body = "    out, best = [], None\n    for x in xs:\n        best = x if best is None or x > best else best\n" \
           "        out.append(best)\n    return out\n"

    def score(code):
        return code_reward([code], tests=[problem["test"]], entry_point=[problem["entry_point"]],
                           test_setup=[problem["prompt"]])[0]

    assert score(body) == 1.0
    assert score(problem["solution"]) == 1.0
    assert score("    return xs\n") < 1.0
    assert program_to_test(problem["solution"], problem["prompt"], "running_max") == problem["solution"]
    assert program_to_test(body, problem["prompt"], "running_max") == problem["prompt"] + body


def test_output_past_the_cap_fails_the_case():
    """Only the first 2 x len(expected) + 1024 bytes of a case's output come back; a longer output fails rather
    than being judged on its start (here the right answer, then padding and a wrong one)."""
    padded = "a, b = map(int, input().split())\nprint(a + b)\nprint(' ' * 4000 + 'WRONG')"
    assert _score(padded, ADD_IO) == 0.0
    assert _score(padded.replace("' ' * 4000", "' ' * 10"), ADD_IO) == 0.0  # the control: judged in full
    assert _score("a, b = map(int, input().split())\nprint(a + b)", ADD_IO) == 1.0


def test_scores_with_many_descriptors_open():
    """A long-lived trainer may hold over 1,024 file descriptors; select.select would refuse the pipe's."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 1300")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1300), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(held) >= 1024
        assert _score("def add(a, b):\n    return a + b", ADD_CHECK) == 1.0
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- adversarial suite -------------------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path):
    """A file outside the sandbox, world-writable, that no completion may change or delete."""
    path = tmp_path / "sentinel.txt"
    path.write_text("original")
    os.chmod(tmp_path, 0o777)
    os.chmod(path, 0o666)
    host_tmp = Path("/tmp") / f"grpo_sentinel_{os.getpid()}"
    host_tmp.write_text("original")
    os.chmod(host_tmp, 0o666)
    yield [path, host_tmp]
    host_tmp.unlink(missing_ok=True)


ATTACKS = {
    "infinite loop": "while True:\n    pass",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "memory bomb": "x = bytearray(8 * 1024 ** 3)\nblocks = []\nwhile True:\n    blocks.append(bytearray(10 ** 8))",
    "huge output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)",
    "exit 0 before asserts": "import sys\nsys.exit(0)",
    "os._exit before asserts": "import os\nos._exit(0)",
    "prints passed": "print('passed')\nprint('All tests passed')\nimport os\nos._exit(0)",
    "redefines check": "def check(candidate):\n    return True\ndef add(a, b):\n    return None",
    "patches builtins": "import builtins\nclass Yes:\n    def __eq__(self, o): return True\n"
                        "builtins.AssertionError = type('E', (Exception,), {})\n"
                        "def add(a, b):\n    return Yes()",
    "raises SystemExit": "def add(a, b):\n    raise SystemExit(0)",
    "raises KeyboardInterrupt": "def add(a, b):\n    raise KeyboardInterrupt",
    "fake result file": "import json\nfor name in ('result.json', 'results.json', '/tmp/result.json'):\n"
                        "    open(name, 'w').write(json.dumps({'passed': True, 'score': 1.0}))\n"
                        "def add(a, b):\n    return None",
    "signals its parent": "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n"
                          "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("kind", ["check", "io"])
def test_attacks_earn_nothing(attack, kind, sentinel):
    tests = ADD_CHECK if kind == "check" else ADD_IO
    start = time.monotonic()
    assert _score(ATTACKS[attack], tests, timeout_s=1.0) == 0.0
    assert time.monotonic() - start < 60
    assert all(p.read_text() == "original" for p in sentinel)


def test_files_outside_cannot_be_written_or_deleted(sentinel):
    targets = [str(p) for p in sentinel] + [str(Path(__file__).resolve())]
    code = (f"import os\nfor t in {targets!r}:\n"
            "    for op in (lambda: open(t, 'w').write('pwned'), lambda: os.remove(t)):\n"
            "        try:\n            op()\n        except OSError:\n            pass\nprint('done')")
    before = Path(__file__).read_bytes()
    assert _score(code, [{"input": "", "output": "done"}]) == 1.0  # it ran to the end
    assert all(p.read_text() == "original" for p in sentinel)
    assert Path(__file__).read_bytes() == before


def test_parent_environment_is_out_of_reach(monkeypatch):
    secret = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("GRPO_TEST_SECRET", secret)
    code = ("import os, glob\nfound = os.environ.get('GRPO_TEST_SECRET', '')\n"
            "for p in glob.glob('/proc/*/environ'):\n    try:\n        data = open(p, 'rb').read()\n"
            "    except OSError:\n        continue\n    if b'GRPO_TEST_SECRET=' in data:\n"
            "        found = data.split(b'GRPO_TEST_SECRET=')[1].split(b'\\0')[0].decode()\nprint(found)")
    assert _score(code, [{"input": "", "output": secret}]) == 0.0


def test_no_network_even_to_the_hosts_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve():
        server.settimeout(10)
        try:
            conn, _ = server.accept()
            conn.sendall(b"OPEN_SESAME\n")
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint(s.recv(100).decode())"
    assert _score(code, [{"input": "", "output": "OPEN_SESAME"}], timeout_s=3.0) == 0.0
    server.close()


def test_sandbox_limits_directly():
    hog = run_python(["-c", "print('x' * 10 ** 7)"], b"")
    assert hog.output_overflow and len(hog.stdout) <= SandboxLimits().max_output_bytes
    slow = run_python(["-c", "import time\ntime.sleep(30)"], b"", SandboxLimits(wall_s=1))
    assert slow.timed_out and slow.returncode is None
    who = run_python(["-c", "import os\nprint(os.getuid(), os.getcwd(), sorted(os.environ))"], b"")
    uid, cwd, env = who.stdout.decode().split(" ", 2)
    assert int(uid) != 0 and cwd == "/tmp/work" and "GRPO" not in env and "HOME" in env


def test_batch_runs_in_parallel_within_a_bound():
    completions = ["```python\nwhile True:\n    pass\n```"] * 6 + ["```python\ndef add(a, b):\n    return a + b\n```"]
    start = time.monotonic()
    rewards = code_reward(completions, tests=[ADD_CHECK] * 7, entry_point=["add"] * 7, timeout_s=1.0, max_workers=7)
    assert rewards == [0.0] * 6 + [1.0]
    assert time.monotonic() - start < 15  # seven 1 s timeouts in parallel, not in sequence


def test_sending_large_arguments_counts_against_the_time_limit():
    """A call's time limit covers writing its arguments: while the server is busy (here 2 s of top-level work)
    a 300 KB argument fills the pipe, and the write used to wait untimed, so the slow program passed."""
    slow = "import time\ntime.sleep(2)\ndef total(xs):\n    return sum(xs)"
    big = "def check(candidate):\n    assert candidate([1] * 100000) == 100000\n"
    start = time.monotonic()
    assert _score(slow, big, "total", timeout_s=1.0) == 0.0
    assert time.monotonic() - start < 1.9
    assert _score(slow.replace("time.sleep(2)", "pass"), big, "total", timeout_s=1.0) == 1.0


def test_batch_timeout_bounds_the_batch():
    """At ``batch_timeout_s`` the sandboxes still running are killed: the batch ends then, not when their own
    limits would end them (5 s per call here; 6 cases of 1 s in a row)."""
    loop = "```python\nwhile True:\n    pass\n```"
    add = "```python\ndef add(a, b):\n    return a + b\n```"
    start = time.monotonic()
    rewards = code_reward([loop, loop, add], tests=[ADD_CHECK] * 3, entry_point=["add"] * 3, timeout_s=5.0,
                          batch_timeout_s=1.5)
    assert rewards == [0.0, 0.0, 1.0] and time.monotonic() - start < 4.0
    start = time.monotonic()
    assert code_reward([loop], tests=[ADD_IO * 3], timeout_s=1.0, batch_timeout_s=1.0) == [0.0]
    assert time.monotonic() - start < 3.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode='best'"):
        code_reward(["x"], tests=[ADD_IO], mode="best")
    with pytest.raises(ValueError, match="`tests` has 2 entries for 1 completions"):
        code_reward(["x"], tests=[ADD_IO, ADD_IO])
    with pytest.raises(ValueError, match="has a check program but no entry_point"):
        code_reward(["x"], tests=[ADD_CHECK])


def test_sandbox_dies_with_the_process_that_started_it():
    import signal
    import subprocess
    import sys

    marker = f"sleep_marker_{os.getpid()}"
    # the starter's own command line holds the marker split in two; only the sandboxed one holds it whole
    starter = subprocess.Popen([sys.executable, "-c",
                                "from grpo_jax.rewards.sandbox import run_python, SandboxLimits\n"
                                f"code = 'import time  # {marker[:5]}' + '{marker[5:]}' + '\\ntime.sleep(60)'\n"
                                "run_python(['-c', code], b'', SandboxLimits(wall_s=60))"])

    def sandboxed_alive():
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                found |= marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 30
    while not sandboxed_alive():
        assert time.monotonic() < deadline, "the sandboxed process never started"
        time.sleep(0.1)
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 10
    while sandboxed_alive():
        assert time.monotonic() < deadline, "the sandboxed process outlived its starter"
        time.sleep(0.1)
