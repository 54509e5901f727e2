"""The command line end to end: train -> eval -> export, and the exported directory is a real Hugging Face
checkpoint (transformers' PyTorch model gives our logits)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from grpo_jax.cli import main
from grpo_jax.metrics import read_metrics
from grpo_jax.models import forward, load_pretrained, load_tokenizer
from grpo_jax.trainer import build_context, load_run_config, restore_params
from grpo_jax.trainer.build import stop_token_ids

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.intermediate_size=64", "data.difficulty=0",
        "data.num_examples=500", "data.eval_examples=8", "data.batch_size=4", "grpo.num_generations=4",
        "grpo.max_completion_length=4", "max_steps=2", "eval_steps=1", "save_steps=1", "sft.steps=3",
        "sft.batch_size=8", "run.eval_batch_size=8", "progress=false"]


def test_train_eval_export(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--output-dir", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "SFT warm-up:" in out and "GRPO:" in out and "reward/mean" in out
    assert [r["step"] for r in read_metrics(run_dir)] == [0, 1, 2]
    assert [r["step"] for r in read_metrics(run_dir / "sft")] == [0, 1, 2, 3]

    assert main(["eval", str(run_dir), "--step", "1"]) == 0
    evaluated = json.loads((run_dir / "eval-step1.json").read_text())
    logged = next(r for r in read_metrics(run_dir) if r["step"] == 1)
    assert evaluated["step"] == 1 and evaluated["eval/accuracy"] == logged["eval/accuracy"]

    export = tmp_path / "hf"
    assert main(["export", str(run_dir), str(export)]) == 0
    ctx, params = build_context(load_run_config(str(run_dir)), str(run_dir))
    params, step = restore_params(ctx, params)
    assert step == 2
    model, loaded = load_pretrained(export)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, loaded)
    # serving stacks pick the class by `architectures`; training from the export stops where the run did
    assert json.loads((export / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert stop_token_ids(load_tokenizer(export), model.config, str(export), ()) == ctx.sampling.eos_token_ids

    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(export)
    batch = tokenizer(["3 + 4 = ?", "12 + 7 = ?"], padding=True, return_tensors="np")
    ours = np.asarray(forward(model, loaded, batch["input_ids"], batch["attention_mask"]))
    hf = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(batch["input_ids"]),
                    attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)


def test_train_refuses_unknown_fields_and_existing_runs(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "grpo_jax.cli", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    proc = run("train", "grpo.betta=0.1")
    assert proc.returncode == 2 and "no field 'grpo.betta'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--config", str(tmp_path / "missing.py"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run("eval", str(tmp_path))
    assert proc.returncode == 2 and "not a training run directory" in proc.stderr
    proc = run("train", "data.task=gsm8k_jsonl", f"data.path={tmp_path}", f"--output-dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(tmp_path) in proc.stderr


def test_generation_config_keeps_the_sources_settings_and_names_the_runs_stop_ids(tmp_path):
    from types import SimpleNamespace

    from grpo_jax.cli import _generation_config

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7, "top_p": 0.8}))
    ctx = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(path=str(tmp_path))),
                          sampling=SimpleNamespace(eos_token_ids=(7, 9)))
    assert _generation_config(ctx) == {"eos_token_id": [7, 9], "top_p": 0.8}
    ctx.config.model.path = None  # a model initialised from a seed: only the stop ids
    assert _generation_config(ctx) == {"eos_token_id": [7, 9]}
