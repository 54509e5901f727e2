"""Where a run's files live: local paths, or object stores such as ``gs://bucket/run`` (every TPU host sees it).

Checkpoints go through orbax, which reads and writes ``gs://`` itself (tensorstore). Every other output
file of a run (config.json, metrics.jsonl, TensorBoard events, curves.png, eval results) goes through this
module, which uses plain files for local paths and ``etils.epath`` for URLs; epath reaches Cloud Storage
through TensorFlow's gfile when TensorFlow is installed and otherwise through fsspec with gcsfs
(``pip install "grpo-jax[gcs]"``).

Object stores cannot append to an object, and files such as metrics.jsonl and TensorBoard's event files grow
one record at a time. A :class:`StagedDir` therefore keeps them in a local staging directory and copies
every new or changed file to the URL on :meth:`StagedDir.sync` (the metrics writer syncs every
``SYNC_INTERVAL_S`` seconds, before each checkpoint and on close).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

SYNC_INTERVAL_S = 30.0


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an object-store location (``scheme://...``) rather than a local path."""
    return "://" in os.fspath(path)


def join(path: str | os.PathLike, *parts: str) -> str:
    """``path/part/...`` for local paths and URLs alike."""
    path = os.fspath(path)
    if is_url(path):
        return "/".join([path.rstrip("/"), *parts])
    return os.path.join(path, *parts)


def _epath(path: str):
    from etils import epath

    return epath.Path(path)


def makedirs(path: str | os.PathLike) -> None:
    """Create the directory ``path`` and its parents (nothing to do for object stores that have no directories)."""
    path = os.fspath(path)
    if is_url(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return _epath(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return _epath(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names of the entries in the directory ``path`` (none when it does not exist)."""
    path = os.fspath(path)
    if is_url(path):
        directory = _epath(path)
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def size(path: str | os.PathLike) -> int | None:
    """The size of the file ``path`` in bytes, or None when there is no such file."""
    path = os.fspath(path)
    if is_url(path):
        file = _epath(path)
        return file.stat().length if file.exists() and not file.is_dir() else None
    return os.path.getsize(path) if os.path.isfile(path) else None


def file_sizes(directory: str | os.PathLike) -> dict[str, int]:
    """{path relative to ``directory``, with /: size in bytes} of every file under it (empty when it is missing)."""
    directory = os.fspath(directory)
    out = {}
    if is_url(directory):  # directory by directory: epath refuses rglob's "**" on object stores
        for name in listdir(directory):
            path = join(directory, name)
            if isdir(path):
                out.update({f"{name}/{inner}": length for inner, length in file_sizes(path).items()})
            else:
                out[name] = _epath(path).stat().length
        return out
    for parent, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(parent, name)
            out[os.path.relpath(path, directory).replace(os.sep, "/")] = os.path.getsize(path)
    return out


def remove(path: str | os.PathLike) -> None:
    """Delete the file ``path``."""
    path = os.fspath(path)
    if is_url(path):
        _epath(path).unlink()
    else:
        os.remove(path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The contents of the file ``path``. FileNotFoundError when it is missing."""
    path = os.fspath(path)
    if is_url(path):
        if not _epath(path).exists():
            raise FileNotFoundError(path)
        return _epath(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` whole so that readers never see it half-written: an object store replaces an object
    at once; a local file is written beside the target, synced and renamed over it."""
    path = os.fspath(path)
    if is_url(path):
        _epath(path).write_bytes(data)
        return
    tmp = f"{path}.{os.getpid()}.tmp"  # made by open(): the usual permissions (umask), unlike mkstemp's 0600
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def default_mode(*, directory: bool = False) -> int:
    """The permission bits a plain ``open()`` (0o666) or ``os.makedirs`` (0o777) gives a new file or directory
    under this process's umask: for files that a library creates with a private mode (``tempfile``'s 0o600 /
    0o700) but that other users (a model server) must read like the rest of the output."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


class StagedDir:
    """A local directory that stands for ``target`` (a local path or a URL).

    For a local ``target``, :attr:`local` is ``target`` itself and :meth:`sync` does nothing. For a URL,
    :attr:`local` is a fresh temporary directory; :meth:`pull` copies named files from the URL into it (to
    continue them) and :meth:`sync` copies every file created or changed since the last sync to the URL,
    keeping relative paths. :meth:`close` syncs and removes the temporary directory.
    """

    def __init__(self, target: str | os.PathLike, *, interval_s: float = SYNC_INTERVAL_S) -> None:
        self.target = os.fspath(target)
        self.remote = is_url(self.target)
        self.interval_s = interval_s
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) last copied
        self._last_sync = time.monotonic()
        self.local = tempfile.mkdtemp(prefix="grpo-jax-stage-") if self.remote else self.target
        makedirs(self.target)

    def pull(self, *relative_paths: str) -> None:
        """Copy these files, where they exist at the target, into the staging directory."""
        if not self.remote:
            return
        for rel in relative_paths:
            source = join(self.target, rel)
            if exists(source):
                local = os.path.join(self.local, rel)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    f.write(read_bytes(source))
                self._uploaded[rel] = self._signature(local)

    @staticmethod
    def _signature(local: str) -> tuple[int, int]:
        stat = os.stat(local)
        return stat.st_size, stat.st_mtime_ns

    def sync(self, *, force: bool = True) -> None:
        """Copy new and changed files to the target (with ``force=False`` only if ``interval_s`` has passed)."""
        if not self.remote or (not force and time.monotonic() - self._last_sync < self.interval_s):
            return
        for root, _, files in os.walk(self.local):
            for name in files:
                local = os.path.join(root, name)
                rel = os.path.relpath(local, self.local)
                signature = self._signature(local)
                if self._uploaded.get(rel) != signature:
                    with open(local, "rb") as f:
                        write_bytes(join(self.target, *rel.split(os.sep)), f.read())
                    self._uploaded[rel] = signature
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.remote and os.path.isdir(self.local):
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)
