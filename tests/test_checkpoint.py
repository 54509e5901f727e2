"""Checkpointer: bit-exact sharded round trips, re-sharding on restore, keep-N, async save + donation,
clear errors, and a save killed with SIGKILL mid-write leaving the last complete checkpoint loadable."""

import functools
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from subprocess_lines import LineReader

from grpo_jax import checkpoint as checkpoint_lib
from grpo_jax.checkpoint import Checkpointer
from grpo_jax.sharding import logical_sharding, make_mesh

ROOT = Path(__file__).resolve().parents[1]


# ---- helpers ----------------------------------------------------------------------------------------


def _bits(x) -> np.ndarray:
    """Raw bytes of an array: equality is bit equality (NaN payloads, -0.0, bf16 included)."""
    return np.atleast_1d(np.asarray(x)).view(np.uint8)


def _assert_bit_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(_bits(g), _bits(w), err_msg=jax.tree_util.keystr(path))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _train_state(mesh, data_axis):
    """params (fp32 with NaN/-0.0/inf, bf16) + a stepped adamw state + uint32 key data + int32 step."""
    row = NamedSharding(mesh, P(data_axis, None))
    w = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 7.0
    w[0, :3] = [np.nan, -0.0, np.inf]
    params = {
        "w": jax.device_put(w, row),
        "b": jax.device_put(np.linspace(-1, 1, 8).astype(ml_dtypes.bfloat16), NamedSharding(mesh, P(data_axis))),
    }
    opt = optax.adamw(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {
        "params": params,
        "opt_state": opt_state,
        "rng": jax.random.key_data(jax.random.key(1234)),
        "step": jnp.int32(1),
    }


META = {
    "step": 1,
    "data": {"epoch": 0, "position": 17, "shards": ["a", "b"]},
    "config": {"lr": 1e-2, "model": {"layers": 2}, "flag": True, "none": None},
    "metrics": {"loss": 0.25, "reward": -1.5},
}


# ---- round trips ------------------------------------------------------------------------------------


def test_round_trip_is_bit_exact_on_mesh8(mesh8, tmp_path):
    state = _train_state(mesh8, "data")
    assert state["params"]["w"].sharding.spec == P("data", None)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, state, META)
        ckpt.wait_until_finished()
        restored, meta = ckpt.restore(_abstract(state))
    _assert_bit_equal(restored, state)
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])  # optax NamedTuples come back
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert got.sharding == want.sharding
    assert meta == json.loads(json.dumps(META))

    # A fresh Checkpointer (new process, in effect) sees the same step and reads the same values.
    with Checkpointer(tmp_path / "ckpt") as again:
        assert again.latest_step() == 1 and again.all_steps() == [1]
        restored, meta = again.restore(_abstract(state), step=1)
        restored_from_arrays, _ = again.restore(state)  # jax.Array leaves work as the template too
    _assert_bit_equal(restored, state)
    _assert_bit_equal(restored_from_arrays, state)
    assert meta["data"] == META["data"]


@pytest.mark.parametrize(
    "target_axes",
    [{"data": 2, "fsdp": 4}, {"fsdp": 2, "tensor": 4}, {"data": 1}],
    ids=["data2xfsdp4", "fsdp2xtensor4", "single-device"],
)
def test_restore_onto_a_different_mesh(tmp_path, target_axes):
    logical = {"embed": ("embed", "mlp"), "head": ("vocab", "embed"), "bias": ("mlp",)}
    shapes = {"embed": (16, 32), "head": (64, 16), "bias": (32,)}
    values = {k: np.random.default_rng(i).standard_normal(shapes[k]).astype(np.float32) for i, k in enumerate(shapes)}

    source = make_mesh({"fsdp": 8})
    state = {k: jax.device_put(values[k], logical_sharding(logical[k], shapes[k], source)) for k in shapes}
    state["step"] = jnp.int32(5)
    assert state["embed"].sharding.spec == P("fsdp", None)

    devices = jax.devices()[3:4] if target_axes == {"data": 1} else None
    target = make_mesh(target_axes, devices=devices)
    want = {k: logical_sharding(logical[k], shapes[k], target) for k in shapes}
    want["step"] = NamedSharding(target, P())
    abstract = {k: jax.ShapeDtypeStruct(state[k].shape, state[k].dtype, sharding=want[k]) for k in state}

    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(5, state, {"step": 5})
        restored, meta = ckpt.restore(abstract)
    assert meta == {"step": 5}
    for k in shapes:
        assert restored[k].sharding == want[k], k
        np.testing.assert_array_equal(_bits(restored[k]), _bits(values[k]), err_msg=k)
    assert int(restored["step"]) == 5 and restored["step"].sharding == want["step"]


