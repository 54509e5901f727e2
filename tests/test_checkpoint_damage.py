"""Damaged checkpoints (grpo_jax.checkpoint): each finished step lists its files; ``verify`` names the first
missing or corrupt one; a resume refuses a damaged newest step in one paragraph naming the intact earlier step,
or, asked to fall back, moves the damaged steps to damaged/ (nothing deleted) and resumes from the intact one; a
step corrupt in place is one error, not hundreds of lines of orbax tracebacks."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_runs import TINY, error_line, snapshot
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grpo_jax.checkpoint import LISTING_FILE, Checkpointer
from grpo_jax.cli import main
from grpo_jax.errors import CheckpointDamagedError
from grpo_jax.sharding import make_mesh

ROOT = Path(__file__).resolve().parents[1]


def _state(value: float):
    mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
    rows = NamedSharding(mesh, P("data", None))
    return {"w": jax.device_put(np.full((8, 4), value, np.float32), rows),
            "n": jax.device_put(np.int32(value), NamedSharding(mesh, P()))}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@pytest.fixture
def saved(tmp_path):
    """A directory with checkpoints 1, 2, 3 (state filled with the step number), closed."""
    directory = tmp_path / "ckpt"
    with Checkpointer(directory, max_to_keep=None) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, _state(float(step)), {"step": step})
    return directory


def _data_file(step_dir: Path) -> Path:
    """The largest array data file of a step (one the restore reads)."""
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def test_every_finished_step_lists_its_files_and_orbax_ignores_the_listing(saved):
    for step in (1, 2, 3):
        listing = json.loads((saved / str(step) / LISTING_FILE).read_text())
        assert listing == {str(p.relative_to(saved / str(step))): p.stat().st_size
                           for p in (saved / str(step)).rglob("*") if p.is_file() and p.name != LISTING_FILE}
        assert "meta/metadata" in listing and "state/manifest.ocdbt" in listing
    with Checkpointer(saved) as ckpt:
        assert ckpt.all_steps() == [1, 2, 3] and ckpt.verify(3) is None
        state, meta = ckpt.restore(_abstract(_state(0.0)))
        assert meta == {"step": 3} and float(state["w"][0, 0]) == 3.0


def _damage(step_dir: Path, kind: str) -> str:
    """Damage a step; returns the file the error must name."""
    if kind == "data_file_removed":
        target = _data_file(step_dir)
        target.unlink()
        return f"{target.relative_to(step_dir)} is missing"
    if kind == "data_file_truncated":
        target = _data_file(step_dir)
        size = target.stat().st_size
        target.write_bytes(target.read_bytes()[: size // 2])
        return f"{target.relative_to(step_dir)} has {size // 2} bytes instead of {size}"
    if kind == "meta_removed":
        (step_dir / "meta" / "metadata").unlink()
        return "meta/metadata is missing"
    if kind == "meta_not_json":
        path = step_dir / "meta" / "metadata"
        path.write_text("x" * len(path.read_text()))  # same size: only the JSON check catches it
        return "meta/metadata is not JSON"
    if kind == "orbax_metadata_removed":
        (step_dir / "_CHECKPOINT_METADATA").unlink()
        return "_CHECKPOINT_METADATA is missing"
    raise AssertionError(kind)


KINDS = ["data_file_removed", "data_file_truncated", "meta_removed", "meta_not_json", "orbax_metadata_removed"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_newest_step_is_refused_naming_the_file_and_the_intact_step(saved, kind):
    problem = _damage(saved / "3", kind)
    with Checkpointer(saved) as ckpt:
        assert ckpt.verify(3) == problem and ckpt.verify(2) is None
        with pytest.raises(CheckpointDamagedError) as e:
            ckpt.resume_step(fallback=False)
    assert str(e.value) == (
        f"checkpoint step 3 in {saved} is damaged: {problem}. The newest intact checkpoint is step 2: resume from it "
        "with run.resume_fallback=true (the damaged steps are moved to damaged/, nothing is deleted), or pass "
        "--step 2 to eval / export.")


@pytest.mark.parametrize("kind", KINDS)
def test_fallback_sets_the_damaged_step_aside_and_resumes_from_the_intact_one(saved, kind):
    _damage(saved / "3", kind)
    files_before = sorted(str(p.relative_to(saved / "3")) for p in (saved / "3").rglob("*"))
    with Checkpointer(saved) as ckpt:
        assert ckpt.resume_step(fallback=True) == 2
        assert ckpt.all_steps() == [1, 2]
        state, meta = ckpt.restore(_abstract(_state(0.0)), step=2)
        assert meta == {"step": 2} and float(state["w"][0, 0]) == 2.0
        ckpt.save(3, _state(30.0), {"step": 3})  # the step number is free again
    moved = saved / "damaged" / "3"
    assert sorted(str(p.relative_to(moved)) for p in moved.rglob("*")) == files_before  # nothing deleted
    with Checkpointer(saved) as ckpt:
        assert ckpt.all_steps() == [1, 2, 3] and ckpt.resume_step(fallback=False) == 3


def test_when_no_step_is_intact_the_error_says_so(saved):
    for step in (1, 2, 3):
        (saved / str(step) / "meta" / "metadata").unlink()
    with Checkpointer(saved) as ckpt:
        with pytest.raises(CheckpointDamagedError, match=r"step 3 .* No earlier intact checkpoint is left"):
            ckpt.resume_step(fallback=True)


def test_a_step_without_listing_is_checked_for_the_files_orbax_needs(saved):
    (saved / "3" / LISTING_FILE).unlink()
    with Checkpointer(saved) as ckpt:
        assert ckpt.verify(3) is None
    (saved / "3" / "state" / "manifest.ocdbt").write_bytes(b"")
    with Checkpointer(saved) as ckpt:
        assert ckpt.verify(3) == "state/manifest.ocdbt is empty"


def test_a_step_corrupt_in_place_is_one_error_naming_the_step(saved):
    """Same size, other bytes: the listing cannot tell; the read fails, and says which step and file."""
    corrupted = [p for p in (saved / "3" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    for path in corrupted:
        path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))
    with Checkpointer(saved) as ckpt:
        assert ckpt.verify(3) is None
        with pytest.raises(CheckpointDamagedError) as e:
            ckpt.restore(_abstract(_state(0.0)))
    message = str(e.value)
    assert message.startswith(f"checkpoint step 3 in {saved} is damaged: it could not be read (")
    assert any(f"({path.relative_to(saved / '3')}: " in message for path in corrupted), message
    assert "The newest intact checkpoint is step 2" in message


SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from grpo_jax.checkpoint import Checkpointer
    from grpo_jax.sharding import make_mesh
    mesh = make_mesh({"data": 8})
    state = {f"w{i}": jax.device_put(np.full((64, 8), i, np.float32), NamedSharding(mesh, P("data", None)))
             for i in range(40)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    ckpt = Checkpointer(sys.argv[1], max_to_keep=None)
    ckpt.restore(abstract)
""")


