"""grpo_jax.rewards.format: DeepSeek-R1's <think>/<answer> format and DAPO's soft overlong penalty."""

import numpy as np
import pytest

from grpo_jax.rewards import format_reward, overlong_penalty

GOOD = "<think>\nadd 3 and 4\n</think>\n<answer>\n7\n</answer>"


@pytest.mark.parametrize(
    "completion",
    [
        GOOD,
        "<think>add</think><answer>7</answer>",
        "  \n<think>multi\nline\nreasoning</think>  \n\n<answer>7</answer>\n",
        "<think></think><answer>7</answer>",
    ],
)
def test_strict_accepts_exactly_think_then_answer(completion):
    assert format_reward([completion]) == [1.0]
    assert format_reward([completion], strict=False) == [1.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>7</answer>",  # no think block
        "<think>add</think>",  # no answer block
        "<think>add</think><answer>7",  # answer never closed
        "<answer>7</answer><think>add</think>",  # wrong order
        "<think>a</think><think>b</think><answer>7</answer>",  # think twice
        "<think>a</think><answer>7</answer><answer>8</answer>",  # answer twice
        "<think>a <answer>6</answer></think><answer>7</answer>",  # answer tag inside think
        "Sure! <think>add</think><answer>7</answer>",  # text before
        "<think>add</think><answer>7</answer> Hope that helps.",  # text after
        "<think>add</think> so: <answer>7</answer>",  # text between
        "7",
        "",
    ],
)
def test_strict_rejects(completion):
    assert format_reward([completion]) == [0.0]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Sure! <think>add</think> so <answer>7</answer> Hope that helps.", 1.0),
        ("<think>a</think><think>b</think><answer>7</answer><answer>8</answer>", 1.0),
        ("<answer>1</answer><think>a</think>\n\nthen\n<answer>7</answer>", 1.0),
        ("<answer>7</answer><think>add</think>", 0.0),
        ("<think>add</think>", 0.0),
        ("<answer>7</answer>", 0.0),
        ("<think>add<answer>7</answer>", 0.0),
    ],
)
def test_lenient(completion, expected):
    assert format_reward([completion], strict=False) == [expected]


def test_format_reward_batch_ignores_extra_fields_and_checks_types():
    assert format_reward([GOOD, "7", GOOD], answer=["7"] * 3, prompts=None) == [1.0, 0.0, 1.0]
    assert format_reward([]) == []
    with pytest.raises(TypeError, match="completion 1 must be a str, got NoneType"):
        format_reward([GOOD, None])


def test_overlong_penalty_boundaries():
    # L_max = 100, L_cache = 20: free up to 80, linear to -1 at 100, -1 beyond.
    lengths = [0, 79, 80, 81, 90, 99, 100, 101, 10_000]
    expected = [0.0, 0.0, 0.0, -0.05, -0.5, -0.95, -1.0, -1.0, -1.0]
    np.testing.assert_allclose(overlong_penalty(lengths, max_length=100, cache_length=20), expected, atol=1e-12)
    got = overlong_penalty(np.array([80, 90], np.int32), max_length=100, cache_length=20)
    assert isinstance(got, list) and all(type(x) is float for x in got)
    assert got == [0.0, -0.5]


def test_overlong_penalty_cache_equal_to_max_length_penalises_from_the_first_token():
    got = overlong_penalty([0, 1, 2, 4, 5], max_length=4, cache_length=4)
    np.testing.assert_allclose(got, [0, -0.25, -0.5, -1, -1])


def test_overlong_penalty_dapo_setting():
    # DAPO: L_max 20480, L_cache 4096.
    got = overlong_penalty([16384, 18432, 20480, 20481], max_length=20480, cache_length=4096)
    np.testing.assert_allclose(got, [0.0, -0.5, -1.0, -1.0])
    assert overlong_penalty([], max_length=10, cache_length=5) == []


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(max_length=100, cache_length=0), ValueError, r"`cache_length` must be > 0, got 0"),
        (dict(max_length=100, cache_length=101), ValueError, r"`cache_length` must be in \(0, max_length=100\], got 1"),
        (dict(max_length=0, cache_length=1), ValueError, r"`max_length` must be > 0, got 0"),
        (dict(max_length=100.0, cache_length=10), TypeError, r"`max_length` must be an int, got 100.0"),
        (dict(max_length=100, cache_length=True), TypeError, r"`cache_length` must be an int, got True"),
    ],
)
def test_overlong_penalty_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        overlong_penalty([1], **kwargs)


def test_overlong_penalty_length_errors():
    with pytest.raises(ValueError, match=r"`completion_lengths` must be >= 0, got -1"):
        overlong_penalty([5, -1], max_length=10, cache_length=5)
    with pytest.raises(TypeError, match=r"1-D sequence of ints, got shape \(2,\) and dtype float64"):
        overlong_penalty([5.0, 1.5], max_length=10, cache_length=5)
    with pytest.raises(TypeError, match=r"got shape \(1, 2\)"):
        overlong_penalty([[5, 1]], max_length=10, cache_length=5)


def test_review_fixes_empty_answer_and_str_input():
    from grpo_jax.rewards import format_reward

    assert format_reward(["<think>a</think><answer> </answer>", "<think>a</think><answer>1</answer>"]) == [0.0, 1.0]
    with pytest.raises(TypeError, match="must be a list of str, got one str"):
        format_reward("<think>a</think><answer>1</answer>")


def test_lenient_layout_is_the_regex_it_replaced_and_linear():
    """Lenient mode once was the regex <think>.*?</think>.*?<answer>.*?</answer> (DOTALL), cubic on repeated tag
    pairs (800 pairs and an open <answer>: 23 s). Every arrangement of up to five tags and filler agrees with it."""
    import itertools
    import re
    import time

    old = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
    pieces = ("<think>", "</think>", "<answer>", "</answer>", "x")
    for n in range(6):
        for parts in itertools.product(pieces, repeat=n):
            text = " ".join(parts)
            assert format_reward([text], strict=False) == [float(old.search(text) is not None)], text
    start = time.perf_counter()
    assert format_reward(["<think></think>" * 800 + "<answer>"], strict=False) == [0.0]
    assert time.perf_counter() - start < 1.0

