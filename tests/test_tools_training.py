"""Training on tool-calling trajectories: what the trainer sees of a multi-turn rollout (grpo_jax.tools).

The tool's tokens are context, not actions: they are left out of the loss and the KL (the gradient does not
depend on them where nothing the model wrote comes after them), yet the model attends them exactly as it would
a prompt. And the real sampler (a tiny random character model, no scripting) decodes every continuation turn
with the context and positions the trainer later uses: its log-probabilities of the model's tokens equal the
trainer's, on one device and on an 8-device mesh alike. The host-side orchestration (calls found, run, budgets,
rewards) is checked with a scripted policy in tests/test_tools_rollout.py.
"""

import jax
import numpy as np
import pytest

from grpo_jax.losses import grpo_loss
from grpo_jax.models import ModelConfig, build_model, init_params, param_shardings
from grpo_jax.rewards import RewardSpec
from grpo_jax.sampling import SamplingConfig
from grpo_jax.tools import ToolConfig, multiturn
from grpo_jax.tools.config import find_call, render_result
from grpo_jax.tools.python_tool import run_python_tools
from grpo_jax.trainer.build import build_policy
from grpo_jax.trainer.config import ModelSpec
from grpo_jax.trainer.rollout import Rollout, rollout, sequence_batch
from grpo_jax.trainer.step import completion_logprobs

TEMPERATURE = 0.7
MODEL = ModelConfig(model_type="qwen2", vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
PAD = 0


@pytest.fixture(scope="module")
def tiny():
    model = build_model(MODEL)
    params = init_params(model, jax.random.key(0))
    # normal(0.02) weights give nearly uniform, context-blind logits; 4x makes every token's log-prob depend
    # on its context, so a wrong context or position shows in the comparisons below
    params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)
    logprobs = jax.jit(lambda p, ids, mask, t: completion_logprobs(model, p, ids, mask, t, temperature=TEMPERATURE),
                       static_argnums=3)
    return model, params, logprobs


def hand_rollout(prompt: list[int], width: int, rows: list[list[tuple[list[int], bool]]], length: int,
                 finished: list[bool]) -> Rollout:
    """A Rollout of one prompt (left-padded to ``width``) and len(rows) completions, each given as runs of
    (token ids, written by the tool), padded to ``length`` tokens."""
    n = len(rows)
    tokens = np.full((n, length), PAD, np.int32)
    cmask, tmask = np.zeros((n, length), np.int32), np.zeros((n, length), np.int32)
    for i, runs in enumerate(rows):
        at = 0
        for ids, tool in runs:
            tokens[i, at:at + len(ids)], cmask[i, at:at + len(ids)], tmask[i, at:at + len(ids)] = ids, 1, int(tool)
            at += len(ids)
        assert at <= length
    prompt_ids = np.full((1, width), PAD, np.int32)
    prompt_mask = np.zeros((1, width), np.int32)
    prompt_ids[0, width - len(prompt):], prompt_mask[0, width - len(prompt):] = prompt, 1
    return Rollout(examples=[{"prompt": "hand-made"}], prompt_ids=prompt_ids, prompt_mask=prompt_mask, tokens=tokens,
                   completion_mask=cmask, policy_logprobs=np.zeros((n, length), np.float32),
                   finished=np.asarray(finished), texts=[], rewards=np.zeros(n, np.float32), per_reward={},
                   failures=[], tool_mask=tmask)


# ---- 1. the tool's tokens are not actions ----------------------------------------------------------------

PROMPT = [7, 3, 9]
T1 = 12
K = 4  # the tool's tokens at the end of row 0: a trajectory cut by the token budget inside the tool's output


