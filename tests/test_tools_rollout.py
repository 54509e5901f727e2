"""Rollouts with tool calls (grpo_jax.tools.multiturn through grpo_jax.trainer.rollout.rollout).

A scripted policy stands in for the sampler here: ``generate`` is replaced by one that writes, for each row, the
next turn a script chooses from the row's context, so the host-side orchestration (calls found, run in the real
sandbox, outputs appended, masks, budgets, rewards) is checked against exact expected trajectories. The real
sampler's multi-turn path is checked in tests/test_tools_training.py.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_checkpoints import make_tokenizer

from grpo_jax.rewards import RewardSpec, math_reward
from grpo_jax.sampling import SampleResult, SamplingConfig
from grpo_jax.tools import ToolConfig, multiturn
from grpo_jax.tools.config import find_call, render_result
from grpo_jax.trainer.rollout import rollout, sequence_batch

TOOLS = ToolConfig(max_tool_calls=2, call_start="<py>", call_end="</py>", result_template="<out>{output}</out>",
                   timeout_s=2.0, max_output_chars=40)
EOS = "\x00"  # a script ends a turn with EOS by writing this


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A real byte-level BPE tokenizer: any text encodes, and "</py>" inside a text may merge with its
    neighbours into other tokens than on its own, as with a pretrained model's tokenizer."""
    tok = make_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    tok.pad_token = "<|pad|>"
    return tok


def scripted_generate(script, tokenizer):
    """A stand-in for grpo_jax.sampling.generate: completion j of a row's next turn is ``script(context text, j)``
    (the context: the prompt and the trajectory so far), tokenized, and cut where the real sampler stops (the
    first EOS or completed stop sequence, or max_new_tokens); the k-th token of a turn has log-probability
    -1 - k."""

    def generate(model, params, prompt_ids, prompt_mask, key, config: SamplingConfig):
        ids, mask = np.asarray(prompt_ids), np.asarray(prompt_mask)
        g, t = config.num_generations, config.max_new_tokens
        n = len(ids) * g
        tokens = np.full((n, t), config.pad_token_id, np.int32)
        out_mask, logprobs, finished = np.zeros((n, t), np.int32), np.zeros((n, t), np.float32), np.zeros(n, bool)
        for row in range(n):
            context = tokenizer.decode(ids[row // g][mask[row // g] > 0].tolist())
            text = script(context, row % g)
            turn = tokenizer(text.rstrip(EOS), add_special_tokens=False)["input_ids"]
            turn += [tokenizer.eos_token_id] * text.endswith(EOS)
            end = next((i + 1 for i in range(len(turn)) if turn[i] in config.eos_token_ids
                        or any(tuple(turn[i + 1 - len(s):i + 1]) == s for s in config.stop_sequences)), None)
            finished[row] = end is not None and end <= t
            end = min(end or len(turn), t)
            tokens[row, :end], out_mask[row, :end] = turn[:end], 1
            logprobs[row, :end] = -1.0 - np.arange(end)
        as_jax = jnp.asarray
        return SampleResult(as_jax(tokens), as_jax(out_mask), as_jax(logprobs), as_jax(logprobs), as_jax(finished),
                            jnp.int32(t))

    return generate


def run_script(monkeypatch, tokenizer, script, prompts, *, tools=TOOLS, max_new_tokens=64, group=1, answers=None):
    monkeypatch.setattr(multiturn, "generate", scripted_generate(script, tokenizer))
    sampling = SamplingConfig(num_generations=group, max_new_tokens=max_new_tokens,
                              eos_token_ids=(tokenizer.eos_token_id,), pad_token_id=tokenizer.pad_token_id)
    examples = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers or ["0"] * len(prompts), strict=True)]
    specs = [RewardSpec(math_reward, name="math")]
    return rollout(None, None, tokenizer, examples, jax.random.key(0), sampling, specs, prompt_texts=prompts,
                   add_special_tokens=False, tools=tools)


def pieces(tokenizer, r, row):
    """The row's trajectory as (text, written by the tool) runs."""
    out, n = [], int(r.completion_mask[row].sum())
    for token, tool in zip(r.tokens[row, :n], r.tool_mask[row, :n], strict=True):
        if out and out[-1][1] == bool(tool):
            out[-1] = (out[-1][0] + [int(token)], bool(tool))
        else:
            out.append(([int(token)], bool(tool)))
    return [(tokenizer.decode(ids), tool) for ids, tool in out]


