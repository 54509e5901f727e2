"""Host-side pieces of the trainer: splits, reward registry, prompt encoding, batch layout, group selection,
majority voting, the optimizer schedule, the sampler-vs-trainer log-prob gap."""

import numpy as np
import pytest

from grpo_jax.data.example import prompt_text
from grpo_jax.models.char_tokenizer import ARITHMETIC_ALPHABET, build_char_tokenizer
from grpo_jax.rewards import RewardFailure
from grpo_jax.trainer.config import DataConfig, GRPOConfig, OptimizerConfig
from grpo_jax.trainer.evaluation import majority_correct
from grpo_jax.trainer.loop import logprob_gap, logprob_gap_sums
from grpo_jax.trainer.rollout import Rollout, encode_prompts, informative_groups, select_groups, sequence_batch
from grpo_jax.trainer.state import learning_rate_schedule
from grpo_jax.trainer.tasks import load_examples, reward_specs, train_eval_split


def test_prompt_split_never_trains_on_an_eval_prompt():
    data = DataConfig(difficulty=1, num_examples=3000, eval_examples=30)
    train, evals = train_eval_split(data, load_examples(data))
    eval_prompts = {prompt_text(e["prompt"]) for e in evals}
    assert len(evals) == 30 and len(eval_prompts) == 30
    assert not eval_prompts & {prompt_text(e["prompt"]) for e in train}
    assert len(train) < 3000 - 30  # every copy of an eval prompt left training
    again = train_eval_split(data, load_examples(data))[1]
    assert [e["prompt"] for e in again] == [e["prompt"] for e in evals]


def test_example_split_holds_out_exactly_n_examples():
    data = DataConfig(difficulty=1, num_examples=3000, eval_examples=100, eval_split="examples")
    train, evals = train_eval_split(data, load_examples(data))
    assert (len(train), len(evals)) == (2900, 100)
    assert not set(train.indices) & set(evals.indices)


def test_split_errors():
    data = DataConfig(difficulty=0, num_examples=500, eval_examples=100)
    with pytest.raises(ValueError, match="only 97 distinct prompts"):
        train_eval_split(data, load_examples(data))


def test_rewards_must_find_their_fields():
    from grpo_jax.trainer import ConfigError, TrainConfig, apply_overrides, build_context

    config = apply_overrides(TrainConfig(), ["data.task=humaneval", "grpo.rewards=math", "eval_examples=4"])
    with pytest.raises(ConfigError, match=r"'math', which reads the example field\(s\) \['answer'\]"):
        build_context(config, "/tmp/unused")


def test_reward_specs_follow_the_config():
    specs = reward_specs(GRPOConfig(rewards=("math", "format"), reward_weights=(1.0, 0.25)))
    assert [(s.name, s.weight) for s in specs] == [("math", 1.0), ("format", 0.25)]
    assert specs[0].fn(["#### 7", "8"], answer=["7", "7"]) == [1.0, 0.0]