# ---- keeping, ordering, lifecycle -----------------------------------------------------------------------


def test_keeps_only_the_newest_max_to_keep_steps(tmp_path):
    state = {"x": jnp.arange(4.0)}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (10, 20, 30, 40):
            ckpt.save(step, jax.tree.map(lambda x, step=step: x + step, state), {"step": step})
        assert ckpt.all_steps() == [30, 40] and ckpt.latest_step() == 40
        with pytest.raises(ValueError, match=r"`step` must be greater than the latest saved step 40 .* got 40"):
            ckpt.save(40, state, {})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["30", "40"]
    with Checkpointer(tmp_path, max_to_keep=2) as again:
        assert again.all_steps() == [30, 40]
        restored, meta = again.restore(_abstract(state), step=30)
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.arange(4.0) + 30)
    assert meta == {"step": 30}


def test_a_reader_sees_steps_written_and_deleted_after_it_opened(tmp_path):
    """An evaluation job's Checkpointer, opened after step 1: orbax's manager kept the steps it read then, so
    it saw [1] after the writer had saved 2-4 and retention had deleted 1 and 2, and restoring "the latest"
    failed."""
    state = {"x": jnp.arange(4.0)}
    with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as writer:
        writer.save(1, state, {"step": 1})
        with Checkpointer(tmp_path, max_to_keep=None, async_save=False) as reader:
            assert reader.all_steps() == [1]
            for step in (2, 3, 4):
                writer.save(step, jax.tree.map(lambda x, step=step: x + step, state), {"step": step})
            assert reader.all_steps() == [3, 4] and reader.latest_step() == 4
            restored, meta = reader.restore(_abstract(state))
    assert meta == {"step": 4}
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.arange(4.0) + 4)


def test_first_save_deletes_leftovers_of_killed_saves_but_opening_does_not(tmp_path):
    leftover = tmp_path / "7.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp"
    leftover.mkdir(parents=True)
    (leftover / "partial").write_bytes(b"x" * 100)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [] and ckpt.latest_step() is None
        assert leftover.exists()
        ckpt.save(1, {"x": jnp.ones(2)}, {})
        ckpt.wait_until_finished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


def test_sync_save_is_on_disk_when_save_returns_and_closed_checkpointer_refuses(tmp_path):
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(3, {"x": jnp.ones(2)}, {})
    assert (tmp_path / "3" / "commit_success.txt").exists()
    ckpt.close()
    ckpt.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ckpt.save(4, {"x": jnp.ones(2)}, {})


def test_async_save_then_donating_the_buffers_keeps_the_saved_values(tmp_path, monkeypatch):
    """save() returns after the device->host copy, so the caller may donate the state right away."""
    from orbax.checkpoint._src.serialization import replica_slices

    transfers = []
    original = replica_slices.transfer_arrays_to_host

    def spy(arrays, *args, **kwargs):
        out = original(arrays, *args, **kwargs)
        transfers.append(threading.get_ident())
        return out

    monkeypatch.setattr(replica_slices, "transfer_arrays_to_host", spy)

    mesh = make_mesh({"fsdp": 8})
    state = {
        "w": jax.device_put(jnp.arange(1 << 16, dtype=jnp.float32), NamedSharding(mesh, P("fsdp"))),
        "m": jax.device_put(jnp.full((1 << 12,), 3, jnp.bfloat16), NamedSharding(mesh, P())),
        "step": jnp.int32(9),
    }
    saved = jax.tree.map(np.array, state)
    abstract = _abstract(state)

    @functools.partial(jax.jit, donate_argnums=0)
    def overwrite(s):
        return jax.tree.map(lambda x: (x * 0 - 1).astype(x.dtype), s)

    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(9, state, {"step": 9})
        # The copy to host happened inside save(), on this thread, before it returned.
        assert transfers and set(transfers) == {threading.get_ident()}
        new_state = jax.block_until_ready(overwrite(state))
        assert float(new_state["w"][0]) == -1.0
        # On CPU, JAX declines to donate a buffer that NumPy still views (orbax's host copy may alias it
        # there), so also delete every input buffer: the background write must not touch the arrays.
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        ckpt.wait_until_finished()
        restored, _ = ckpt.restore(abstract)
    _assert_bit_equal(restored, saved)


# ---- errors -----------------------------------------------------------------------------------------


