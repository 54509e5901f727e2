"""Every recipe in experiments/ builds and trains 2 steps on a tiny random-init checkpoint of its architecture.

The real recipes need real weights and accelerators; here only the model (a 2-layer Qwen2 with a byte-level
BPE tokenizer and a chat template), the data files and the sizes (G, prompts per step, lengths) are
swapped for tiny ones. The algorithm settings are the recipe's own. The HumanEval recipe trains on a few
short problems in HumanEval's format (the package's own 164, up to ~1,500 tokens each with this tokenizer,
made the run a minute and a half; loading them is tested in test_data_files.py).
"""

import json
from pathlib import Path

import pytest
from hf_checkpoints import make_checkpoint, make_tokenizer

from grpo_jax.metrics import read_metrics
from grpo_jax.trainer import apply_overrides, load_config, train

ROOT = Path(__file__).resolve().parents[1]
# The 1.5B recipe is the 0.5B one on a tensor-parallel mesh (checked below); training on that mesh is
# test_trainer_run.py's mesh-of-eight test, so it is not trained here a second time.
DERIVED = {"gsm8k_qwen2p5_1p5b.py": "gsm8k_qwen2p5_0p5b.py"}
RECIPES = sorted(p.name for p in (ROOT / "experiments").glob("*.py") if p.name not in ("default.py", *DERIVED))


@pytest.mark.parametrize("derived, base", list(DERIVED.items()))
def test_a_derived_recipe_differs_from_its_base_only_in_model_and_mesh(derived, base):
    import dataclasses

    from grpo_jax.trainer.config import parse_mesh

    config, base_config = load_config(ROOT / "experiments" / derived), load_config(ROOT / "experiments" / base)
    assert parse_mesh(config.run.mesh) == {"fsdp": -1, "tensor": 2} and config.model.path != base_config.model.path
    assert dataclasses.replace(config, name=base_config.name, model=base_config.model, run=dataclasses.replace(
        config.run, mesh=base_config.run.mesh)) == base_config

GSM8K = [("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7\n#### 7"),
         ("A box holds 1,200 pens. Half are sold. How many remain?", "1200 / 2 = 600\n#### 600"),
         ("What is 12 times 3?", "12 * 3 = 36\n#### 36"),
         ("Sara reads 5 pages a day for 6 days. How many pages?", "5 * 6 = 30\n#### 30")] * 3
MATH = [("Compute $\\frac{1}{2} + \\frac{1}{4}$.", "It is $\\boxed{\\frac{3}{4}}$."),
        ("What is $3^2$?", "$3^2 = \\boxed{9}$."), ("Solve $x + 1 = 3$.", "$x = \\boxed{2}$.")] * 4
HUMANEVAL = [(name, f"def {name}({args}):\n    \"\"\"{doc}\"\"\"\n", f"def check(candidate):\n    assert {check}\n")
             for name, args, doc, check in [
                 ("add", "a, b", "Return a + b.", "candidate(2, 3) == 5"),
                 ("is_even", "n", "True if n is even.", "candidate(4) and not candidate(3)"),
                 ("reverse", "s", "Return s reversed.", "candidate('ab') == 'ba'"),
                 ("largest", "xs", "The largest item of xs.", "candidate([1, 5, 2]) == 5"),
                 ("vowels", "s", "How many vowels s has.", "candidate('banana') == 3"),
                 ("square", "x", "Return x squared.", "candidate(3) == 9")]]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = make_tokenizer(path)
    make_checkpoint(path, "qwen2_bias_tied", vocab_size=len(tokenizer))
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    with open(root / "gsm8k.jsonl", "w") as f:
        for q, a in GSM8K:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    with open(root / "math.jsonl", "w") as f:
        for p, s in MATH:
            f.write(json.dumps({"problem": p, "solution": s}) + "\n")
    with open(root / "humaneval.jsonl", "w") as f:
        for i, (name, prompt, test) in enumerate(HUMANEVAL):
            f.write(json.dumps({"task_id": f"Tiny/{i}", "prompt": prompt, "entry_point": name, "test": test}) + "\n")
    return {"gsm8k_jsonl": root / "gsm8k.jsonl", "math": root / "math.jsonl", "humaneval": root / "humaneval.jsonl"}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_two_steps_on_a_tiny_checkpoint(recipe, tiny_model, data_files, tmp_path):
    config = load_config(ROOT / "experiments" / recipe)
    overrides = [f"model.path={tiny_model}", "max_steps=2", "num_generations=4", "data.batch_size=2",
                 "max_completion_length=8", "eval_examples=2", "eval_batch_size=2", "num_minibatches=2",
                 "gradient_accumulation_steps=2", "save_steps=0", "plot=false", "tensorboard=false",
                 "progress=false", "data.max_prompt_length=2048", "code_timeout_s=1.0"]
    if config.data.task in data_files:
        overrides.append(f"data.path={data_files[config.data.task]}")
    if config.sft.steps:  # the warm-up's wiring, not its length, is under test
        overrides.append("sft.steps=2")
    if config.run.eval_num_samples:
        overrides.append("run.eval_num_samples=2")
    tiny = apply_overrides(config, overrides)
    # the recipe's algorithm is kept as is
    assert tiny.grpo.beta == config.grpo.beta and tiny.grpo.loss_type == config.grpo.loss_type
    assert tiny.grpo.rewards == config.grpo.rewards and tiny.optimizer.learning_rate == config.optimizer.learning_rate
    train(tiny, output_dir=str(tmp_path))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert r["completion/length_mean"] > 0 and r["time/step_s"] > 0
        for name in config.grpo.rewards:
            assert f"reward/{name}/mean" in r
    assert "eval/accuracy" in records[-1]
