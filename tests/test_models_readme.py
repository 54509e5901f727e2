"""The README's models and sampling examples run as written, on a tiny local checkpoint in place of the real one."""

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from hf_checkpoints import make_checkpoint  # noqa: E402
from test_models_tokenizer import make_tokenizer  # noqa: E402

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_models_example(tmp_path, monkeypatch):
    code = [block for block in re.findall(r"```python\n(.*?)```", README, re.S) if "load_pretrained" in block]
    assert len(code) == 1
    checkpoint = tmp_path / "Qwen2.5-0.5B-Instruct"
    make_checkpoint(checkpoint, "qwen2_bias_tied", vocab_size=300)
    make_tokenizer(checkpoint)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code[0], "README.md", "exec"), namespace)
    logits = np.asarray(namespace["logits"])
    assert logits.shape[0] == 2 and logits.shape[2] == 300 and np.all(np.isfinite(logits))
    assert (tmp_path / "exported" / "model.safetensors").is_file()

    sampling = [block for block in re.findall(r"```python\n(.*?)```", README, re.S) if "generate(" in block]
    assert len(sampling) == 1
    exec(compile(sampling[0].replace("max_new_tokens=256", "max_new_tokens=8"), "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.tokens.shape == (2 * 8, 8) and out.finished.shape == (16,)
