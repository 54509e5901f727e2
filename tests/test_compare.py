"""grpo-jax compare on a tiny config: one process per run, the table, the JSON and the PNG, PPO's critic in its
bytes and XLA memory analysis, the same completions per step, and a second call reading finished runs."""

import json
import os

import pytest
from trainer_runs import tiny_config

from grpo_jax import compare as compare_lib
from grpo_jax.cli import main
from grpo_jax.metrics import read_metrics


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
    # the training batches' sampled accuracy, step by step, as the run's metrics have it
    metrics = [r for r in read_metrics(out / "grpo-seed0") if "accuracy" in r]
    expected = [{"step": r["step"], "accuracy": r["accuracy"]} for r in metrics]
    assert results["runs"]["grpo"][0]["batch_curve"] == expected
    assert len(metrics) == 2
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


def test_variants_parse_and_each_trains_its_own_config(tmp_path, capsys, monkeypatch):
    assert compare_lib.parse_variant("tools=") == ("tools", [])
    assert compare_lib.parse_variant("no-tools=tools.max_tool_calls=0, sft.tool_code_field=None") == (
        "no-tools", ["tools.max_tool_calls=0", "sft.tool_code_field=None"])
    for bad in ("tools", "=max_steps=2", "a/b=max_steps=2"):
        with pytest.raises(ValueError, match="--variant"):
            compare_lib.parse_variant(bad)
    # the wiring of variants (the subprocess itself is the test above's): which config each run gets, and where
    trained = {}

    def fake_run(config, run_dir):
        trained[run_dir.rsplit("/", 1)[-1]] = config
        os.makedirs(run_dir)
        return 123 << 20

    monkeypatch.setattr(compare_lib, "run_in_subprocess", fake_run)
    monkeypatch.setattr(compare_lib, "run_figures", lambda run_dir: {
        "curve": [{"step": 0, "accuracy": 0.25, "train_s": 0.0}, {"step": 2, "accuracy": 0.5, "train_s": 3.0}],
        "batch_curve": [{"step": 1, "accuracy": 0.5}, {"step": 2, "accuracy": 0.75}],
        "phases_s": {"time/step_s": 1.5}, "train_s": 3.0, "reward_last": 0.75, "bytes": {}, "xla": {}})
    monkeypatch.setattr(compare_lib, "summarize_algorithm", lambda runs: {"runs": len(runs)})
    monkeypatch.setattr(compare_lib, "table", lambda summaries: "table\n")
    assert main(["compare", "--output-dir", str(tmp_path), "--seeds", "0,1", "--variant", "base=",
                 "--variant", "small=max_steps=1,grpo.beta=0.5", "name=tiny", "max_steps=2", "eval_steps=1"]) == 0
    assert sorted(trained) == ["base-seed0", "base-seed1", "small-seed0", "small-seed1"]
    assert {(c.run.max_steps, c.grpo.beta, c.run.seed, c.data.seed) for c in trained.values()} == {
        (2, 0.0, 0, 0), (2, 0.0, 1, 1), (1, 0.5, 0, 0), (1, 0.5, 1, 1)}
    summaries = json.loads((tmp_path / "compare.json").read_text())["summaries"]
    assert summaries == {"base": {"runs": 2}, "small": {"runs": 2}}
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", "--output-dir", str(tmp_path), "--variant", "bad=no_such_field=1"]) == 2
    assert "no_such_field" in capsys.readouterr().err