def test_tool_tokens_are_not_actions(tiny):
    """The gradient of the GRPO loss (KL term on, reference and old log-probs recomputed on the batch as the
    trainer does) is bit-identical whatever the ids of the tool's tokens; the same positions written by the
    model change it (so the check can fail)."""
    model, params, logprobs = tiny
    ref_params = jax.tree.map(lambda x: x * 1.1, params)  # a reference policy other than the policy
    old_params = jax.tree.map(lambda x: x * 0.95, params)
    advantages = np.asarray([1.0, -0.5, 0.25], np.float32)

    @jax.jit
    def loss_and_grad(params, ids, attention, mask, old, ref):
        def loss(p):
            logp = completion_logprobs(model, p, ids, attention, T1, temperature=TEMPERATURE)
            value, metrics = grpo_loss(logp, old, ref, advantages, mask, beta=0.1, clip_eps=0.2)
            return value, metrics
        return jax.value_and_grad(loss, has_aux=True)(params)

    def run(tail: list[int], tool: bool):
        r = hand_rollout(PROMPT, 5, [
            [([4, 11, 6, 13, 8, 5, 14, 10], False), (tail, tool)],  # cut by the budget: unfinished
            [([12, 9, 4, 6, 2], False)],
            [([5, 5, 10], False), ([13, 1, 8], True), ([6, 9, 2], False)],
        ], T1, finished=[False, True, True])
        batch = sequence_batch(r, mask_truncated=False)  # with True the whole unfinished row 0 would be masked
        ids, attention = batch["input_ids"], batch["attention_mask"]
        old, ref = logprobs(old_params, ids, attention, T1), logprobs(ref_params, ids, attention, T1)
        (value, metrics), grads = loss_and_grad(params, ids, attention, batch["completion_mask"], old, ref)
        return batch, np.asarray(ref), float(value), float(metrics["kl"]), jax.tree.map(np.asarray, grads)

    tails = ([3, 15, 7, 12], [9, 1, 14, 0])
    (batch, ref_a, loss_a, kl_a, grad_a), (_, ref_b, loss_b, kl_b, grad_b) = (run(t, tool=True) for t in tails)
    np.testing.assert_array_equal(batch["completion_mask"][0], [1] * (T1 - K) + [0] * K)  # the loss's mask
    np.testing.assert_array_equal(batch["attention_mask"][0, -T1:], 1)  # attended all the same
    assert np.abs(ref_a[0, -K:] - ref_b[0, -K:]).min() > 1e-3  # the KL's inputs there did change
    assert kl_a > 1e-4 and abs(loss_a) > 1e-4  # the KL term is in the loss, and the loss is not zero
    assert loss_a == loss_b and kl_a == kl_b
    assert sum(float(np.abs(g).sum()) for g in jax.tree.leaves(grad_a)) > 1e-3
    jax.tree.map(np.testing.assert_array_equal, grad_a, grad_b)

    # control: had the model written those tokens, they would be actions and change the gradient
    (batch, _, loss_c, _, grad_c), (_, _, loss_d, _, grad_d) = (run(t, tool=False) for t in tails)
    np.testing.assert_array_equal(batch["completion_mask"][0], 1)
    assert loss_c != loss_d
    assert max(float(np.abs(c - d).max()) for c, d in zip(jax.tree.leaves(grad_c), jax.tree.leaves(grad_d),
                                                         strict=True)) > 1e-4


# ---- 2. ... but they are attended like a prompt --------------------------------------------------------

T2 = 16


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of 1s in a row's mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def segments(r: Rollout, row: int) -> list[tuple[int, int]]:
    """(start, end) of each run of the model's tokens in a row's trajectory."""
    return spans(r.model_mask[row])


def as_prompt_logprobs(logprobs, params, r: Rollout, row: int, start: int, end: int, width: int) -> np.ndarray:
    """log pi of the model's tokens start ... end - 1 of a row, computed with them as a completion of the prompt
    "original prompt + the trajectory before them", left-padded to ``width`` slots."""
    prompt = np.concatenate([r.prompt_ids[0][r.prompt_mask[0] > 0], r.tokens[row, :start]])
    ids, mask = np.full((1, width + T2), PAD, np.int32), np.zeros((1, width + T2), np.int32)
    ids[0, width - len(prompt):width], mask[0, width - len(prompt):width] = prompt, 1
    ids[0, width:width + end - start], mask[0, width:width + end - start] = r.tokens[row, start:end], 1
    return np.asarray(logprobs(params, ids, mask, T2))[0, :end - start]


