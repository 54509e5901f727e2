"""grpo_jax.data.jsonl and grpo_jax.data.humaneval on fixture files the tests write (nothing downloads)."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo_jax.data.example import validate_example
from grpo_jax.data.humaneval import load_humaneval
from grpo_jax.data.jsonl import (
    DataFormatError,
    gsm8k_final_answer,
    last_boxed,
    load_gsm8k_jsonl,
    load_math,
)

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A farm sells 1,200 eggs a day for 10 days. How many eggs?",
     "answer": "1,200 * 10 = <<1200*10=12000>>12,000 eggs.\n#### 12,000"},
    {"question": "It is 5 degrees and drops 8. What is the temperature?",
     "answer": "5 - 8 = <<5-8=-3>>-3\n#### -3"},
]


def write_jsonl(path, records, blank_lines=False):
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in records]
    if blank_lines:
        lines.insert(1, "   ")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gsm8k_jsonl(tmp_path):
    examples = load_gsm8k_jsonl(write_jsonl(tmp_path / "train.jsonl", GSM8K, blank_lines=True))
    assert [e["final_answer"] for e in examples] == ["7", "12000", "-3"]
    assert [e["prompt"] for e in examples] == [r["question"] for r in GSM8K]
    assert [e["answer"] for e in examples] == [r["answer"] for r in GSM8K]  # full solution kept
    for e in examples:
        validate_example(e, required=["answer", "final_answer", "question"])


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in GSM8K).encode())
    assert [e["final_answer"] for e in load_gsm8k_jsonl(path)] == ["7", "12000", "-3"]


def test_gsm8k_gzipped(tmp_path):
    path = tmp_path / "test.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in GSM8K))
    assert [e["final_answer"] for e in load_gsm8k_jsonl(path)] == ["7", "12000", "-3"]


def test_gsm8k_final_answer():
    assert gsm8k_final_answer("a #### 1,234,567") == "1234567"
    assert gsm8k_final_answer("x\n#### 2.5 \n") == "2.5"
    assert gsm8k_final_answer("no marker 5") is None
    assert gsm8k_final_answer("#### ") is None


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"question": "q", "answer": "no final"', "line 2: invalid JSON"),
        ('[1, 2]', "line 2: expected a JSON object, got list"),
        ('{"question": "q"}', "line 2: missing field 'answer'"),
        ('{"question": 3, "answer": "#### 3"}', "line 2: field 'question' must be a string, got int"),
        ('{"question": "q", "answer": "it is 4"}', "line 2: GSM8K 'answer' does not end with '#### <number>'"),
    ],
)
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GSM8K[0], bad, GSM8K[1]])
    with pytest.raises(DataFormatError) as info:
        load_gsm8k_jsonl(path)
    assert f"{path}, {message}" in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_gsm8k_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{5}$", "5"),
        (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"first \boxed{1}, finally \boxed{\sqrt{x^{2}+1}}.", r"\sqrt{x^{2}+1}"),
        (r"\boxed{\left\{ 1, 2 \right\}}", r"\left\{ 1, 2 \right\}"),
        (r"\fbox{a{b}c}", "a{b}c"),
        (r"The answer is $\boxed 7$.", "7"),
        (r"\boxed{3", None),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


MATH = [
    {"problem": "What is $1/2 + 1/4$?", "solution": r"We get $\boxed{\frac{3}{4}}$.", "level": "Level 1",
     "type": "Prealgebra"},
    {"problem": "Solve $x^2=4$, $x>0$.", "solution": r"Here $\boxed{x}$ is \boxed{2}.", "answer": "2"},
    {"problem": "Nested?", "solution": r"So $\boxed{\dfrac{\sqrt{3}}{2}}$."},
]


def test_math_jsonl(tmp_path):
    examples = load_math(write_jsonl(tmp_path / "math.jsonl", MATH))
    assert [e["final_answer"] for e in examples] == [r"\frac{3}{4}", "2", r"\dfrac{\sqrt{3}}{2}"]
    assert [e["answer"] for e in examples] == [e["final_answer"] for e in examples]
    assert examples[0]["level"] == "Level 1" and examples[0]["type"] == "Prealgebra"
    assert examples[2]["solution"] == MATH[2]["solution"] and examples[2]["prompt"] == "Nested?"


def test_math_parquet(tmp_path):
    path = tmp_path / "math.parquet"
    rows = [dict(r, answer=r.get("answer")) for r in MATH]  # parquet: one schema, null where absent
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert [e["final_answer"] for e in load_math(path)] == [r"\frac{3}{4}", "2", r"\dfrac{\sqrt{3}}{2}"]


def test_math_parquet_error_names_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "p", "solution": "s \\boxed{1}"},
                                         {"problem": "q", "solution": "no box"}]), path)
    with pytest.raises(DataFormatError, match=r"bad\.parquet, row 1: no 'answer' field and no balanced"):
        load_math(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"problem": "p", "solution": r"unbalanced \boxed{\frac{1}{2}"}, "line 2: no 'answer' field and no balanced"),
        ({"solution": r"\boxed{1}"}, "line 2: missing field 'problem'"),
        ({"problem": "p"}, "line 2: record has neither 'answer' nor 'solution'"),
    ],
)
def test_math_malformed_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "m.jsonl", [MATH[0], bad])
    with pytest.raises(DataFormatError) as info:
        load_math(path)
    assert f"{path}, {message}" in str(info.value)


# ------------------------------------------------------------------------------------------ HumanEval

def test_humaneval_from_the_package():
    examples = load_humaneval()
    assert len(examples) == 164
    assert len({e["task_id"] for e in examples}) == 164
    first = examples[0]
    assert first["task_id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    for e in examples:
        validate_example(e, required=["tests", "entry_point", "test_setup"])
        assert "def check(candidate)" in e["tests"]
        assert e["test_setup"] == e["prompt"]
        assert f"def {e['entry_point']}(" in e["prompt"]
        assert e["canonical_solution"]


FIXTURE = [
    {"task_id": "Fixture/0", "entry_point": "add",
     "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n",
     "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"},
    {"task_id": "Fixture/1", "entry_point": "double_all",
     "prompt": "def _twice(x):\n    return 2 * x\n\n\n"
               "def double_all(xs: list) -> list:\n    \"\"\"Double each.\"\"\"\n",
     "canonical_solution": "    return [_twice(x) for x in xs]\n",
     "test": "def check(candidate):\n    assert candidate([1, 2]) == [_twice(1), _twice(2)]\n"},
]


def test_humaneval_from_a_fixture_file(tmp_path):
    examples = load_humaneval(write_jsonl(tmp_path / "he.jsonl", FIXTURE))
    assert [e["task_id"] for e in examples] == ["Fixture/0", "Fixture/1"]
    assert examples[1]["tests"] == FIXTURE[1]["test"]
    assert examples[1]["entry_point"] == "double_all"
    assert examples[1]["test_setup"] == FIXTURE[1]["prompt"]  # holds _twice, which the check calls
    # The fields compose into a working program (trusted fixture code, so exec here is fine).
    for e in examples:
        namespace = {}
        exec(e["test_setup"] + e["canonical_solution"] + "\n" + e["tests"], namespace)
        namespace["check"](namespace[e["entry_point"]])


def test_humaneval_malformed_fixture(tmp_path):
    bad = {k: v for k, v in FIXTURE[1].items() if k != "entry_point"}
    path = write_jsonl(tmp_path / "he.jsonl", [FIXTURE[0], bad])
    with pytest.raises(DataFormatError,
                       match=r"he\.jsonl, line 2: HumanEval problem lacks field\(s\) \['entry_point'\]"):
        load_humaneval(path)
    path = write_jsonl(tmp_path / "dup.jsonl", [FIXTURE[0], FIXTURE[0]])
    with pytest.raises(DataFormatError, match=r"dup\.jsonl, line 2: duplicate task_id 'Fixture/0' \(first at line 1\)"):
        load_humaneval(path)


def test_review_fixes_boxed_backslashes_and_gsm8k_numbers():
    from grpo_jax.data import gsm8k_final_answer, last_boxed

    assert last_boxed(r"\boxed{a\\}") == "a\\\\"
    assert last_boxed(r"so \boxed{\{1, 2\}}.") == r"\{1, 2\}"
    assert [gsm8k_final_answer(s) for s in ["#### 1,234", "#### -5", "#### 3.50", "#### 5\nmore text"]] == [
        "1234", "-5", "3.50", "5"]
    assert gsm8k_final_answer("#### abc") is None and gsm8k_final_answer("#### $1000") is None
