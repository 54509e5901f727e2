"""The only place untrusted (model-generated) code runs: a separate, contained process.

Containment, from the outside in:
  * its own process group and a parent-death signal: the whole group is SIGKILLed at the wall-time limit,
    and it dies if the process that started it dies;
  * resource limits (setrlimit): CPU seconds, address space, file size, open files, processes;
  * Linux namespaces via util-linux ``unshare``: a new network namespace (only a downed loopback: no
    network at all), a new PID namespace with its own /proc (it cannot see or signal anything outside,
    and everything in it dies with it), and a new mount namespace with fresh tmpfs on /tmp, /var/tmp and
    /dev/shm (so even world-writable directories of the host are out of reach) whose /tmp/work is its
    working directory;
  * an unprivileged identity: as root, ``setpriv`` drops to a dedicated uid/gid per concurrent slot (so
    RLIMIT_NPROC, which root ignores, binds, and slots cannot signal each other), clears supplementary
    groups, all capabilities and the bounding set, and sets no_new_privs; without root, an unprivileged
    user namespace maps the caller instead;
  * a scrubbed environment: PATH, HOME, LANG and nothing of the parent's.

Where namespaces are unavailable, code still runs under the limits, with its own process group and a
scrubbed environment, but *network isolation is degraded*: ``isolation()`` says so and a warning is
logged once. Nothing the sandboxed process prints is trusted: callers decide verdicts themselves.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import queue
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

SANDBOX_UID_BASE = 61000  # slot k runs as uid/gid SANDBOX_UID_BASE + k (root only)
MAX_SLOTS = 64
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (the whole process tree inside it)."""

    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024  # address space per process
    file_size_mb: int = 16
    open_files: int = 64
    processes: int = 32
    max_output_bytes: int = 1 << 20  # more stdout than this fails the run

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"SandboxLimits: `{f.name}` must be > 0, got {getattr(self, f.name)!r}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    stdout: bytes
    stderr: bytes
    returncode: int | None  # None when it was killed for time
    timed_out: bool
    output_overflow: bool


def _python_for_unprivileged() -> str:
    """An interpreter the dropped user can execute (a venv under /root is not): the system one first."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
        if candidate and os.access(candidate, os.X_OK) and os.stat(candidate).st_mode & 0o001:
            return candidate
    raise RuntimeError("no world-executable python3 found for the code sandbox (looked in /usr/bin, /usr/local/bin)")


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """"namespaces-root", "namespaces-user" or "degraded" (limits only, network not isolated)."""
    unshare = shutil.which("unshare")
    mode = "degraded"
    if unshare:
        for name, flags in (("namespaces-root", []), ("namespaces-user", ["--user", "--map-root-user"])):
            if name == "namespaces-root" and (os.geteuid() != 0 or not shutil.which("setpriv")):
                continue
            probe = [unshare, *flags, "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
                     "/bin/sh", "-c", "mount -t tmpfs tmpfs /tmp && true"]
            try:
                if subprocess.run(probe, capture_output=True, timeout=20).returncode == 0:
                    mode = name
                    break
            except (OSError, subprocess.TimeoutExpired):
                pass
    if mode == "degraded":
        logger.warning("code sandbox: Linux namespaces unavailable; running untrusted code with resource "
                       "limits only. NETWORK ISOLATION IS DEGRADED.")
    return mode


class _Slots:
    """Distinct slot numbers for concurrent runs (each slot is its own uid when running as root)."""

    def __init__(self, n: int) -> None:
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(n):
            self._free.put(i)

    @contextmanager
    def take(self) -> Iterator[int]:
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)


_SLOTS = _Slots(MAX_SLOTS)


def _command(python: str, argv: list[str], slot: int, mode: str) -> list[str]:
    inner = [python, "-I", "-S", *argv]  # isolated mode: no user site, no PYTHON* env, no cwd on sys.path
    if mode == "degraded":
        return inner
    uid = SANDBOX_UID_BASE + slot
    prepare = ("mount -t tmpfs -o size=64m,mode=1777 tmpfs /tmp && mount -t tmpfs -o size=16m tmpfs /var/tmp && "
               "mount -t tmpfs -o size=16m tmpfs /dev/shm && mkdir /tmp/work && cd /tmp/work && ")
    if mode == "namespaces-root":
        prepare += f"chown {uid}:{uid} /tmp/work && exec setpriv --reuid {uid} --regid {uid} --clear-groups " \
                   "--inh-caps=-all --bounding-set=-all --no-new-privs --pdeathsig keep -- \"$@\""
        flags = []
    else:
        prepare += "exec \"$@\""
        flags = ["--user", "--map-root-user"]
    return [shutil.which("unshare"), *flags, "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
            "/bin/sh", "-c", prepare, "sandbox", *inner]


def _limit_prefix(limits: SandboxLimits) -> list[str] | None:
    """util-linux wrappers that set the parent-death signal and the rlimits, then exec the rest.

    Doing this with exec'd tools rather than a Python ``preexec_fn`` keeps Python code out of the forked
    child: forking a multithreaded process (JAX is one) and running Python there can deadlock.
    """
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if not (setpriv and prlimit):
        return None
    mb = 1024 * 1024
    # The parent-death signal only covers a parent that dies after it is set: if the starter died before
    # setpriv set it, the orphan would run on. The shell (same process, signal kept across exec) checks that
    # its parent is still the starter, after which the signal covers the rest.
    parent_check = ["/bin/sh", "-c", f'[ "$PPID" = "{os.getpid()}" ] || exit 137; exec "$@"', "parent-check"]
    return [setpriv, "--pdeathsig", "KILL", "--", prlimit, f"--cpu={limits.cpu_s}",
            f"--as={limits.memory_mb * mb}", f"--fsize={limits.file_size_mb * mb}", f"--nofile={limits.open_files}",
            f"--nproc={limits.processes}", "--core=0", "--", *parent_check]


def _popen(command: list[str], limits: SandboxLimits, stderr) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp/work", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    prefix = _limit_prefix(limits)
    return subprocess.Popen(
        command if prefix is None else prefix + command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=stderr, env=env, cwd="/", start_new_session=True,
        preexec_fn=_limit(limits) if prefix is None else None,
    )


def _limit(limits: SandboxLimits):
    """Fallback when util-linux's setpriv/prlimit are missing: the same limits from a preexec_fn."""
    parent = os.getpid()

    def apply() -> None:
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the process that started us
        if os.getppid() != parent:  # it died before the signal was set
            os._exit(137)

    return apply


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandboxed process's whole group (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_bounded(stream, cap: int, sink: list, overflow: threading.Event, on_overflow) -> None:
    total = 0
    while chunk := stream.read(65536):
        total += len(chunk)
        if total > cap:
            overflow.set()
            on_overflow()
            break
        sink.append(chunk)
    stream.close()