def test_tool_tokens_reach_attention_like_a_prompt(tiny):
    """The trainer's log-probs of the tokens the model wrote after a tool's output equal those computed with
    everything before them (the tool's output included) as a left-padded prompt: the same context, the same
    rotary positions. Changing one token of the tool's output changes them (the model attends it) and leaves
    the tokens before it as they were."""
    model, params, logprobs = tiny

    def trainer_view(tool_token: int):
        r = hand_rollout(PROMPT, 6, [
            [([4, 11, 6, 13], False), ([8, tool_token, 10], True), ([5, 14, 9, 2], False)],
            [([12, 9], False), ([15, 3], True), ([7, 4, 6], False), ([9, 10, 11, 1], True), ([13, 2], False)],
        ], T2, finished=[True, True])
        batch = sequence_batch(r, mask_truncated=True)
        return r, np.asarray(logprobs(params, batch["input_ids"], batch["attention_mask"], T2))

    r, trainer = trainer_view(tool_token=5)
    checked = 0
    for row in range(2):
        turns = segments(r, row)
        assert len(turns) == (2, 3)[row]
        for start, end in turns[1:]:  # the model's turns after a tool output
            for width in (start + 3, start + 9):  # the prompt-equivalent's padding does not matter
                np.testing.assert_allclose(trainer[row, start:end],
                                           as_prompt_logprobs(logprobs, params, r, row, start, end, width),
                                           atol=1e-5, rtol=0, err_msg=f"row {row}, tokens {start}:{end}")
            checked += end - start
    assert checked == 4 + 3 + 2

    changed, trainer_changed = trainer_view(tool_token=12)
    first, (second_start, second_end) = segments(r, 0)[0], segments(r, 0)[1]
    np.testing.assert_array_equal(trainer_changed[0, :first[1]], trainer[0, :first[1]])  # before it: causal
    assert np.abs(trainer_changed[0, second_start:second_end] - trainer[0, second_start:second_end]).max() > 1e-2
    np.testing.assert_array_equal(trainer_changed[1], trainer[1])  # the other row's trajectory is its own
    np.testing.assert_allclose(trainer_changed[0, second_start:second_end],
                               as_prompt_logprobs(logprobs, params, changed, 0, second_start, second_end, 12),
                               atol=1e-5, rtol=0)


# ---- 3. the real sampler's multi-turn path ---------------------------------------------------------------

ALPHABET = "0123456789+() []"  # "*" left out: a random "9**9**9" would hang its call until the timeout
TOOLS = ToolConfig(max_tool_calls=2, call_start="(", call_end=")", result_template="[{output}]", timeout_s=2.0,
                   max_output_chars=8)
T3 = 64
PROMPTS = ["1+2 ", "(3)", "45+6", "7 ", "8[9]", " 12", "(4+5) ", "66"]


def length_reward(completions, **_):
    return [float(len(c)) for c in completions]


def sample(model, params, tokenizer, eos) -> Rollout:
    # one prompt bucket and one batch bucket: each turn's program differs only in G and its token budget
    sampling = SamplingConfig(num_generations=4, max_new_tokens=T3, temperature=1.0, eos_token_ids=eos,
                              pad_token_id=tokenizer.pad_token_id, prompt_length_buckets=(128,), batch_buckets=(32,))
    return rollout(model, params, tokenizer, [{"prompt": p} for p in PROMPTS], jax.random.key(0), sampling,
                   [RewardSpec(length_reward)], prompt_texts=PROMPTS, add_special_tokens=False, tools=TOOLS)


