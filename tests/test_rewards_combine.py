"""grpo_jax.rewards.combine: weighted sums of reward functions, with failures isolated per completion."""

import functools
import logging

import numpy as np
import pytest

from grpo_jax.rewards import RewardFailure, RewardSpec, format_reward, math_reward, score

COMPLETIONS = [
    "<think>6*12</think><answer>72</answer>",
    "<think>guess</think><answer>71</answer>",
    "72",
    "no idea",
]
FIELDS = {"answer": ["72", "72", "#### 72", "72"]}


def length_reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def test_weighted_total_and_per_reward_arrays():
    specs = [RewardSpec(math_reward), RewardSpec(format_reward, weight=0.5)]
    total, per_reward, failures = score(specs, COMPLETIONS, FIELDS)
    assert failures == []
    assert set(per_reward) == {"math_reward", "format_reward"}
    np.testing.assert_array_equal(per_reward["math_reward"], [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(per_reward["format_reward"], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(total, [1.5, 0.5, 1.0, 0.0])
    assert total.dtype == np.float32 and total.shape == (4,)
    assert all(v.dtype == np.float32 for v in per_reward.values())


def test_negative_weights_and_names():
    specs = [RewardSpec(length_reward, weight=-0.1, name="brevity"), RewardSpec(format_reward, weight=2.0)]
    total, per_reward, _ = score(specs, ["ab", "<think></think><answer>1</answer>"], {})
    np.testing.assert_allclose(per_reward["brevity"], [2.0, 33.0])  # len("<think></think><answer>1</answer>")
    np.testing.assert_allclose(total, [-0.2, -3.3 + 2.0], rtol=1e-6)


def test_example_fields_arrive_as_keyword_lists():
    seen = {}

    def spy(completions, answer, level, **kwargs):
        seen.update(answer=answer, level=level, extra=kwargs)
        return [0.0] * len(completions)

    score([RewardSpec(spy)], ["a", "b"], {"answer": ["1", "2"], "level": (3, 4)})
    assert seen == {"answer": ["1", "2"], "level": [3, 4], "extra": {}}


def test_a_reward_raising_on_one_completion_costs_only_that_completion(caplog):
    calls = []

    def picky(completions, answer, **kwargs):
        calls.append(list(completions))
        if any("no idea" in c for c in completions):
            raise RuntimeError("cannot score 'no idea'")
        return [1.0 if a == "72" else 0.5 for a in answer]

    specs = [RewardSpec(picky, weight=2.0, default=-1.0), RewardSpec(format_reward)]
    with caplog.at_level(logging.WARNING, logger="grpo_jax.rewards.combine"):
        total, per_reward, failures = score(specs, COMPLETIONS, FIELDS)
    np.testing.assert_array_equal(per_reward["picky"], [1.0, 1.0, 0.5, -1.0])
    np.testing.assert_array_equal(total, [3.0, 3.0, 1.0, -2.0])
    assert calls == [COMPLETIONS] + [[c] for c in COMPLETIONS]  # the batch, then one call per completion
    assert failures == [RewardFailure("picky", 3, "RuntimeError(\"cannot score 'no idea'\")", "no idea")]
    assert any("'picky' failed on completion 3" in r.getMessage() for r in caplog.records)


def test_failure_keeps_the_first_500_characters_of_the_completion():
    def boom(completions, **kwargs):
        raise ValueError("bad")

    long_text = "x" * 499 + "yz" + "w" * 100
    _, per_reward, failures = score([RewardSpec(boom, default=0.25)], ["ok", long_text], {})
    np.testing.assert_array_equal(per_reward["boom"], [0.25, 0.25])
    assert [f.index for f in failures] == [0, 1]
    assert failures[1].completion == "x" * 499 + "y"
    assert failures[1].error == "ValueError('bad')"


def test_wrong_number_of_values_is_a_failure_for_each_completion():
    def two_too_many(completions, **kwargs):
        return [1.0] * (len(completions) + 2)

    total, per_reward, failures = score(
        [RewardSpec(two_too_many, default=0.0), RewardSpec(length_reward, name="len")], ["a", "bb"], {}
    )
    np.testing.assert_array_equal(per_reward["two_too_many"], [0.0, 0.0])
    np.testing.assert_array_equal(total, [1.0, 2.0])
    assert [(f.name, f.index) for f in failures] == [("two_too_many", 0), ("two_too_many", 1)]
    assert "returned 3 values for 1 completion; expected one per completion" in failures[0].error


def test_non_finite_and_non_numeric_values_fail_only_where_they_occur():
    def messy(completions, **kwargs):
        return [1.0, float("nan"), float("inf"), "high", np.float32(0.5), True, 1e300]

    _, per_reward, failures = score([RewardSpec(messy, default=-2.0)], list("abcdefg"), {})
    np.testing.assert_array_equal(per_reward["messy"], [1.0, -2.0, -2.0, -2.0, 0.5, 1.0, -2.0])
    assert [f.index for f in failures] == [1, 2, 3, 6]
    assert failures[0].error.startswith("InvalidRewardValue(")
    assert "returned nan; expected a finite number" in failures[0].error
    assert "returned inf" in failures[1].error
    assert "returned 'high'; expected a real number or None" in failures[2].error
    assert failures[2].completion == "d"


def test_none_means_not_applicable_and_is_not_a_failure():
    def only_math(completions, task, **kwargs):
        return [1.0 if t == "math" else None for t in task]

    _, per_reward, failures = score([RewardSpec(only_math, default=0.0)], ["a", "b"], {"task": ["math", "code"]})
    np.testing.assert_array_equal(per_reward["only_math"], [1.0, 0.0])
    assert failures == []


def test_a_scalar_return_is_a_failure():
    _, per_reward, failures = score([RewardSpec(lambda completions: 1.0, name="scalar")], ["a"], {})
    assert per_reward["scalar"].tolist() == [0.0]
    assert "returned a float; expected a list of 1 floats" in failures[0].error


def test_reward_spec_defaults_and_validation():
    spec = RewardSpec(math_reward)
    assert (spec.name, spec.weight, spec.default) == ("math_reward", 1.0, 0.0)
    assert RewardSpec(functools.partial(format_reward, strict=False)).name == "format_reward"
    assert type(RewardSpec(format_reward, weight=2).weight) is float
    with pytest.raises(ValueError, match="`weight` must be a finite number, got nan"):
        RewardSpec(format_reward, weight=float("nan"))
    with pytest.raises(ValueError, match="`default` must be a finite number, got inf"):
        RewardSpec(format_reward, default=float("inf"))
    with pytest.raises(TypeError, match="`fn` must be callable, got str"):
        RewardSpec("format_reward")
    with pytest.raises(ValueError, match="`name` must be a non-empty str"):
        RewardSpec(format_reward, name="")
    with pytest.raises(AttributeError):
        spec.weight = 2.0  # frozen


def test_score_argument_errors():
    with pytest.raises(ValueError, match="reward names must be unique, got 'format_reward'"):
        score([RewardSpec(format_reward), RewardSpec(format_reward, weight=0.1)], ["a"], {})
    with pytest.raises(ValueError, match="reward names must be unique, got '<lambda>'"):
        score([RewardSpec(lambda c: [0.0]), RewardSpec(lambda c: [1.0])], ["a"], {})
    with pytest.raises(ValueError, match="at least one RewardSpec"):
        score([], ["a"], {})
    with pytest.raises(TypeError, match="must contain RewardSpecs, got function"):
        score([format_reward], ["a"], {})
    with pytest.raises(ValueError, match=r"field 'answer' must have one value per completion \(2\), got 1 values"):
        score([RewardSpec(format_reward)], ["a", "b"], {"answer": ["1"]})
    with pytest.raises(TypeError, match="completion 1 must be a str"):
        score([RewardSpec(format_reward)], ["a", None], {})
    with pytest.raises(ValueError, match=r"field 'answer' must have one value per completion \(1\), got a str"):
        score([RewardSpec(format_reward)], ["a"], {"answer": "7"})


def test_empty_batch():
    total, per_reward, failures = score([RewardSpec(format_reward)], [], {"answer": []})
    assert total.shape == (0,) and per_reward["format_reward"].shape == (0,) and failures == []


def test_review_fix_total_overflow_is_an_error():
    from grpo_jax.rewards import RewardSpec, score

    def huge(completions, **kwargs):
        return [3e38] * len(completions)

    with pytest.raises(ValueError, match="weighted total overflows float32"):
        score([RewardSpec(huge, weight=2.0)], ["a"], {})