def test_the_terminal_gets_the_message_not_orbaxs_noise(saved, tmp_path):
    """A fresh interpreter restoring a checkpoint whose data files are all corrupt in place (many reads in
    flight fail): stderr holds the one error, not hundreds of "Event loop is closed" tracebacks."""
    directory = tmp_path / "big"
    setup = SCRIPT.replace("ckpt.restore(abstract)", "ckpt.save(1, state, {}); ckpt.close()")
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run([sys.executable, "-c", setup, str(directory)], check=True, env=env, timeout=300)
    for path in (directory / "1" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(directory)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1
    assert "Event loop is closed" not in proc.stderr and "Task exception was never retrieved" not in proc.stderr
    assert proc.stderr.count("CheckpointDamagedError: checkpoint step 1 in") == 1
    assert len(proc.stderr.splitlines()) < 20, proc.stderr


def test_resume_through_the_cli_refuses_then_falls_back(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"--output-dir={run}", *TINY, "max_steps=2", "save_steps=1"]) == 0
    problem = _damage(run / "checkpoints" / "2", "data_file_removed")
    capsys.readouterr()
    before = snapshot(run)
    assert main(["train", f"--output-dir={run}", "--resume", *TINY, "max_steps=3", "save_steps=1"]) == 2
    line = error_line(capsys)
    assert f"checkpoint step 2 in {run / 'checkpoints'} is damaged: {problem}. The newest intact checkpoint is " \
           "step 1" in line
    assert snapshot(run) == before  # refused before anything was written
    assert main(["train", f"--output-dir={run}", "--resume", *TINY, "max_steps=3", "save_steps=1",
                 "run.resume_fallback=true"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]  # the damaged step's line was replaced by the resumed run's
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["1", "2", "3", "damaged"]
    assert (run / "checkpoints" / "damaged" / "2" / "meta" / "metadata").exists()