def test_restore_from_an_empty_directory_names_it(mesh8, tmp_path):
    abstract = {"x": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=NamedSharding(mesh8, P()))}
    with Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        with pytest.raises(FileNotFoundError, match=f"no complete checkpoint in {re.escape(str(tmp_path / 'empty'))}$"):
            ckpt.restore(abstract)


def test_restore_errors_name_the_key_path_and_both_shapes(mesh8, tmp_path):
    state = _train_state(mesh8, "data")
    good = _abstract(state)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, META)

        with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 2 in .*available steps: \[1\]"):
            ckpt.restore(good, step=2)

        bad = _abstract(state)
        bad["params"]["w"] = jax.ShapeDtypeStruct((16, 4), jnp.float32, sharding=good["params"]["w"].sharding)
        with pytest.raises(ValueError, match=r"key path params\.w has shape \(16, 8\) in the checkpoint but \(16, 4\)"):
            ckpt.restore(bad)

        mu = good["opt_state"][0].mu
        bad = _abstract(state)
        bad["opt_state"][0].mu["w"] = jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=mu["w"].sharding)
        with pytest.raises(ValueError, match=r"key path opt_state\.0\.mu\.w has shape \(16, 8\) .* but \(8, 8\)"):
            ckpt.restore(bad)

        bad = _abstract(state)
        bad["rng"] = jax.ShapeDtypeStruct((2,), jnp.int32, sharding=good["rng"].sharding)
        with pytest.raises(ValueError, match=r"key path rng has dtype uint32 in the checkpoint but int32"):
            ckpt.restore(bad)

        bad = _abstract(state)
        bad["extra"] = good["step"]
        with pytest.raises(ValueError, match=r"`abstract_state` has key path extra which the checkpoint lacks"):
            ckpt.restore(bad)

        bad = _abstract(state)
        del bad["rng"]
        with pytest.raises(ValueError, match=r"the checkpoint has key path rng which `abstract_state` lacks"):
            ckpt.restore(bad)

        bad = _abstract(state)
        bad["step"] = jax.ShapeDtypeStruct((), jnp.int32)
        with pytest.raises(TypeError, match=r"leaf step .* expected a jax.ShapeDtypeStruct with `sharding` set"):
            ckpt.restore(bad)

        restored, _ = ckpt.restore(good)  # still fine after all that
    _assert_bit_equal(restored, state)


def test_save_errors_name_the_argument(tmp_path):
    x = {"x": jnp.zeros(2)}
    with pytest.raises(ValueError, match=r"`max_to_keep` must be an int >= 1 or None, got 0"):
        Checkpointer(tmp_path, max_to_keep=0)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TypeError, match=r"`meta\['metrics'\]\['loss'\]` is float32 .*not JSON"):
            ckpt.save(1, x, {"metrics": {"loss": np.float32(1.0)}})
        with pytest.raises(TypeError, match=r"`meta\['pos'\]` has key 3 of type int; JSON object keys must be str"):
            ckpt.save(1, x, {"pos": {3: 1}})
        with pytest.raises(TypeError, match=r"`meta` must be a dict, got list"):
            ckpt.save(1, x, [])
        with pytest.raises(ValueError, match=r"`step` must be a non-negative int, got -1"):
            ckpt.save(-1, x, {})
        with pytest.raises(TypeError, match=r"leaf lr is float, expected jax.Array"):
            ckpt.save(1, {"x": jnp.zeros(2), "lr": 0.1}, {})
        with pytest.raises(TypeError, match=r"leaf key is a typed PRNG key array .*jax.random.key_data"):
            ckpt.save(1, {"key": jax.random.key(0)}, {})
        donated = jnp.ones(3)
        jax.jit(lambda a: a + 1, donate_argnums=0)(donated)
        with pytest.raises(ValueError, match=r"leaf x has been deleted \(donated to a jit call\?\)"):
            ckpt.save(1, {"x": donated}, {})
        assert ckpt.all_steps() == []


def test_gcs_urls_reach_orbax_untouched(monkeypatch):
    seen = {}

    class FakeManager:
        def __init__(self, directory, **kwargs):
            seen["directory"] = directory

    monkeypatch.setattr(checkpoint_lib.ocp, "CheckpointManager", FakeManager)
    assert Checkpointer("gs://bucket/runs/a//b").directory == "gs://bucket/runs/a//b"
    assert seen["directory"] == "gs://bucket/runs/a//b"
    Checkpointer("relative/dir")
    assert seen["directory"] == os.path.abspath("relative/dir")


# ---- crash safety -----------------------------------------------------------------------------------


