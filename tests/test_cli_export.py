"""`grpo-jax export` never clobbers a user's files: a non-empty OUT_DIR is refused unless --overwrite, files are
staged in a temporary sibling and renamed into place (a failure leaves OUT_DIR as it was), and every file gets
the mode the umask gives (safetensors alone made its file 0600). Also: `grpo-jax train`'s closing line names
only the outputs it wrote."""

import json
import os
import re
import stat

import jax
import numpy as np
import pytest
from cli_runs import TINY, error_line, snapshot

import grpo_jax.models
from grpo_jax.cli import main
from grpo_jax.models import load_pretrained


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", f"--output-dir={run}", *TINY, "run.tensorboard=false", "run.plot=false"]) == 0
    return run


def _user_files(directory):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"mine": true}')
    (directory / "model.safetensors").write_bytes(b"my weights")
    (directory / "notes.txt").write_text("keep me")
    return snapshot(directory)


def _leftovers(parent) -> list[str]:
    return [name for name in os.listdir(parent) if ".export-" in name]


def test_a_nonempty_directory_is_refused_and_left_alone(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    before = _user_files(out)
    assert main(["export", str(run_dir), str(out)]) == 2
    line = error_line(capsys)
    assert f"{out} is not empty (it holds config.json, model.safetensors, notes.txt)" in line
    assert "--overwrite" in line
    assert snapshot(out) == before and not _leftovers(tmp_path)


def test_overwrite_replaces_the_exports_files_and_keeps_the_others(run_dir, tmp_path):
    out = tmp_path / "hf"
    _user_files(out)
    stale_shard = out / "model-00001-of-00002.safetensors"  # an earlier, sharded export's weights
    stale_shard.write_bytes(b"old shard")
    assert main(["export", str(run_dir), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert not stale_shard.exists()  # it would be loaded in place of the new weights
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    _, params = load_pretrained(out)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_modes_follow_the_umask(run_dir, tmp_path, umask, file_mode, dir_mode):
    out = tmp_path / "hf"
    previous = os.umask(umask)
    try:
        assert main(["export", str(run_dir), str(out)]) == 0
    finally:
        os.umask(previous)
    modes = {path: mode for path, (_, mode) in snapshot(out).items()}
    assert "model.safetensors" in modes and "tokenizer.json" in modes
    assert modes == dict.fromkeys(modes, file_mode)
    assert stat.S_IMODE(os.stat(out).st_mode) == dir_mode
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_export_leaves_the_directory_as_it_was(run_dir, tmp_path, monkeypatch, existing):
    out = tmp_path / "hf"
    before = _user_files(out) if existing else {}

    def failing(model, params, path, **kwargs):
        (open(os.path.join(path, "model.safetensors"), "wb")).write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(grpo_jax.models, "save_pretrained", failing)
    argv = ["export", str(run_dir), str(out)] + (["--overwrite"] if existing else [])
    with pytest.raises(OSError, match="disk full"):  # not the user's to fix: a traceback, exit 1
        main(argv)
    assert snapshot(out) == before and out.exists() == existing
    assert not _leftovers(tmp_path)


def test_the_closing_line_names_only_the_outputs_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", f"--output-dir={run}", *TINY, "run.tensorboard=false", "run.plot=false"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("outputs in"))
    assert line == f"outputs in {run}: checkpoints/, metrics.jsonl, config.json"
    assert not (run / "tensorboard").exists() and not (run / "curves.png").exists()
    run = tmp_path / "run2"
    assert main(["train", f"--output-dir={run}", *TINY]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("outputs in"))
    assert re.fullmatch(rf"outputs in {re.escape(str(run))}: checkpoints/, metrics.jsonl, tensorboard/, curves.png, "
                        r"config.json", line)
