"""benchmarks/transformers_eval.py end to end: a run trained one step from a tiny random-init Llama checkpoint
(a real byte-level BPE tokenizer with a chat template and a stop token) is exported, and transformers'
greedy generate on the export writes the same completions as grpo_jax's eval.

A random model solves hardly any problem, so equal accuracies alone would pass with a broken export; the
completions being the same text, token for token up to the stop, is what the test rests on.

Llama, like SmolLM2, and not Qwen2: for a qwen2 config transformers' AutoTokenizer loads its own
Qwen2Tokenizer whatever tokenizer_config.json names, and Qwen's pre-tokenizer encodes this test tokenizer's
prompts differently from its tokenizer.json, so the completions differ for a reason the export cannot change
(the script reports it as identical_prompt_tokens < 1)."""

import json

from benchmark_scripts import load
from hf_checkpoints import make_checkpoint, make_tokenizer
from trainer_runs import tiny_config

from grpo_jax.trainer import train


def test_transformers_generate_on_the_export_matches_grpo_jax_eval(tmp_path):
    model_dir = tmp_path / "model"
    tokenizer = make_tokenizer(model_dir)
    make_checkpoint(model_dir, "llama_gqa2_untied", vocab_size=len(tokenizer))
    run_dir = tmp_path / "run"
    train(tiny_config(f"model.path={model_dir}", "data.chat_template=true", "data.max_prompt_length=64",
                      "max_completion_length=12", "max_steps=1", "eval_steps=0", "save_steps=1", "plot=false",
                      "tensorboard=false", "run.eval_batch_size=8"), output_dir=str(run_dir))

    out, export = tmp_path / "result.json", tmp_path / "hf"
    assert load("transformers_eval").main([str(run_dir), "--export-dir", str(export), "--json", str(out),
                                           "--batch-size", "5"]) == 0
    result = json.loads(out.read_text())
    assert result["step"] == 1 and result["num_problems"] == 16 and result["accuracy_reward"] == "math"
    assert result["grpo_jax_completions_accuracy"] == result["grpo_jax_accuracy"]
    assert abs(result["difference_points"]) <= 2 and result["passed"]
    assert result["identical_completions"] == 1.0, result["mismatches"]
    assert result["export_stop_ids"] == result["run_stop_ids"]
    assert (export / "config.json").is_file() and (export / "tokenizer.json").is_file()
