"""grpo-jax compare on a tiny config: one process per run, the table, the JSON and the PNG, PPO's critic in its
bytes and XLA memory analysis, the same completions per step, and a second call reading finished runs."""

import json

import pytest
from trainer_runs import tiny_config

from grpo_jax import compare as compare_lib
from grpo_jax.cli import main


def test_algorithm_config_keeps_the_completions_per_step():
    base = tiny_config("data.batch_size=8", "num_generations=4")
    ppo = compare_lib.algorithm_config(base, "ppo", 3)
    assert (ppo.data.batch_size, ppo.sampling.num_generations, ppo.run.seed) == (32, 1, 3)
    rloo = compare_lib.algorithm_config(base, "rloo", 0)
    assert (rloo.data.batch_size, rloo.sampling.num_generations, rloo.grpo.algorithm) == (8, 4, "rloo")


def test_compare_writes_the_table_json_and_png(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["compare", "--output-dir", str(out), "--algorithms", "grpo,ppo", "--seeds", "0", "name=tiny",
            "model.hidden_size=32", "model.num_hidden_layers=1", "model.intermediate_size=64",
            "data.difficulty=0", "data.eval_examples=16", "data.batch_size=4", "num_generations=4",
            "max_new_tokens=4", "max_steps=2", "eval_steps=1", "save_steps=0", "sft.steps=0", "eval_batch_size=16",
            "progress=false", "tensorboard=false", "plot=false"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| grpo | 16 |" in printed and "| ppo | 16 |" in printed
    results = json.loads((out / "compare.json").read_text())
    grpo, ppo = results["summaries"]["grpo"], results["summaries"]["ppo"]
    assert grpo["bytes"]["critic_params"] == 0 and set(grpo["xla"]) == {"policy_update"}
    assert ppo["bytes"]["critic_params"] > ppo["bytes"]["policy_params"] > 0  # the copy plus its value head
    assert ppo["xla"]["critic_update"]["temp"] > 0 and ppo["phases_s"]["time/critic_update_s"] > 0
    assert "time/critic_update_s" not in grpo["phases_s"]
    for summary in (grpo, ppo):
        assert summary["rss_peak"] > 100e6 and summary["xla"]["policy_update"]["peak"] > 0
    assert [point["step"] for point in results["runs"]["ppo"][0]["curve"]] == [0, 1, 2]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "compare.md").read_text() == compare_lib.table(results["summaries"])

    def no_second_run(*_):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(compare_lib, "run_in_subprocess", no_second_run)
    assert main(argv) == 0


@pytest.mark.parametrize("flags,message", [(["--algorithms", "ppo,a2c"], "a2c"), (["--seeds", "x"], "--seeds"),
                                           (["eval_steps=0"], "eval_steps")])
def test_bad_compare_arguments_are_clear_errors(tmp_path, capsys, flags, message):
    assert main(["compare", "--output-dir", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err
