"""The command line tells config errors from bugs: a ConfigError (a setting, a flag or an input file to fix) is
one line on stderr and exit status 2; any other exception keeps its traceback (exit status 1)."""

import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import TINY, error_line

from grpo_jax.cli import main
from grpo_jax.data import DataFormatError
from grpo_jax.errors import ConfigError, InputNotFoundError, OutputExistsError
from grpo_jax.models.config import UnsupportedModelError
from grpo_jax.models.gguf_io import GGUFError

ROOT = Path(__file__).resolve().parents[1]


def test_the_error_classes_keep_their_builtin_bases():
    # code that catches ValueError / FileNotFoundError / FileExistsError (and the Python API's users) still works
    assert issubclass(ConfigError, ValueError)
    assert issubclass(InputNotFoundError, ConfigError) and issubclass(InputNotFoundError, FileNotFoundError)
    assert issubclass(OutputExistsError, ConfigError) and issubclass(OutputExistsError, FileExistsError)
    for user_file_error in (DataFormatError, GGUFError, UnsupportedModelError):
        assert issubclass(user_file_error, ConfigError)
    from grpo_jax.trainer import ConfigError as reexported

    assert reexported is ConfigError


@pytest.mark.parametrize("argv, message", [
    (["train", "grpo.betta=0.1"], "no field 'grpo.betta'"),
    (["train", "grpo.beta=abc"], "grpo.beta"),
    (["train", "--resume"], "--resume needs --output-dir"),
    (["sft", "sft.steps=0"], "sft.steps is 0"),
    (["train", "--num-processes", "2"], "multi-host: give all of"),
])
def test_config_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("grpo-jax: error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.py")]) == 2
    line = error_line(capsys)
    assert "no such file" in line and "missing.py" in line


@pytest.mark.parametrize("kind", ["missing", "directory", "malformed"])
def test_data_file_errors_exit_2_naming_the_path(kind, tmp_path, capsys):
    path = {"missing": tmp_path / "nope.jsonl", "directory": tmp_path}.get(kind, tmp_path / "bad.jsonl")
    if kind == "malformed":
        path.write_text('{"question": "1 + 1", "answer": "#### 2"}\n{"question": "no answer"}\n')
    argv = ["train", f"--output-dir={tmp_path / 'run'}", "data.task=gsm8k_jsonl", f"data.path={path}", *TINY]
    assert main(argv) == 2
    line = error_line(capsys)
    expected = {"missing": "no such file", "directory": "is a directory", "malformed": "line 2: missing field 'answer'"}
    assert str(path) in line and expected[kind] in line


def test_an_internal_error_propagates_with_its_type(monkeypatch, tmp_path):
    """A ValueError (or OSError) that is not a ConfigError is a bug: main does not turn it into a one-liner."""
    import grpo_jax.trainer

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(grpo_jax.trainer, "build_context", broken)
    with pytest.raises(ValueError, match="boom"):
        main(["train", f"--output-dir={tmp_path}", *TINY])

    def unwritable(*args, **kwargs):
        raise PermissionError("denied")

    monkeypatch.setattr(grpo_jax.trainer, "build_context", unwritable)
    with pytest.raises(PermissionError, match="denied"):
        main(["sft", f"--output-dir={tmp_path}", *TINY, "sft.steps=1"])


def test_a_bug_exits_1_with_its_traceback(tmp_path):
    """End to end through the interpreter: a recipe whose get_config() raises ValueError shows the traceback
    (pointing at the recipe's line) and exits 1, unlike a ConfigError's one line and exit 2."""
    recipe = tmp_path / "recipe.py"
    recipe.write_text("def get_config():\n    raise ValueError('boom in the recipe')\n")
    proc = subprocess.run([sys.executable, "-m", "grpo_jax.cli", "train", "--config", str(recipe)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: boom in the recipe" in proc.stderr
    assert "recipe.py" in proc.stderr and "grpo-jax: error:" not in proc.stderr