def _crash_state(step):
    """The state the crash driver saves at ``step``, as NumPy (the driver shards it over its own mesh)."""
    import ml_dtypes
    import numpy as np

    return {
        "w": np.arange(64 * 4, dtype=np.float32).reshape(64, 4) * step,
        "b": np.full((16,), step, ml_dtypes.bfloat16),
        "key": np.array([step, 7], np.uint32),
        "step": np.array(step, np.int32),
    }


_DRIVER = """
import os, sys, threading
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint._src.path import atomicity
from grpo_jax.checkpoint import Checkpointer
from grpo_jax.sharding import make_mesh

{crash_state}

assert jax.device_count() == 4, jax.device_count()
mesh = make_mesh({{"fsdp": 4}})
def put(step):
    return {{k: jax.device_put(v, NamedSharding(mesh, P("fsdp") if k in ("w", "b") else P()))
            for k, v in _crash_state(step).items()}}

ckpt = Checkpointer(sys.argv[1], max_to_keep=3)
ckpt.save(1, put(1), {{"step": 1, "data": {{"position": 100}}}})
ckpt.wait_until_finished()
print("SAVED 1", flush=True)

# Hang the next save where orbax publishes it. Every array is written under the step's temporary
# directory by then; AtomicRenameTemporaryPath.finalize renames each item's temporary directory
# ("item": we block in the first such call, nothing renamed yet) and then the step's ("step": both
# items renamed into place inside 2.orbax-checkpoint-tmp, the step itself not).
hang_at = sys.argv[2]
original = atomicity.AtomicRenameTemporaryPath.finalize
async def hang(self, *args, **kwargs):
    if hang_at == "step" and self.get_final().name != "2":
        return await original(self, *args, **kwargs)
    print("HANGING IN FINALIZE", self.get(), flush=True)
    threading.Event().wait(timeout=120)  # the test kills us long before; never linger as an orphan
    os._exit(3)
atomicity.AtomicRenameTemporaryPath.finalize = hang

ckpt.save(2, put(2), {{"step": 2, "data": {{"position": 200}}}})
ckpt.wait_until_finished()
print("UNEXPECTED: save 2 finished", flush=True)
"""


@pytest.mark.parametrize("hang_at", ["item", "step"])
def test_sigkill_during_save_leaves_the_last_complete_checkpoint(mesh8, tmp_path, hang_at):
    ckpt_dir = tmp_path / "ckpt"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(crash_state=textwrap.dedent(inspect.getsource(_crash_state))))
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    stderr_path = tmp_path / "driver.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(driver), str(ckpt_dir), hang_at], stdout=subprocess.PIPE, stderr=stderr, text=True,
            cwd=tmp_path, env=env,
        )
        reader = LineReader(proc.stdout)
        try:
            seen, hanging = reader.wait_for("HANGING IN FINALIZE", timeout_s=90)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            reader.thread.join(timeout=30)
            proc.stdout.close()
    assert hanging, f"driver never hung in finalize; stdout={seen}; stderr tail:\n{stderr_path.read_text()[-3000:]}"
    assert seen[0] == "SAVED 1"
    assert seen[1].endswith("2.orbax-checkpoint-tmp" if hang_at == "step" else "state.orbax-checkpoint-tmp")
    assert proc.returncode == -signal.SIGKILL

    # The killed save left its temporary directory behind, with array data in it, and no step 2.
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert "1" in names and "2" not in names, names
    tmp_dirs = [p for p in ckpt_dir.iterdir() if p.name.startswith("2.orbax-checkpoint-tmp")]
    assert tmp_dirs and any(f.is_file() and f.stat().st_size for f in tmp_dirs[0].rglob("*")), names

    rows = NamedSharding(mesh8, P("data"))
    abstract = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=rows if k in ("w", "b") else NamedSharding(mesh8, P()))
        for k, v in _crash_state(1).items()
    }
    with Checkpointer(ckpt_dir, max_to_keep=3) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(abstract)  # saved on 4 devices, restored on 8
        _assert_bit_equal(restored, _crash_state(1))
        assert meta == {"step": 1, "data": {"position": 100}}
        assert restored["w"].sharding == rows
        assert tmp_dirs[0].exists()  # opening and restoring delete nothing (readers are safe)

        # Saving step 2 again works; the crashed attempt's leftovers are gone.
        ckpt.save(2, {k: jax.device_put(v, abstract[k].sharding) for k, v in _crash_state(2).items()}, {"step": 2})
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [1, 2]
        restored, meta = ckpt.restore(abstract)
    _assert_bit_equal(restored, _crash_state(2))
    assert meta == {"step": 2}
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["1", "2"]