def test_find_call_and_render_result():
    fenced = ToolConfig(max_tool_calls=1)
    assert find_call("x<py>6 * 7</py>tail", TOOLS) == ("6 * 7", len("x<py>6 * 7</py>"))
    assert find_call("a<py>1</py><py>2</py>", TOOLS) == ("1", len("a<py>1</py>"))  # the first call
    assert find_call("no call <py>1", TOOLS) is None
    assert find_call("</py>", TOOLS) == (None, 5)  # a marker without code
    text = "Let me compute.\n```python\nprint(2 ** 10)\n```\n```output"
    assert find_call(text, fenced) == ("print(2 ** 10)\n", len(text))
    assert render_result("1024\n", fenced) == "\n1024\n```\n"
    assert render_result("42\n\n", TOOLS) == "<out>42</out>"


@pytest.mark.parametrize("field,value", [("max_tool_calls", -1), ("call_end", ""), ("timeout_s", 0),
                                         ("result_template", "no field"), ("result_template", "{output}{x}"),
                                         ("max_output_chars", 0)])
def test_tool_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"tools.{field}"):
        ToolConfig(**{field: value})


def test_a_call_its_output_and_the_answer(monkeypatch, tokenizer):
    def script(context, j):
        return "<py>print(6*7)</py>" if "<out>" not in context else "42" + EOS

    r = run_script(monkeypatch, tokenizer, script, ["6 * 7 = ?"], answers=["42"])
    assert pieces(tokenizer, r, 0) == [("<py>print(6*7)</py>", False), ("<out>42</out>", True), ("42<|end|>", False)]
    call, out, answer = (len(tokenizer(t)["input_ids"]) for t in ("<py>print(6*7)</py>", "<out>42</out>", "42"))
    assert r.model_mask[0].sum() == call + answer + 1 and r.tool_mask[0].sum() == out
    assert r.finished[0] and r.tool_calls[0] == 1 and r.tool_errors[0] == 0
    # the sampler's log-probs of each turn, 0 on the tool's tokens
    np.testing.assert_array_equal(r.policy_logprobs[0, :call], -1.0 - np.arange(call))
    assert not r.policy_logprobs[0, r.tool_mask[0] > 0].any()
    second = r.policy_logprobs[0, call + out:call + out + answer + 1]
    np.testing.assert_array_equal(second, -1.0 - np.arange(answer + 1))
    assert r.texts == ["<py>print(6*7)</py>42"] and r.rewards[0] == 1.0
    batch = sequence_batch(r, mask_truncated=True)
    np.testing.assert_array_equal(batch["completion_mask"][0], r.model_mask[0])  # the loss's mask: model tokens
    np.testing.assert_array_equal(batch["attention_mask"][0, -64:], r.completion_mask[0])  # attends to all


def test_tool_output_cannot_forge_an_answer(monkeypatch, tokenizer):
    """The tool prints a correct answer in the answer tag; the model writes no answer of its own: reward 0."""
    code = "print('<answer>'+str(6*7)+'</answer>')"

    def script(context, j):
        return f"<py>{code}</py>" if "<out>" not in context else EOS

    r = run_script(monkeypatch, tokenizer, script, ["6 * 7 = ?"], answers=["42"])
    assert pieces(tokenizer, r, 0)[1] == ("<out><answer>42</answer></out>", True)
    assert r.rewards[0] == 0.0 and r.per_reward["math"][0] == 0.0
    # the same trajectory's whole text (the tool's output included) would have scored 1: the check can fail
    whole = tokenizer.decode(r.tokens[0, :int(r.completion_mask[0].sum())].tolist(), skip_special_tokens=True)
    assert math_reward([whole], answer=["42"]) == [1.0]