def test_own_rewards_are_imported_by_module_path():
    from grpo_jax.trainer import ConfigError

    specs = reward_specs(GRPOConfig(rewards=("math", "grpo_jax.rewards.format:format_reward")))
    assert specs[1].name == "grpo_jax.rewards.format:format_reward"
    assert specs[1].fn(["<think>a</think><answer>1</answer>", "1"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        reward_specs(GRPOConfig(rewards=("no_such_module:fn",)))
    with pytest.raises(ConfigError, match="module 'grpo_jax.rewards' has no function 'nothing'"):
        reward_specs(GRPOConfig(rewards=("grpo_jax.rewards:nothing",)))
    with pytest.raises(ConfigError, match="'module:function' import paths"):
        GRPOConfig(rewards=("not a path",))


def test_prompts_are_left_padded_to_a_bucket():
    tok = build_char_tokenizer(ARITHMETIC_ALPHABET)
    ids, mask = encode_prompts(tok, ["1 + 2 = ?", "10 + 20 = ?"], buckets=(8, 16), pad_id=0, add_special_tokens=False)
    assert ids.shape == (2, 16)
    assert mask.sum(axis=1).tolist() == [9, 11] and (mask[:, -1] == 1).all() and (mask[0, :7] == 0).all()
    assert tok.decode(ids[0][mask[0] == 1]) == "1 + 2 = ?"


def _rollout(rewards, prompt_len=2, g=2, t=3, tag=0):
    b = len(rewards) // g
    return Rollout(
        examples=[{"prompt": f"p{tag}{i}"} for i in range(b)],
        prompt_ids=np.full((b, prompt_len), 5 + tag, np.int32), prompt_mask=np.ones((b, prompt_len), np.int32),
        tokens=np.arange(b * g * t, dtype=np.int32).reshape(b * g, t) + 100 * tag,
        completion_mask=np.tile(np.array([1, 1, 0], np.int32), (b * g, 1)),
        policy_logprobs=np.zeros((b * g, t), np.float32), finished=np.array([True, False] * b),
        texts=[f"c{tag}{i}" for i in range(b * g)], rewards=np.asarray(rewards, np.float32),
        per_reward={"math": np.asarray(rewards, np.float32)}, failures=[RewardFailure("math", 0, "e", "c")],
    )


def test_sequence_batch_layout():
    r = _rollout([1, 0, 1, 1])
    batch = sequence_batch(r, mask_truncated=True)
    assert batch["input_ids"].shape == (4, 5)
    np.testing.assert_array_equal(batch["input_ids"][1], [5, 5, 3, 4, 5])  # prompt of group 0, completion 1
    np.testing.assert_array_equal(batch["attention_mask"][1], [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(batch["completion_mask"][:, 0], [1, 0, 1, 0])  # truncated rows masked


def test_dynamic_sampling_group_selection():
    assert informative_groups(np.array([1, 0, 1, 1, 0, 0]), 2).tolist() == [True, False, False]
    first, second = _rollout([1, 0, 1, 1], tag=0), _rollout([0, 1, 0, 0], prompt_len=4, tag=1)
    chosen = select_groups([first, second], [(0, 0), (1, 0)], pad_id=0)
    assert [e["prompt"] for e in chosen.examples] == ["p00", "p10"]
    assert chosen.prompt_ids.shape == (2, 4)
    np.testing.assert_array_equal(chosen.prompt_mask[0], [0, 0, 1, 1])  # re-padded on the left
    assert chosen.texts == ["c00", "c01", "c10", "c11"] and chosen.rewards.tolist() == [1, 0, 0, 1]
    np.testing.assert_array_equal(chosen.tokens[2], second.tokens[0])


def test_logprob_gap_counts_only_completion_tokens():
    # 2 rows x 4 tokens; row 0 ends after 3 tokens, row 1 after 1: past the end the sampler wrote 0 and the
    # training forward holds whatever the padding scores, far off
    sampler = np.array([[-1.0, -2.0, -0.5, 0.0], [-3.0, 0.0, 0.0, 0.0]], np.float32)
    trainer = np.array([[-1.25, -2.0, -0.625, -40.0], [-2.5, -30.0, -7.0, -9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.int32)
    expected = {"rollout/logprob_diff_mean": (0.25 + 0.0 + 0.125 + 0.5) / 4, "rollout/logprob_diff_max": 0.5}
    assert logprob_gap([logprob_gap_sums(sampler, trainer, mask)]) == pytest.approx(expected, abs=1e-7)
    # minibatches (here: one row each) add up to the whole batch's
    halves = [logprob_gap_sums(sampler[i:i + 1], trainer[i:i + 1], mask[i:i + 1]) for i in range(2)]
    assert logprob_gap(halves) == pytest.approx(expected, abs=1e-7)
    assert logprob_gap([logprob_gap_sums(sampler, trainer, np.zeros_like(mask))]) == {
        "rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0}


def test_majority_vote():
    assert majority_correct(["#### 4", "#### 5", "#### 4"], np.array([True, False, True]))
    assert not majority_correct(["#### 5", "#### 4", "#### 5"], np.array([False, True, False]))
    assert not majority_correct(["no answer", "none"], np.array([False, False]))
    assert majority_correct(["#### 4", "#### 5"], np.array([True, False]))  # a tie goes to the first seen
    # equivalent answers are one vote: three right ones ("18", "18.00", "$18") beat two "17"s
    texts = ["#### 18.00", "#### 18", "#### 17", "#### 17", "#### $18"]
    assert majority_correct(texts, np.array([True, True, False, False, True]))


def test_schedules():
    constant = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=4), 10)
    assert [float(constant(s)) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    cosine = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, lr_scheduler_type="cosine"), 10)
    assert float(cosine(0)) == 1.0 and float(cosine(5)) == pytest.approx(0.5) and float(cosine(10)) == 0.0
    linear = learning_rate_schedule(OptimizerConfig(learning_rate=2.0, lr_scheduler_type="linear", warmup_steps=2), 6)
    assert [float(linear(s)) for s in (1, 2, 4, 6)] == [1.0, 2.0, 1.0, 0.0]
