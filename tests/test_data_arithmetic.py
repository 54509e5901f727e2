"""grpo_jax.data.arithmetic and grpo_jax.data.example: correct answers, determinism, difficulty."""

import re
from fractions import Fraction

import pytest

from grpo_jax.data.arithmetic import ArithmeticConfig, ArithmeticTask, arithmetic_example
from grpo_jax.data.example import prompt_text, user_prompt, validate_example


def independent_value(expression: str) -> Fraction:
    # Python's own parser and precedence, with exact rational arithmetic.
    return eval(re.sub(r"(\d+)", r"Fraction(\1)", expression), {"Fraction": Fraction})


@pytest.mark.parametrize("level", range(7))
def test_answers_are_correct_at_every_difficulty(level):
    config = ArithmeticConfig.from_difficulty(level)
    for ex in ArithmeticTask(300, seed=level, config=config):
        value = independent_value(ex["expression"])
        assert value.denominator == 1, ex
        assert ex["answer"] == ex["final_answer"] == str(int(value)), ex
        assert ex["prompt"] == f"{ex['expression']} = ?"
        assert config.min_operands <= ex["num_operands"] <= config.max_operands
        operands = [int(x) for x in re.findall(r"\d+", ex["expression"])]
        assert all(config.min_operand <= x <= config.max_operand for x in operands), ex
        if not config.allow_negative:
            assert int(ex["answer"]) >= 0
        validate_example(ex, required=["answer"])


def test_level_zero_is_single_digit_addition():
    for ex in ArithmeticTask(200, seed=0):
        a, op, b = ex["expression"].split()
        assert op == "+" and 0 <= int(a) <= 9 and 0 <= int(b) <= 9
        assert int(ex["answer"]) == int(a) + int(b)


def test_example_is_a_pure_function_of_seed_and_index():
    config = ArithmeticConfig.from_difficulty(5)
    first = [arithmetic_example(i, seed=7, config=config) for i in range(50)]
    # Out of order, from a fresh task object: identical.
    task = ArithmeticTask(50, seed=7, config=config)
    assert [task[i] for i in reversed(range(50))] == first[::-1]
    assert task[-1] == first[-1] and task[10:13] == first[10:13]
    other_seed = [arithmetic_example(i, seed=8, config=config) for i in range(50)]
    assert sum(a["expression"] != b["expression"] for a, b in zip(first, other_seed, strict=True)) > 40
    # Pinned values: the generator must not drift between versions (resume across upgrades).
    assert [arithmetic_example(i, seed=0)["prompt"] for i in range(3)] == ["7 + 7 = ?", "2 + 8 = ?", "6 + 5 = ?"]
    hard = ArithmeticConfig.from_difficulty(5)
    assert [arithmetic_example(i, seed=0, config=hard)["expression"] for i in range(3)] == [
        "124 - 58 * 878 * 874", "185 * 917", "334 + 878 / 2"]


def test_difficulty_changes_the_problems():
    easy = ArithmeticTask(200, seed=1, config=ArithmeticConfig.from_difficulty(0))
    hard = ArithmeticTask(200, seed=1, config=ArithmeticConfig.from_difficulty(5))
    assert max(int(e["answer"]) for e in easy) <= 18
    assert max(abs(int(e["answer"])) for e in hard) > 1000
    assert {op for e in hard for op in re.findall(r" ([-+*/]) ", e["expression"])} == {"+", "-", "*", "/"}
    assert max(e["num_operands"] for e in hard) == 4
    assert sum(len(e["prompt"]) for e in hard) > 1.5 * sum(len(e["prompt"]) for e in easy)


def test_division_is_always_exact():
    config = ArithmeticConfig(operators=("/",), min_operand=1, max_operand=50, max_operands=3)
    for ex in ArithmeticTask(200, seed=3, config=config):
        assert independent_value(ex["expression"]).denominator == 1


def test_custom_template():
    ex = arithmetic_example(0, config=ArithmeticConfig(template="Q: {expression}\nA:"))
    assert ex["prompt"] == f"Q: {ex['expression']}\nA:"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_operands=1), "`min_operands` must be >= 2, got 1"),
        (dict(max_operands=1), "`max_operands` (1) must be >= `min_operands` (2)"),
        (dict(operators=("^",)), "unknown operator(s) ['^']"),
        (dict(operators=()), "`operators` is empty"),
        (dict(min_operand=-1), "`min_operand` must be >= 0"),
        (dict(template="no placeholder"), "must contain '{expression}'"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as info:
        ArithmeticConfig(**kwargs)
    assert message in str(info.value)


def test_task_bounds():
    with pytest.raises(IndexError, match="out of range for size 3"):
        ArithmeticTask(3)[3]
    with pytest.raises(ValueError, match="`size` must be an int >= 1"):
        ArithmeticTask(0)


def test_validate_example_errors():
    validate_example({"prompt": user_prompt("hi", system="be brief"), "answer": "1"}, required=["answer"])
    with pytest.raises(ValueError, match="f.jsonl:3: missing key 'prompt'"):
        validate_example({"question": "x"}, where="f.jsonl:3")
    with pytest.raises(ValueError, match=r"missing reference field\(s\) \['answer'\]"):
        validate_example({"prompt": "x"}, required=["answer"])
    with pytest.raises(ValueError, match="empty string"):
        validate_example({"prompt": "  "})
    with pytest.raises(ValueError, match=r"`prompt\[0\]\['role'\]` is 'robot'"):
        validate_example({"prompt": [{"role": "robot", "content": "x"}]})
    with pytest.raises(TypeError, match="must be a str or a list of chat messages, got int"):
        validate_example({"prompt": 3})
    with pytest.raises(TypeError, match="an example must be a dict"):
        validate_example(["prompt"])
    assert prompt_text(user_prompt("b", system="a")) == "a\nb"


def test_products_task_operands_answers_and_determinism():
    from grpo_jax.data import ProductsTask, products_example

    task = ProductsTask(400, seed=3, template="What is {expression}?")
    digits = set()
    for example in task:
        a, b = (int(x) for x in example["expression"].split(" * "))
        digits |= {len(str(a)), len(str(b))}
        assert example["answer"] == example["final_answer"] == str(a * b)
        assert example["prompt"] == f"What is {a} * {b}?" and example["tool_code"] == example["expression"]
    assert digits == {4, 5, 6}
    assert task[7] == products_example(7, seed=3, template="What is {expression}?")
    assert products_example(7, seed=4) != products_example(7, seed=3)
    with pytest.raises(ValueError, match="template"):
        ProductsTask(3, template="no expression")
