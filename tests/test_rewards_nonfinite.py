"""A custom reward that returns NaN / Inf / a non-number, through the command line as a user would configure it
(``grpo.rewards=module:function``): those completions count as the reward's failures and get its default, the
run ends normally, and no metric, advantage or saved parameter is non-finite."""

import json
import math

import jax
import numpy as np
from cli_runs import TINY

from grpo_jax.cli import main
from grpo_jax.trainer import load_run_config, restore_params
from grpo_jax.trainer.context import build_context

REWARD_MODULE = '''
BAD = (float("nan"), float("inf"), "a string")


def flaky(completions, answer, **kwargs):
    """Every other completion gets a value that is not a finite number; the rest get 1 if the answer is in it."""
    return [BAD[i // 2 % 3] if i % 2 else float(str(a) in c) for i, (c, a) in enumerate(zip(completions, answer))]
'''


def test_a_nan_returning_reward_counts_failures_and_saves_nothing_non_finite(tmp_path, monkeypatch):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "user_rewards_nonfinite.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(modules))
    run = tmp_path / "run"
    argv = ["train", f"--output-dir={run}", *TINY, "max_steps=2", "save_steps=1", "eval_steps=0",
            "grpo.rewards=user_rewards_nonfinite:flaky"]
    assert main(argv) == 0

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records if "reward/failures" in r]
    assert [r["step"] for r in trained] == [1, 2]
    # 4 prompts x 4 completions per step, every other one fails
    assert [r["reward/failures"] for r in trained] == [8, 8]
    assert all(r["nonfinite/skipped_updates"] == 0 for r in trained)
    for record in records:
        for key, value in record.items():
            assert not isinstance(value, float) or math.isfinite(value), (record["step"], key, value)
        assert None not in record.values(), record  # a NaN is written as null

    ctx, params = build_context(load_run_config(str(run)), str(run))
    params, step = restore_params(ctx, params)
    assert step == 2
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))
