"""The trainer with tool calls: an exact resume, eval, the tool-use SFT traces and the config's errors."""

import dataclasses

import jax
import numpy as np
import pytest
from trainer_runs import tiny_config, train_until_crash

from grpo_jax.data.products import products_example
from grpo_jax.metrics import read_metrics
from grpo_jax.tools import ToolConfig
from grpo_jax.trainer import ConfigError, TrainConfig, apply_overrides, build_context, restore_params, train
from grpo_jax.trainer.sft import is_tool_trace, sft_batch, target_segments

# markers the tiny model's alphabet ("0123456789+-*/=? ") can write, and a random-init model writes often
TOOLS = ToolConfig(max_tool_calls=2, call_start="=", call_end="?", result_template="{output}=", timeout_s=2.0,
                   max_output_chars=8, error_reward=-0.1)


def tool_config(*overrides: str) -> TrainConfig:
    config = tiny_config("max_new_tokens=12", "temperature=2.0", *overrides)
    return dataclasses.replace(config, tools=TOOLS)


def test_a_tool_run_resumes_exactly_and_evaluates_with_tools(tmp_path, monkeypatch):
    config = tool_config("save_steps=1", "num_iterations=2", "eval_steps=4")
    train(config, output_dir=str(tmp_path / "whole"))
    train_until_crash(config, str(tmp_path / "resumed"), monkeypatch)
    train(config, output_dir=str(tmp_path / "resumed"), resume=True)
    whole, resumed = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "resumed")
    steps = [r for r in whole if "tools/calls_per_completion" in r]
    assert len(steps) == 4
    # the random model calls the tool, the outputs are appended, and some calls error (random code)
    assert all(r["tools/calls_per_completion"] > 0 and r["tools/token_frac"] > 0 for r in steps)
    assert any(r["tools/errors"] > 0 for r in steps) and all(r["time/tools_s"] > 0 for r in steps)
    assert all(r["reward/tool_errors/mean"] < 0 for r in steps)  # the shaping reward is in the total
    assert "eval/tool_calls_per_completion" in whole[-1]  # greedy decoding of a random model rarely calls
    for a, b in zip(whole, resumed, strict=True):
        for key in ("loss", "reward/mean", "tools/calls_per_completion", "tools/errors", "completion/length_mean",
                    "eval/accuracy", "eval/tool_calls_per_completion"):
            assert a.get(key) == b.get(key), (a["step"], key)
    params = [jax.device_get(restore_params(*build_context(config, str(tmp_path / run)))[0])
              for run in ("whole", "resumed")]
    for x, y in zip(*(jax.tree.leaves(p) for p in params), strict=True):
        np.testing.assert_array_equal(x, y)


def test_tool_use_sft_traces_train_the_call_and_the_answer_not_the_output():
    config = tiny_config("task=products", "model.alphabet=0123456789+-*/=? <>/pyout", "max_prompt_length=24",
                         "max_new_tokens=64", "model.max_position_embeddings=128", "max_tool_calls=1",
                         "tools.call_start=<py>", "tools.call_end=</py>", "tools.result_template=<out>{output}</out>",
                         "sft.tool_code_field=tool_code")
    ctx, _ = build_context(config)
    example = ctx.train_examples[0]
    batch = sft_batch(ctx, [example], "final_answer")
    t = config.sampling.max_new_tokens
    target = ctx.tokenizer.decode(batch["input_ids"][0, -t:][batch["attention_mask"][0, -t:] > 0].tolist())
    call, out = f"<py>{example['expression']}</py>", f"<out>{example['answer']}</out>"
    assert target == f"{call}{out}{example['answer']}<eos>"
    trained = batch["completion_mask"][0]
    expected = np.zeros(t, np.float32)
    expected[:len(call)] = 1  # the call, then the tool's output (not trained), then the answer and EOS
    expected[len(call) + len(out):len(call) + len(out) + len(example["answer"]) + 1] = 1
    np.testing.assert_array_equal(trained, expected)


def test_tool_trace_fraction_picks_a_fixed_share_of_the_examples_by_prompt():
    config = tiny_config("task=products", "model.alphabet=0123456789+-*/=? <>/pyout", "max_prompt_length=24",
                         "max_new_tokens=64", "model.max_position_embeddings=128", "max_tool_calls=1",
                         "tools.call_start=<py>", "tools.call_end=</py>", "tools.result_template=<out>{output}</out>",
                         "sft.tool_code_field=tool_code", "sft.tool_trace_fraction=0.25")
    ctx, _ = build_context(config)
    examples = [products_example(i) for i in range(400)]
    traces = [len(target_segments(ctx, e, "final_answer")) == 3 for e in examples]
    assert 0.18 < np.mean(traces) < 0.32  # 100 expected of 400 (binomial sd 8.7)
    # the rest are the answer alone; the choice is a function of the prompt (the same on every call)
    direct = [target_segments(ctx, e, "final_answer") for e, t in zip(examples, traces, strict=True) if not t]
    assert all(len(d) == 1 and d[0][1] for d in direct)
    assert traces == [len(target_segments(ctx, e, "final_answer")) == 3 for e in examples]
    assert all(is_tool_trace(e, 1.0) and not is_tool_trace(e, 0.0) for e in examples[:20])


@pytest.mark.parametrize("overrides,message", [
    (["max_tool_calls=1", "algorithm=ppo", "num_generations=1"], "per-token advantages"),
    (["max_tool_calls=1", "step_reward=arithmetic_steps"], "per-token advantages"),
    (["sft.tool_code_field=tool_code"], "tools are off"),
    (["max_tool_calls=1", "sft.tool_trace_fraction=0.5"], "tool_code_field is unset"),
    (["max_tool_calls=1", "sft.tool_code_field=tool_code", "sft.tool_trace_fraction=1.5"], "tool_trace_fraction"),
    (["max_tool_calls=1", "tools.result_template=no output field"], "tools.result_template"),
    (["max_tool_calls=-1"], "tools.max_tool_calls"),
])
def test_tool_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(tiny_config(), overrides)
