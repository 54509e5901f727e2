"""Helpers for tests that run the ``grpo-jax`` command line in-process (``grpo_jax.cli.main``) as a user would."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# the smallest from-scratch run: one layer, 4 prompts x 4 completions of 4 tokens, one step, no SFT warm-up
TINY = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.intermediate_size=64", "data.batch_size=4",
        "num_generations=4", "max_completion_length=4", "max_steps=1", "sft.steps=0", "progress=false"]


def error_line(capsys) -> str:
    """The one ``grpo-jax: error:`` line main printed (read from pytest's ``capsys``); asserts no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("grpo-jax: error:")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(directory: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256 of the contents, mode bits)} of every file under ``directory`` (empty when it
    does not exist): equal snapshots before and after mean nothing there was written, removed or re-moded."""
    root = Path(directory)
    out = {}
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if path.is_file():
            out[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                path.stat().st_mode & 0o7777)
    return out
