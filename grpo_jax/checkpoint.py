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
      <step>.orbax-checkpoint-tmp/     a save in flight, or the leftover of a crashed one (local paths)

Crash semantics. A save writes everything under ``<step>.orbax-checkpoint-tmp`` and publishes it by one
atomic rename to ``<step>`` once every array and the meta are written (on GCS, which has no atomic
rename, orbax writes into ``<step>/`` and the step counts only once ``commit_success.txt`` exists). So a
process killed at any moment leaves either the finished step or an unfinished one that ``latest_step``,
``all_steps`` and ``restore`` ignore: after a crash, ``latest_step()`` is the last complete checkpoint.
A ``Checkpointer``'s first ``save`` deletes such leftovers, and saving the same step number again works.
Opening one and restoring deletes nothing, so a reader (e.g. an evaluation job) may open a directory
that a training run is writing; a directory must have only ONE writer (orbax's CheckpointManager is
not multi-job-safe).

Async saves (``async_save=True``, the default). ``save`` returns once every array has been copied from
device to host memory; the writes to storage then run in a background thread. Right after ``save``
returns, the training loop may donate or overwrite the state's buffers (e.g. ``jax.jit(...,
donate_argnums=...)``): what is written is the host copy. A second ``save`` first waits for the
previous one. Within this process ``latest_step``/``all_steps`` count a step as soon as its save has
started; it is on disk once ``wait_until_finished()`` (or the next ``save``, or ``close``) returns, and
background write errors are raised there. ``restore`` waits for a save in flight first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from grpo_jax.errors import InputNotFoundError

STATE_ITEM = "state"
META_ITEM = "meta"


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
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}
            ),
            force=True,  # we decide when to save; orbax's save-interval policy must not skip silently
        )

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
        missing, extra = self._check_against_saved(step, abstract)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{STATE_ITEM: ocp.args.StandardRestore(abstract), META_ITEM: ocp.args.JsonRestore()}
                ),
            )
        except Exception as e:
            if missing or extra:
                raise ValueError(self._structure_message(step, missing, extra)) from e
            raise
        return restored[STATE_ITEM], restored[META_ITEM]

    def restore_meta(self, step: int) -> dict:
        """Only the ``meta`` saved with checkpoint ``step`` (no arrays are read): to check a run's settings
        against it before restoring the state, whose structure those settings decide."""
        self._require_open("restore_meta")
        self._manager.wait_until_finished()
        step = _check_step("restore_meta", step)
        if step not in self.all_steps():
            raise InputNotFoundError(f"Checkpointer.restore_meta: no checkpoint for step {step} in {self.directory}")
        return self._manager.restore(step, args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]

    def _check_against_saved(self, step: int, abstract: Any) -> tuple[list[str], list[str]]:
        """Raise on the first shape/dtype mismatch; return key paths only in abstract / only on disk."""
        metadata = self._manager.item_metadata(step)[STATE_ITEM]
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
        """Block until a save in flight is on disk; raise its error if it failed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for a save in flight, then release orbax's threads. Idempotent."""
        if not self._closed:
            self._closed = True
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