CANCEL_POLL_S = 0.05  # how often a run given a ``cancel`` event looks at it


def _kill_on_cancel(cancel: threading.Event | None, finished: threading.Event, kill) -> None:
    """Kill the sandbox when ``cancel`` is set before ``finished`` (in a thread of its own)."""
    if cancel is None:
        return

    def watch() -> None:
        while not finished.wait(CANCEL_POLL_S):
            if cancel.is_set():
                kill()
                return

    threading.Thread(target=watch, name="sandbox-cancel", daemon=True).start()


def run_python(argv: list[str], stdin: bytes, limits: SandboxLimits = SandboxLimits(),
               cancel: threading.Event | None = None) -> SandboxResult:
    """Run ``python3 -I -S *argv`` in the sandbox with ``stdin``; return its (bounded) output.

    ``argv`` is typically ``["-c", trusted_bootstrap_source]``; the untrusted code reaches the bootstrap
    through ``stdin``. The wall-time limit covers the whole run; at the limit, or when stdout exceeds
    ``max_output_bytes``, or within CANCEL_POLL_S of ``cancel`` being set, the process group is killed
    (a cancelled run reports ``timed_out``).
    """
    mode = isolation()
    with _SLOTS.take() as slot:
        proc = _popen(_command(_python_for_unprivileged(), argv, slot, mode), limits, subprocess.PIPE)

        kill = functools.partial(_kill_group, proc)

        out, err, overflow = [], [], threading.Event()
        readers = [threading.Thread(target=_read_bounded,
                                    args=(proc.stdout, limits.max_output_bytes, out, overflow, kill)),
                   threading.Thread(target=_read_bounded, args=(proc.stderr, 64 * 1024, err, threading.Event(),
                                                                lambda: None))]
        for r in readers:
            r.daemon = True
            r.start()
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        finished = threading.Event()
        _kill_on_cancel(cancel, finished, kill)
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill()
            proc.wait()
        finished.set()
        timed_out = timed_out or (cancel is not None and cancel.is_set())
        kill()  # anything it left behind in its group
        for r in readers:
            r.join(timeout=5)
    return SandboxResult(b"".join(out), b"".join(err), None if timed_out else proc.returncode, timed_out,
                         overflow.is_set())


@contextmanager
def open_python(argv: list[str], limits: SandboxLimits = SandboxLimits(),
                cancel: threading.Event | None = None) -> Iterator[subprocess.Popen]:
    """An interactive sandboxed ``python3 -I -S *argv`` (binary stdin/stdout pipes) for request/response
    protocols. The whole process group is killed when the block exits, when ``limits.wall_s`` passes, or
    within CANCEL_POLL_S of ``cancel`` being set."""
    mode = isolation()
    with _SLOTS.take() as slot:
        proc = _popen(_command(_python_for_unprivileged(), argv, slot, mode), limits, subprocess.DEVNULL)

        kill = functools.partial(_kill_group, proc)

        timer = threading.Timer(limits.wall_s, kill)
        timer.daemon = True
        timer.start()
        finished = threading.Event()
        _kill_on_cancel(cancel, finished, kill)
        try:
            yield proc
        finally:
            finished.set()
            timer.cancel()
            kill()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            proc.wait()
