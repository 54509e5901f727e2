"""One live run per run directory: the lock a training run holds on its output directory.

Two runs writing one directory corrupt it: the second appends its own lines to metrics.jsonl, replaces
config.json (so ``eval`` and ``export`` later read the wrong run's settings) and fails only at its first
checkpoint. ``acquire(output_dir)`` is called before a run writes anything there; a second run is refused at
once with ``RunDirectoryLockedError`` naming the directory and the holder.

Local directories (and shared file systems such as NFS): the lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``OUTPUT_DIR/.grpo-jax.lock``, held through an open file descriptor for the run's lifetime. The kernel drops
the lock when its process dies, however it dies, so a killed run never blocks the next one. The file holds
JSON describing the holder (``pid``, ``host``, ``started`` in UTC ISO 8601, ``command``), written after the
lock is taken. On release the file is emptied, then unlocked (never unlinked: a process that opened the old
file would lock an inode nobody else sees). A file that is unlocked but not empty therefore belongs to a run
that died without releasing (SIGKILL, power loss): it is taken over with a warning naming that run. flock
locks conflict between two open files of one process too, so two trainers in one Python process are refused.

Object stores (``gs://...``) have no locks, and writing through grpo_jax.storage offers no atomic
create-if-absent, so they get a best-effort *lease*: the same file with a random ``token`` and a
``heartbeat`` (UTC, seconds since the epoch) that a daemon thread rewrites every ``LEASE_REFRESH_S``
seconds. A lease whose heartbeat is older than ``LEASE_EXPIRY_S`` is stale and taken over with a warning.
After writing its lease the acquirer reads it back and checks its token, which catches most, not all, races
of two runs starting within the same second.

Multi-host jobs: the processes of one job share the lock. Process 0 takes it; whether it succeeded is
broadcast to the other processes, which take no lock themselves and raise the same error when process 0
could not take it. A process 0 of another job is refused like any second run.
"""

from __future__ import annotations

import atexit
import datetime
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from grpo_jax import storage
from grpo_jax.errors import RunDirectoryLockedError

logger = logging.getLogger(__name__)

LOCK_FILENAME = ".grpo-jax.lock"
LEASE_REFRESH_S = 60.0
LEASE_EXPIRY_S = 300.0


def _holder_record(**extra: Any) -> dict[str, Any]:
    """Who holds the lock: this process's pid and host, when it started and its command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), **extra}


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            + (f", started {holder['started']}" if holder.get("started") else ""))


def _refused(directory: str, holder: dict[str, Any]) -> RunDirectoryLockedError:
    return RunDirectoryLockedError(
        f"{directory} is in use by another run ({_describe(holder)}); choose another --output-dir, or stop that "
        f"run first (its lock file is {storage.join(directory, LOCK_FILENAME)})")


def _parse(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class RunLock:
    """The lock of one run directory, held by this process until ``release()`` (or interpreter exit)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = storage.join(directory, LOCK_FILENAME)
        self._fd: int | None = None
        self._token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # -- local: flock ------------------------------------------------------------------------------------
    def _acquire_file(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 1 << 16, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise _refused(self.directory, holder) from None
        previous = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()
        if previous:
            logger.warning("stale lock of %s taken over: %s (%s) ended without releasing it",
                           self.directory, self.path, _describe(_parse(previous)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_record()).encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd

    def _release_file(self) -> None:
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a clean exit leaves no holder record, so the next run sees no stale lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- object stores: a lease --------------------------------------------------------------------------
    def _read_lease(self) -> dict[str, Any]:
        try:
            return _parse(storage.read_text(self.path))
        except FileNotFoundError:
            return {}

    def refresh(self) -> None:
        """Rewrite our lease with a new heartbeat (the refresh thread calls this every LEASE_REFRESH_S)."""
        storage.write_text(self.path, json.dumps(_holder_record(token=self._token, heartbeat=time.time())))

    def _acquire_lease(self) -> None:
        lease = self._read_lease()
        if lease:
            age = time.time() - float(lease.get("heartbeat", 0.0))
            if age < LEASE_EXPIRY_S:
                raise _refused(self.directory, lease)
            logger.warning("stale lease of %s taken over: %s (%s) has not renewed it for %.0f s",
                           self.directory, self.path, _describe(lease), age)
        self._token = uuid.uuid4().hex
        self.refresh()
        confirmed = self._read_lease()
        if confirmed.get("token") != self._token:  # another run wrote its lease at the same time
            raise _refused(self.directory, confirmed)
        self._thread = threading.Thread(target=self._keep_alive, name="grpo-jax-lease", daemon=True)
        self._thread.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(LEASE_REFRESH_S):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - a failed renewal must not kill the run; the next one may work
                logger.warning("could not renew the lease %s: %s", self.path, e)

    def _release_lease(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._read_lease().get("token") == self._token:
            storage.remove(self.path)

    # -- both --------------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        storage.makedirs(self.directory)
        if storage.is_url(self.directory):
            self._acquire_lease()
        else:
            self._acquire_file()
        self.held = True
        atexit.register(self.release)

    def release(self) -> None:
        """Give the directory back (idempotent)."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        if self._fd is not None:
            self._release_file()
        else:
            self._release_lease()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({self.directory!r}, held={self.held})"


def _broadcast_from_process_0(value: int) -> int:
    """``value`` as process 0 has it, on every process of the job."""
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def acquire(output_dir: str | os.PathLike) -> RunLock:
    """Take the lock of the run directory ``output_dir`` (created if missing) for this run, or raise
    RunDirectoryLockedError naming the directory and the live holder. Multi-host: process 0 takes it for the
    whole job (see the module docstring); every process gets a RunLock to release."""
    import jax

    lock = RunLock(os.fspath(output_dir))
    if jax.process_count() == 1:
        lock._acquire()
        return lock
    error: RunDirectoryLockedError | None = None
    if jax.process_index() == 0:
        try:
            lock._acquire()
        except RunDirectoryLockedError as e:
            error = e
    if not _broadcast_from_process_0(int(error is None)):
        raise error or RunDirectoryLockedError(
            f"{lock.directory} is in use by another run: process 0 of this job could not lock it (its error "
            "names the holder); choose another --output-dir, or stop that run first")
    return lock