def test_real_sampler_multiturn(mesh8):
    """A tiny random character model, which writes "(" and ")" often, sampled with the Python tool: several
    rows call it, continue after its output, call it twice. For every row (a) the sampler's log-probs of the
    model's tokens equal the trainer's on the sequence batch, so every continuation turn was decoded with the
    trainer's context and positions (attending the tool's tokens: without them they differ); (b) the tool's
    tokens have no log-prob, follow a call_end, and hold the rendered output; (c) an 8-device mesh samples
    the same trajectories."""
    spec = ModelSpec(alphabet=ALPHABET, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model, params, tokenizer, eos = build_policy(spec, None, seed=0)
    params = jax.tree.map(lambda x: x * 3 if x.ndim >= 2 else x, params)  # context-dependent, still varied
    r = sample(model, params, tokenizer, eos)
    n = len(r.tokens)
    close = tokenizer.convert_tokens_to_ids(TOOLS.call_end)

    # the sampled rows exercise the multi-turn path
    continued = [row for row in range(n) if r.tool_mask[row].any()
                 and np.flatnonzero(r.model_mask[row]).max() > np.flatnonzero(r.tool_mask[row]).max()]
    assert (r.tool_calls > 0).sum() >= 4 and len(continued) >= 3, r.tool_calls
    assert (r.tool_calls == 2).any() and r.tool_calls.max() <= TOOLS.max_tool_calls

    # (a) the sampler's log pi of every model token = the trainer's, computed on the whole trajectory
    batch = sequence_batch(r, mask_truncated=False)
    np.testing.assert_array_equal(batch["completion_mask"], r.model_mask)
    logprobs = jax.jit(lambda p, ids, mask: completion_logprobs(model, p, ids, mask, T3, temperature=1.0))
    trainer = np.asarray(logprobs(params, batch["input_ids"], batch["attention_mask"]))
    model_tokens = r.model_mask > 0
    np.testing.assert_allclose(np.where(model_tokens, r.policy_logprobs, 0), np.where(model_tokens, trainer, 0),
                               atol=1e-4, rtol=0)
    assert (r.policy_logprobs[model_tokens] < 0).all()
    # the check can fail: the model's tokens after a tool output, scored without attending it, differ
    blind = batch["attention_mask"].copy()
    blind[:, -T3:] *= 1 - r.tool_mask
    after_tool = model_tokens & (np.cumsum(r.tool_mask, axis=1) > 0)
    assert np.abs(np.asarray(logprobs(params, batch["input_ids"], blind)) - r.policy_logprobs)[after_tool].max() > 0.1

    # (b) the tool's tokens: context with no log-prob, right after a call_end, holding what the sandbox gives
    # the call's code (run again here: the snippets of this model are deterministic)
    calls = []  # (row, start, end, code)
    for row in range(n):
        tool = r.tool_mask[row] > 0
        assert not r.policy_logprobs[row, tool].any() and r.completion_mask[row, tool].all()
        length = int(r.completion_mask[row].sum())
        turn_start = 0
        for start, end in spans(r.tool_mask[row]):
            assert start > 0 and r.tokens[row, start - 1] == close and r.model_mask[row, start - 1], row
            turn = tokenizer.decode(r.tokens[row, turn_start:start].tolist(), skip_special_tokens=False)
            code, call_end = find_call(turn, TOOLS)
            assert call_end == len(turn), (row, turn)  # the turn ended at its call
            calls.append((row, start, end, code))
            assert end == length or r.model_mask[row, end], row  # the model continues, or the budget is spent
            turn_start = end
        # a call in the last slot is run, but its output has no room left
        unseen = int(length == T3 and r.tokens[row, T3 - 1] == close and not tool[T3 - 1])
        assert len(spans(r.tool_mask[row])) + unseen == r.tool_calls[row], row
        if tool[length - 1]:
            assert length == T3 and not r.finished[row]
        # a model turn ends at its call: ")" is written only as the last token before a tool output (or the end)
        for t in np.flatnonzero((r.tokens[row] == close) & (r.model_mask[row] > 0)):
            assert t + 1 == length or tool[t + 1], row
    results = iter(run_python_tools([c for *_, c in calls if c is not None], timeout_s=TOOLS.timeout_s,
                                    max_output_chars=TOOLS.max_output_chars))
    texts = []
    for row, start, end, code in calls:
        output = next(results).output if code is not None else multiturn.NO_CODE_OUTPUT
        texts.append(render_result(output, TOOLS))
        expected = tokenizer(texts[-1], add_special_tokens=False)["input_ids"][:end - start]
        np.testing.assert_array_equal(r.tokens[row, start:end], expected, err_msg=f"row {row}: {texts[-1]!r}")
    # calls the sandbox ran (not only ones without code), with outputs that differ (errors, empty output)
    assert sum(code is not None for *_, code in calls) >= 3 and len(set(texts)) >= 2, texts

    # (c) the same trajectories on an 8-device mesh (rows over "data", through the model's mesh rules)
    sharded_model = build_model(model.config, mesh8)
    sharded = sample(sharded_model, jax.device_put(params, param_shardings(sharded_model, mesh8)), tokenizer, eos)
    for field in ("tokens", "completion_mask", "tool_mask", "finished", "tool_calls", "tool_errors",
                  "tool_over_budget", "rewards"):
        np.testing.assert_array_equal(getattr(sharded, field), getattr(r, field), err_msg=field)
    np.testing.assert_allclose(sharded.policy_logprobs, r.policy_logprobs, atol=1e-5, rtol=0)
    assert sharded.texts == r.texts
