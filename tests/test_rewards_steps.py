"""Step rewards for process supervision, and their placement on tokens."""

from fractions import Fraction

import numpy as np
import pytest

from grpo_jax.losses import process_advantages
from grpo_jax.models.char_tokenizer import ARITHMETIC_ALPHABET, build_char_tokenizer
from grpo_jax.rewards.steps import arithmetic_step_rewards, evaluate_expression
from grpo_jax.trainer.rollout import Rollout, step_arrays, token_end


@pytest.mark.parametrize("text, value", [
    ("2 + 3", Fraction(5)), ("7 - 10", Fraction(-3)), ("(1 + 2) * 4", Fraction(12)), ("1 / 3 + 1 / 6", Fraction(1, 2)),
    ("-4 * -2", Fraction(8)), ("0.5 * 4", Fraction(2)),
    ("1 / 0", None), ("2 ** 3", None), ("x + 1", None), ("__import__('os')", None), ("1" * 40, None), ("", None),
])
def test_evaluate_expression(text, value):
    assert evaluate_expression(text) == value


def test_arithmetic_step_rewards():
    text = "2 + 3 = 5\n5 * 2 = 11\nso the answer\n10 / 4 = 2.5"
    assert arithmetic_step_rewards([text, "12", ""]) == [[(9, 1.0), (20, 0.0), (47, 1.0)], [], []]
    with pytest.raises(TypeError, match="must be str"):
        arithmetic_step_rewards([3])


def test_steps_land_on_their_last_token():
    tok = build_char_tokenizer(ARITHMETIC_ALPHABET + "\n")
    text = "2 + 3 = 5\n5 * 2 = 11\n11"
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    assert token_end(tok, ids, 9) == 8 and token_end(tok, ids, 20) == 19 and token_end(tok, ids, 99) == len(ids) - 1
    t = len(ids) + 2
    tokens = np.zeros((2, t), np.int32)
    mask = np.zeros((2, t), np.int32)
    tokens[0, :len(ids)] = ids
    mask[0, :len(ids)] = 1
    tokens[1, :2] = [tok.convert_tokens_to_ids("7"), tok.eos_token_id]
    mask[1, :2] = 1
    r = Rollout([{"prompt": "p"}], np.zeros((1, 2), np.int32), np.ones((1, 2), np.int32), tokens, mask,
                np.zeros((2, t), np.float32), np.ones(2, bool), [text, "7"], np.array([0.0, 1.0], np.float32),
                {}, [])
    rewards, ends = step_arrays(tok, r, arithmetic_step_rewards(r.texts))
    # completion 0: two arithmetic steps, then its end with the outcome reward; completion 1: only its end
    np.testing.assert_array_equal(ends, [[8, 19, len(ids) - 1], [1, -1, -1]])
    np.testing.assert_array_equal(rewards, [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    adv = np.asarray(process_advantages(rewards, ends, mask, 2))
    # the group's four valid step rewards 1, 0, 0, 1 normalise to +-0.866; tokens sum the steps ending later
    z = 0.5 / np.std([1, 0, 0, 1], ddof=1)
    np.testing.assert_allclose(adv[0, :9], z - z - z, atol=1e-5)
    np.testing.assert_allclose(adv[0, 9:20], -2 * z, atol=1e-5)
    np.testing.assert_allclose(adv[1, :2], z, atol=1e-5)
    assert adv[0, len(ids):].tolist() == [0.0, 0.0]


def test_a_step_reward_that_is_not_a_finite_number_is_zero_and_warned(caplog):
    """A user's step reward returning NaN, Inf, a value beyond float32 or a non-number: that step gets 0 (as a
    failed outcome reward gets its default) with a warning naming it, and the advantages stay finite."""
    tok = build_char_tokenizer(ARITHMETIC_ALPHABET + "\n")
    ids = tok("1 = 1\n2 = 2\n3 = 3")["input_ids"] + [tok.eos_token_id]
    t = len(ids)
    tokens = np.array([ids, ids], np.int32)
    mask = np.ones((2, t), np.int32)
    r = Rollout([{"prompt": "p"}], np.zeros((1, 2), np.int32), np.ones((1, 2), np.int32), tokens, mask,
                np.zeros((2, t), np.float32), np.ones(2, bool), ["", ""], np.array([1.0, 0.0], np.float32), {}, [])
    steps = [[(5, float("nan")), (11, float("inf")), (17, 1e39)], [(5, "good"), (11, None), (17, 0.5)]]
    with caplog.at_level("WARNING", logger="grpo_jax.trainer.rollout"):
        rewards, ends = step_arrays(tok, r, steps)
    np.testing.assert_array_equal(rewards, [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.5, 0.0]])
    np.testing.assert_array_equal(ends, [[4, 10, 16, t - 1]] * 2)
    warned = [rec.getMessage() for rec in caplog.records]
    assert len(warned) == 5 and "step reward nan of step 0 of completion 0 is not a finite number" in warned[0]
    assert "step reward 'good' of step 0 of completion 1" in warned[3]
    assert np.isfinite(np.asarray(process_advantages(rewards, ends, mask, 2))).all()
