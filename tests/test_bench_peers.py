"""The side-by-side GRPO step benchmark's shared pieces: the workload every framework runs (checkpoint,
tokenizer, prompts, reward) and the orchestrator's arithmetic (medians, per-round ratios)."""

import sys

import pytest
from benchmark_scripts import ROOT, load

workload = load("workload")


def _orchestrator():
    return load("bench_grpo_step")


def test_reward_is_the_fraction_of_even_word_ids():
    assert workload.reward(["w2 w3 w4 w5", "w7", "", "hello w8"]) == [0.5, 0.0, 0.0, 1.0]
    assert workload.reward_fn(["w4 w6 w9"], prompts=["p"]) == pytest.approx([2 / 3])


def test_checkpoint_tokenizer_makes_every_prompt_exactly_32_tokens(tmp_path):
    from transformers import AutoTokenizer

    from grpo_jax.models import load_pretrained, load_tokenizer

    workload.make_checkpoint(str(tmp_path), "tiny")
    prompts = workload.make_prompts(workload.SIZES["tiny"]["vocab_size"], steps=2)
    assert len(prompts) == 2 * workload.PROMPTS_PER_STEP
    for tokenizer in (AutoTokenizer.from_pretrained(workload.tokenizer_dir(str(tmp_path))),
                      load_tokenizer(str(tmp_path))):
        ids = tokenizer(prompts)["input_ids"]
        assert {len(row) for row in ids} == {workload.PROMPT_WORDS}
        assert all(2 <= i < workload.SIZES["tiny"]["vocab_size"] for row in ids for i in row)
        assert tokenizer.decode(ids[0]) == prompts[0]
        assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (workload.EOS_ID, workload.PAD_ID)
    model, _ = load_pretrained(str(tmp_path))
    assert model.config.vocab_size == workload.SIZES["tiny"]["vocab_size"] and model.config.tie_word_embeddings


def test_summary_ratios_are_per_round_medians():
    bench = _orchestrator()

    def result(times, rss):
        steps = [{"step_s": t, "generation_s": t / 2, "reward_s": 0.01, "logprobs_s": None, "update_s": t / 4,
                  "generated_tokens": 16384} for t in times]
        return {"steps": steps, "first_step_s": 10.0, "setup_s": 1.0, "peak_rss_mb": rss}

    runs = {"grpo_jax": [result([1.0, 3.0], 900), result([2.0, 2.0], 950)],
            "trl": [result([20.0, 40.0], 2000), result([30.0, 50.0], 2100)]}
    summary = bench.summarize(runs)
    assert summary["grpo_jax"]["round_step_s"] == [2.0, 2.0]
    assert summary["trl"]["step_s"] == 35.0 and summary["trl"]["logprobs_s"] is None
    assert summary["trl"]["peak_rss_mb"] == 2100
    rows = bench.table("small", summary)
    assert rows[1].endswith("| 15.0 / 17.5 / 20.0 |")  # rounds: 30 / 2 and 40 / 2
    assert "| — |" in rows[1]  # TRL's unseparated phase


def test_accumulation_is_refused_with_the_tunix_worker():
    import subprocess

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_grpo_step.py"),
                             "--gradient-accumulation-steps", "4"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "the Tunix worker cannot accumulate" in result.stderr
