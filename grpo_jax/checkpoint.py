"""Training checkpoints: a thin wrapper over orbax-checkpoint's ``CheckpointManager``.

One checkpoint = one training step = two items: ``state`` (a pytree of ``jax.Array``: params, optimizer
state, RNG key data, step counter; possibly sharded over a Mesh) and ``meta`` (a JSON object: step, data
stream position, run config, metrics).

Layout on disk (``directory`` may be local or ``gs://...``; it is handed to orbax/etils untouched)::

    <directory>/
      <step>/                          one finished checkpoint per kept step, e.g. 100/
        _CHECKPOINT_METADATA           orbax step metadata (item handlers, timestamps)
        commit_success.txt             written last, just before the step is published
        state/                         the array pytree: OCDBT/TensorStore files, each array written
                                       by the hosts that hold its shards (no gather to one host)
        meta/metadata                  the meta dict, as JSON
        grpo_jax_files.json            every file of the step with its size, written once the save is
                                       finished (``verify``); orbax reads only its own files, so it ignores it
      <step>.orbax-checkpoint-tmp/     a save in flight, or the leftover of a crashed one (local paths)
      damaged/<step>/                  a damaged step set aside by ``resume_step(fallback=True)``: moved, never
                                       deleted (orbax lists only directories named by a step number)

Crash semantics. A save writes everything under ``<step>.orbax-checkpoint-tmp`` and publishes it by one
atomic rename to ``<step>`` once every array and the meta are written (on GCS, which has no atomic
rename, orbax writes into ``<step>/`` and the step counts only once ``commit_success.txt`` exists). So a
process killed at any moment leaves either the finished step or an unfinished one that ``latest_step``,
``all_steps`` and ``restore`` ignore: after a crash, ``latest_step()`` is the last complete checkpoint.
A ``Checkpointer``'s first ``save`` deletes such leftovers, and saving the same step number again works.
Opening one and restoring deletes nothing, so a reader (e.g. an evaluation job) may open a directory
that a training run is writing; a directory must have only ONE writer (orbax's CheckpointManager is
not multi-job-safe).

Damage. Files of a finished step can still go missing or be cut short (a full disk during a copy, a manual
``rm``, a bucket lifecycle rule). ``verify(step)`` compares the step with its file listing (without one: checks
the files orbax cannot do without) and names the first missing or corrupt file; ``resume_step`` picks the step
a resume loads and refuses a damaged newest one in one paragraph naming the intact earlier step, or, asked to
fall back, sets the damaged steps aside and returns that one. A read that fails anyway (a file corrupt at the
same size) is a ``CheckpointDamagedError`` naming the step, not orbax's traceback.

Async saves (``async_save=True``, the default). ``save`` returns once every array has been copied from
device to host memory; the writes to storage then run in a background thread. Right after ``save``
returns, the training loop may donate or overwrite the state's buffers (e.g. ``jax.jit(...,
donate_argnums=...)``): what is written is the host copy. A second ``save`` first waits for the
previous one. Within this process ``latest_step``/``all_steps`` count a step as soon as its save has
started; it is on disk once ``wait_until_finished()`` (or the next ``save``, or ``close``) returns, and
background write errors are raised there. ``restore`` waits for a save in flight first.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from grpo_jax import storage
from grpo_jax.errors import CheckpointDamagedError, InputNotFoundError

logger = logging.getLogger(__name__)

STATE_ITEM = "state"
META_ITEM = "meta"
LISTING_FILE = "grpo_jax_files.json"
DAMAGED_DIR = "damaged"
# what orbax cannot restore without, checked when a step has no listing (written before it existed, or a crash
# between the publication and the listing)
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/manifest.ocdbt")


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Tells orbax how to save/restore our two items, so a fresh manager can also read their metadata."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args_cls in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add(STATE_ITEM, args_cls, ocp.handlers.StandardCheckpointHandler)
    for args_cls in (ocp.args.JsonSave, ocp.args.JsonRestore):
        registry.add(META_ITEM, args_cls, ocp.handlers.JsonCheckpointHandler)
    return registry


def _normalize_directory(directory: str | os.PathLike) -> str:
    """Absolute path for local directories; URLs (``gs://...``) pass through exactly as given."""
    text = os.fspath(directory)
    if not isinstance(text, str) or not text:
        raise ValueError(f"Checkpointer: `directory` must be a non-empty path or URL, got {directory!r}")
    if "://" in text:
        return text
    return os.path.abspath(os.path.expanduser(text))


def _key_name(key: Any) -> str:
    """One pytree key as a name shared by ``jax.tree_util`` paths and orbax's metadata tree.

    Orbax records dicts and NamedTuples/dataclasses as dicts keyed by name and tuples/lists as lists, so
    ``DictKey('w')``, ``GetAttrKey('w')`` and orbax's ``'w'`` all become ``"w"``, and ``SequenceKey(0)``
    and orbax's list index 0 become ``"0"``.
    """
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_name(path: tuple) -> str:
    return ".".join(_key_name(k) for k in path) or "<root>"


def _leaves_by_name(tree: Any) -> dict[str, Any]:
    return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_step(fn: str, step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"Checkpointer.{fn}: `step` must be a non-negative int, got {step!r}")
    return int(step)


def _check_json(value: Any, path: str = "meta") -> None:
    """Raise TypeError naming the first entry of ``value`` that does not survive a JSON round trip."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"Checkpointer.save: `{path}` has key {key!r} of type {type(key).__name__}; "
                    "JSON object keys must be str"
                )
            _check_json(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise TypeError(
            f"Checkpointer.save: `{path}` is {type(value).__name__} ({value!r:.80}), which is not JSON; "
            "convert it first (e.g. float(x) for a NumPy/JAX scalar, dataclasses.asdict for a config)"
        )


def _check_state(state: Any) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    if not leaves:
        raise ValueError("Checkpointer.save: `state` has no arrays; expected a pytree of jax.Array")
    for path, leaf in leaves:
        name = _path_name(path)
        if not isinstance(leaf, jax.Array):
            raise TypeError(
                f"Checkpointer.save: `state` leaf {name} is {type(leaf).__name__}, expected jax.Array "
                "(wrap scalars with jnp.asarray, e.g. jnp.int32(step))"
            )
        if leaf.is_deleted():
            raise ValueError(
                f"Checkpointer.save: `state` leaf {name} has been deleted (donated to a jit call?); "
                "save the state before passing it to a function that donates it"
            )
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"Checkpointer.save: `state` leaf {name} is a typed PRNG key array ({leaf.dtype}); "
                "save jax.random.key_data(key) and rebuild it with jax.random.wrap_key_data after restore"
            )


def _abstract_leaf(name: str, leaf: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(leaf, "sharding", None)
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype") or sharding is None:
        raise TypeError(
            f"Checkpointer.restore: `abstract_state` leaf {name} is {leaf!r:.120}; expected a "
            "jax.ShapeDtypeStruct with `sharding` set (or a jax.Array), which says where the array goes"
        )
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


@contextlib.contextmanager
def _stderr_dropped_on_failure(settle_s: float = 0.5):
    """Hold what is written to file descriptor 2 while the block runs; print it if the block succeeds, drop it if
    it raises. When TensorStore fails to read a damaged checkpoint, orbax's asyncio loop closes while other
    reads are in flight, and each of their callbacks prints an "Event loop is closed" traceback from another
    thread (hundreds of lines that bury the one-paragraph error we raise; that error keeps the first cause).
    ``settle_s``: how long those stragglers get to finish before stderr is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            time.sleep(settle_s)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                held.seek(0)
                text = held.read()
                if text:
                    os.write(2, text)


class Checkpointer:
    """Saves and restores ``(state, meta)`` per training step in ``directory``; keeps the newest N.

    Args:
      directory: local path or URL (``gs://bucket/run``), created if missing.
      max_to_keep: how many of the newest steps to keep (older ones are deleted after each save);
        None keeps all.
      async_save: write in a background thread (``save`` returns after the device-to-host copy).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, async_save: bool = True):
        if max_to_keep is not None and (
            isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1
        ):
            raise ValueError(f"Checkpointer: `max_to_keep` must be an int >= 1 or None, got {max_to_keep!r}")
        self.directory = _normalize_directory(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=bool(async_save),
            # Not orbax's eager cleanup of crashed saves' leftovers at construction: that would also delete
            # another process's save in flight. We clean up lazily, before our first save.
            cleanup_tmp_directories=False,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handler_registry())
        self._closed = False
        self._cleaned_up = False
        self._unlisted: list[int] = []  # steps saved by this process whose file listing is not written yet

    # ---- queries ------------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps with a checkpoint, ascending (in this process: including a save in flight). Read from the
        directory again whenever this process has no save in flight, so that a reader (an evaluation job)
        sees the steps another process has written or retention has deleted since it opened it: orbax's
        manager keeps the list it read at construction."""
        if not self._closed and not self._manager.is_saving_in_progress():
            self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step (in this process: including a save in flight), or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ---- save -----------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (pytree of jax.Array) and ``meta`` (JSON object) as checkpoint ``step``.

        ``step`` must be newer than every step already in the directory. Tuples in ``meta`` come back
        as lists. Async mode: returns once the arrays are on the host (see the module docstring).
        """
        self._require_open("save")
        step = _check_step("save", step)
        if not isinstance(meta, Mapping):
            raise TypeError(f"Checkpointer.save: `meta` must be a dict, got {type(meta).__name__}")
        _check_json(meta)
        meta = json.loads(json.dumps(meta))  # our own copy: the caller may mutate theirs during the write
        _check_state(state)
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"Checkpointer.save: `step` must be greater than the latest saved step {latest} in "
                f"{self.directory}, got {step}"
            )
        if not self._cleaned_up:
            self._delete_unfinished_saves()
            self._cleaned_up = True
        self._write_listings()  # of the previous save, which orbax waits for before this one starts anyway
        self._unlisted.append(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
            ),
            force=True,  # we decide when to save; orbax's save-interval policy must not skip silently
        )

    def _write_listings(self) -> None:
        """Wait for a save in flight, then write ``LISTING_FILE`` into each step this process saved since the
        last call (on the primary process; a step retention already deleted is skipped)."""
        self._manager.wait_until_finished()
        steps, self._unlisted = self._unlisted, []
        if jax.process_index() != 0:
            return
        for step in steps:
            step_dir = self._step_dir(step)
            if storage.isdir(step_dir):
                files = storage.file_sizes(step_dir)
                files.pop(LISTING_FILE, None)
                storage.write_text(storage.join(step_dir, LISTING_FILE), json.dumps(files, indent=0, sort_keys=True))

    def _step_dir(self, step: int) -> str:
        return storage.join(self.directory, str(step))

    # ---- damage ---------------------------------------------------------------------------------------

    def verify(self, step: int) -> str | None:
        """None when checkpoint ``step`` looks intact, else what is wrong with its first bad file, e.g.
        "state/d/1f3a... is missing": against its listing (missing, or another size), or without one, the files
        orbax needs (missing or empty); and ``meta/metadata`` must be JSON. Reads no array data."""
        step_dir = self._step_dir(_check_step("verify", step))
        listing_path = storage.join(step_dir, LISTING_FILE)
        expected: dict[str, int | None] = dict.fromkeys(REQUIRED_FILES)
        if storage.exists(listing_path):
            try:
                expected = json.loads(storage.read_text(listing_path))
            except (json.JSONDecodeError, UnicodeDecodeError):
                return f"{LISTING_FILE} is not JSON"
        for name, size in sorted(expected.items()):
            actual = storage.size(storage.join(step_dir, name))
            if actual is None:
                return f"{name} is missing"
            if size is None and actual == 0:
                return f"{name} is empty"
            if size is not None and actual != size:
                return f"{name} has {actual} bytes instead of {size}"
        try:
            json.loads(storage.read_text(storage.join(step_dir, "meta", "metadata")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "meta/metadata is not JSON"
        return None

    def _damage_message(self, step: int, problem: str) -> str:
        """One paragraph: the damaged step, what is wrong, and which earlier step is intact."""
        intact = next((s for s in reversed(self.all_steps()) if s < step and self.verify(s) is None), None)
        where = f"checkpoint step {step} in {self.directory} is damaged: {problem}."
        if intact is None:
            return f"{where} No earlier intact checkpoint is left; start the run again in a new --output-dir."
        return (f"{where} The newest intact checkpoint is step {intact}: resume from it with "
                f"run.resume_fallback=true (the damaged steps are moved to {DAMAGED_DIR}/, nothing is deleted), "
                f"or pass --step {intact} to eval / export.")

    def resume_step(self, *, fallback: bool) -> int | None:
        """The step a resume loads: the newest, if ``verify`` finds it intact (None when there is none).
        A damaged newest step raises CheckpointDamagedError naming the damage and the newest intact step; with
        ``fallback`` the damaged newer steps are moved to ``<directory>/damaged/`` (so that the run can save
        those step numbers again) and the intact step is returned."""
        self._require_open("resume_step")
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if not steps:
            return None
        damaged: list[tuple[int, str]] = []
        for step in reversed(steps):
            problem = self.verify(step)
            if problem is None:
                break
            damaged.append((step, problem))
        else:
            step = None
        if not damaged:
            return step
        newest, problem = damaged[0]
        message = self._damage_message(newest, problem)
        if not fallback or step is None:
            raise CheckpointDamagedError(message)
        for bad, _ in damaged:
            self.set_aside(bad)
        logger.warning("%s Falling back to step %d (run.resume_fallback=true).", message, step)
        return step

    def set_aside(self, step: int) -> None:
        """Move step ``step``'s directory to damaged/<step> (damaged/<step>-<n> when taken), so that the step
        number can be saved again and nothing is deleted. Local paths only: an object store has no rename."""
        if storage.is_url(self.directory):
            raise CheckpointDamagedError(f"checkpoint step {step} in {self.directory} is damaged; delete or move "
                                         f"{self._step_dir(step)} yourself (object stores cannot rename), then resume")
        target = os.path.join(self.directory, DAMAGED_DIR, str(step))
        n = 1
        while os.path.exists(target):
            target = os.path.join(self.directory, DAMAGED_DIR, f"{step}-{n}")
            n += 1
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(self._step_dir(step), target)
        self._manager.reload()  # orbax keeps the step list it read

    def _unreadable(self, step: int, error: BaseException) -> CheckpointDamagedError:
        """orbax / TensorStore failed to read step ``step``: the first file of the step its message names, the
        message's first line, and the intact earlier step."""
        text = str(error)
        step_dir = self._step_dir(step)
        paths = re.findall(re.escape(step_dir) + r"/[^\s\"',)]+", text)
        first = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
        file = max(paths, key=len)[len(step_dir) + 1:] if paths else ""  # the deepest path: a file, not its dir
        problem = f"{file + ': ' if file else ''}{first}"
        return CheckpointDamagedError(self._damage_message(step, f"it could not be read ({problem})"))

    def _delete_unfinished_saves(self) -> None:
        """Remove what saves killed mid-write left behind (on the primary process; the others wait at
        orbax's save-start barrier, which comes before any new temporary directory is created)."""
        if jax.process_index() == 0:
            for leftover in ocp.path.step.all_temporary_paths(self.directory):
                leftover.get().rmtree()

    # ---- restore --------------------------------------------------------------------------------------

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Load checkpoint ``step`` (default: the latest) as ``(state, meta)``.

        ``abstract_state`` has the structure of the saved state, with a ``jax.ShapeDtypeStruct`` (whose
        ``.sharding`` is the target sharding, on any mesh) or a ``jax.Array`` at each leaf; arrays come
        back directly in those shardings. Shapes and dtypes must match what was saved.
        """
        self._require_open("restore")
        self._manager.wait_until_finished()  # a save in flight is not readable until it is published
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise InputNotFoundError(f"Checkpointer.restore: no complete checkpoint in {self.directory}")
            step = steps[-1]
        step = _check_step("restore", step)
        if step not in steps:
            raise InputNotFoundError(
                f"Checkpointer.restore: no checkpoint for step {step} in {self.directory}; "
                f"available steps: {steps or 'none'}"
            )
        named = jax.tree_util.tree_flatten_with_path(abstract_state)
        if not named[0]:
            raise ValueError("Checkpointer.restore: `abstract_state` has no leaves")
        abstract = jax.tree_util.tree_unflatten(
            named[1], [_abstract_leaf(_path_name(path), leaf) for path, leaf in named[0]]
        )
        saved_metadata = self._read(step, lambda: self._manager.item_metadata(step)[STATE_ITEM])
        missing, extra = self._check_against_saved(step, saved_metadata, abstract)
        args = ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract), META_ITEM: ocp.args.JsonRestore()})
        try:
            restored = self._read(step, lambda: self._manager.restore(step, args=args))
        except CheckpointDamagedError as e:
            if missing or extra:  # not damage: the caller asked for another structure
                raise ValueError(self._structure_message(step, missing, extra)) from e
            raise
        return restored[STATE_ITEM], restored[META_ITEM]

    def _read(self, step: int, read: Any) -> Any:
        """``read()`` (an orbax read of checkpoint ``step``); a failure is a CheckpointDamagedError naming the step
        and the first line of orbax's error, and the noise of orbax's aborted reads is kept off stderr
        (``_stderr_dropped_on_failure``). The original exception is not chained: its frames hold the aborted
        reads' asyncio tasks, which log "Task exception was never retrieved" when collected; they are
        collected here, while stderr is still held."""
        with _stderr_dropped_on_failure():
            error = None
            try:
                return read()
            except Exception as e:  # noqa: BLE001 - whatever orbax/TensorStore raise, the checkpoint is unreadable
                error = self._unreadable(step, e)
            gc.collect()
            raise error

    def restore_meta(self, step: int) -> dict:
        """Only the ``meta`` saved with checkpoint ``step`` (no arrays are read): to check a run's settings
        against it before restoring the state, whose structure those settings decide."""
        self._require_open("restore_meta")
        self._manager.wait_until_finished()
        step = _check_step("restore_meta", step)
        if step not in self.all_steps():
            raise InputNotFoundError(f"Checkpointer.restore_meta: no checkpoint for step {step} in {self.directory}")
        meta_only = ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
        return self._read(step, lambda: self._manager.restore(step, args=meta_only)[META_ITEM])

    def _check_against_saved(self, step: int, metadata: Any, abstract: Any) -> tuple[list[str], list[str]]:
        """Raise on the first shape/dtype mismatch between the saved state's ``metadata`` (orbax's) and
        ``abstract``; return key paths only in abstract / only on disk."""
        if metadata is None:  # unreadable metadata: leave all checks to orbax's restore
            return [], []
        saved = _leaves_by_name(metadata.tree)
        wanted = _leaves_by_name(abstract)
        for name, want in wanted.items():
            have = saved.get(name)
            if have is None:
                continue
            if tuple(have.shape) != tuple(want.shape):
                raise ValueError(
                    f"Checkpointer.restore: step {step} in {self.directory}: key path {name} has shape "
                    f"{tuple(have.shape)} in the checkpoint but {tuple(want.shape)} in `abstract_state`"
                )
            if np.dtype(have.dtype) != np.dtype(want.dtype):
                raise ValueError(
                    f"Checkpointer.restore: step {step} in {self.directory}: key path {name} has dtype "
                    f"{np.dtype(have.dtype)} in the checkpoint but {np.dtype(want.dtype)} in `abstract_state`"
                )
        return [n for n in wanted if n not in saved], [n for n in saved if n not in wanted]

    def _structure_message(self, step: int, missing: list[str], extra: list[str]) -> str:
        parts = []
        if missing:
            parts.append(f"`abstract_state` has key path {missing[0]} which the checkpoint lacks")
        if extra:
            parts.append(f"the checkpoint has key path {extra[0]} which `abstract_state` lacks")
        return (
            f"Checkpointer.restore: step {step} in {self.directory} does not have the structure of "
            f"`abstract_state`: {'; '.join(parts)} ({len(missing)} missing, {len(extra)} extra in all)"
        )

    # ---- lifecycle ------------------------------------------------------------------------------------

    def wait_until_finished(self) -> None:
        """Block until a save in flight is on disk (and listed); raise its error if it failed."""
        self._write_listings()

    def close(self) -> None:
        """Wait for a save in flight, then release orbax's threads. Idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._write_listings()
            finally:
                self._manager.close()

    def _require_open(self, fn: str) -> None:
        if self._closed:
            raise RuntimeError(f"Checkpointer.{fn}: this Checkpointer for {self.directory} is closed")

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory!r})"