def test_call_budget_errors_and_shaping(monkeypatch, tokenizer):
    tools = ToolConfig(**{**TOOLS.__dict__, "max_tool_calls": 1, "error_reward": -0.25, "budget_reward": -0.5})

    def script(context, j):
        return "<py>1/0</py>" if context.startswith("a") else "<py>1+1</py>"  # both call again after every output

    r = run_script(monkeypatch, tokenizer, script, ["a", "b"], tools=tools)
    assert pieces(tokenizer, r, 0) == [("<py>1/0</py>", False), ("<out>ZeroDivisionError: division by zero</out>",
                                                                  True), ("<py>1/0</py>", False)]
    assert pieces(tokenizer, r, 1) == [("<py>1+1</py>", False), ("<out>2</out>", True), ("<py>1+1</py>", False)]
    np.testing.assert_array_equal(r.tool_calls, [1, 1])  # the second call of each is over the budget: not run
    np.testing.assert_array_equal(r.tool_errors, [1, 0])
    np.testing.assert_array_equal(r.tool_over_budget, [True, True])
    np.testing.assert_allclose(r.per_reward["tool_errors"], [-0.25, 0.0])
    np.testing.assert_allclose(r.per_reward["tool_budget"], [-0.5, -0.5])
    np.testing.assert_allclose(r.rewards, [-0.75, -0.5])


def test_the_token_budget_covers_the_tools_text(monkeypatch, tokenizer):
    """A trajectory stops at max_new_tokens, even inside the tool's output; it is then unfinished."""

    def script(context, j):
        return "<py>print(10**30)</py>" if "<out>" not in context else "1" + EOS

    r = run_script(monkeypatch, tokenizer, script, ["q"], max_new_tokens=30)
    call = "<py>print(10**30)</py>"
    room = 30 - len(tokenizer(call)["input_ids"])
    out = tokenizer.decode(tokenizer(f"<out>{10**30}</out>")["input_ids"][:room])
    assert pieces(tokenizer, r, 0) == [(call, False), (out, True)] and room > 5
    assert not r.finished[0] and r.tool_calls[0] == 1 and r.completion_mask[0].sum() == 30


def test_a_call_without_code_is_an_error_without_running(monkeypatch, tokenizer):
    def script(context, j):
        return "just </py>" if "<out>" not in context else "7" + EOS

    r = run_script(monkeypatch, tokenizer, script, ["q"], answers=["7"])
    assert pieces(tokenizer, r, 0)[1] == (f"<out>{multiturn.NO_CODE_OUTPUT}</out>", True)
    assert r.tool_errors[0] == 1 and r.rewards[0] == 1.0


def test_bad_calls_cost_only_their_own_completion(monkeypatch, tokenizer):
    """A call that hangs, floods its output, forks without end or tries the network gets the tool's error text;
    the good rows of the same batch get their right outputs and rewards, and the batch takes about one timeout
    (the calls run in parallel), not one per bad call."""
    codes = {
        "hang": "while True: pass",
        "flood": "while True: print('x' * 1000)",
        "fork": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "network": "import socket\nsocket.create_connection(('8.8.8.8', 53), timeout=5)",
        "good": "print(123 * 456)",
    }
    names = ["good", "hang", "flood", "fork", "network", "good"]

    def script(context, j):
        name = context.split()[0]
        return f"<py>{codes[name]}</py>" if "<out>" not in context else f"{123 * 456}" + EOS

    tools = ToolConfig(**{**TOOLS.__dict__, "timeout_s": 2.0, "max_output_chars": 60})
    start = time.perf_counter()
    r = run_script(monkeypatch, tokenizer, script, [f"{n} q" for n in names], tools=tools, max_new_tokens=200,
                   answers=[str(123 * 456)] * len(names))
    took = time.perf_counter() - start
    outputs = [pieces(tokenizer, r, row)[1][0] for row in range(len(names))]
    assert outputs[0] == outputs[5] == "<out>56088</out>"
    assert outputs[1] == "<out>Error: timed out after 2 s</out>"
    assert outputs[2] == "<out>" + "x" * 60 + "\n... [output truncated]</out>"
    assert outputs[3] == "<out>Error: timed out after 2 s</out>"  # the fork bomb, stopped at its time limit
    assert outputs[4] == "<out>OSError: [Errno 101] Network is unreachable</out>"
    np.testing.assert_array_equal(r.tool_errors, [0, 1, 1, 1, 1, 0])
    assert r.finished.all() and (r.per_reward["math"] == 1.0).all()  # every row still answered after its call
    assert took < 4 * tools.timeout_s, took
    assert r.tools_s <= took
