"""grpo_jax.rewards.math: answer extraction, math-verify equivalence, timeouts in and out of the main thread."""

import logging
import subprocess
import sys
import threading
import time

import pytest

from grpo_jax.rewards import extract_answer, math_reward, reference_answer
from grpo_jax.rewards.math import _call_with_deadline, _DeadlineExceeded


def _in_thread(fn):
    """fn() run in a fresh non-main thread; its result, or re-raise its exception."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    worker = threading.Thread(target=target)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "worker thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("She has 3 + 4 = 7 apples.\n#### 72", "gsm8k", "72"),
        ("#### 5\nmore work\n#### 1,234 \nfooter", "gsm8k", "1,234"),
        ("#### 72.", "gsm8k", "72"),
        ("no marker 12", "gsm8k", None),
        ("####   \n", "gsm8k", None),
        (r"first \boxed{1} then \boxed{2}", "boxed", "2"),
        (r"\boxed{\frac{1}{2}}", "boxed", r"\frac{1}{2}"),
        (r"so \boxed{\frac{\sqrt{3}}{2}} done", "boxed", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\{1, 2\}}", "boxed", r"\{1, 2\}"),
        (r"\boxed{3} then a truncated \boxed{\frac{1}{", "boxed", "3"),
        (r"\boxed{}", "boxed", None),
        ("<answer>7</answer> then <answer> 8 </answer>", "answer_tag", "8"),
        ("<think>a</think>\n<answer>\nx + 1\n</answer>", "answer_tag", "x + 1"),
        ("<answer>unterminated", "answer_tag", None),
        ("I had 3 apples and ate 2, leaving 1.", "last_number", "1"),
        ("it costs -4.25 dollars", "last_number", "-4.25"),
        ("a total of 1,234,567 people", "last_number", "1234567"),
        ("take 3/4 of the cake", "last_number", "3/4"),
        ("5-3 is two", "last_number", "3"),
        ("about .5 of them", "last_number", ".5"),
        ("variables x2 and y3 only", "last_number", None),
    ],
)
def test_extract_answer_each_kind(text, kind, expected):
    assert extract_answer(text, order=(kind,)) == expected


def test_extract_answer_default_order_prefers_tag_then_gsm8k_then_boxed_then_number():
    everything = r"<answer>3</answer> \boxed{2} 9" + "\n#### 1"
    assert extract_answer(everything) == "3"
    assert extract_answer(r"\boxed{2} 9" + "\n#### 1") == "1"
    assert extract_answer(r"\boxed{2} 9") == "2"
    assert extract_answer("just 9 here") == "9"
    assert extract_answer("no answer at all") is None


def test_headings_reasoning_and_unicode_minus_do_not_decide_the_answer():
    """Found by a review: a markdown heading "#### ..." was read as the answer, a \\boxed{} inside the reasoning
    beat the <answer> tag, and a sign error written with U+2212 scored 1.0."""
    right = [("#### Final Answer\nThe answer is \\boxed{7}.", "7"),
             ("The answer is \\boxed{7}.\n\n#### Verification", "7"),
             ("<think>#### Step 1\n3+4=7</think> <answer>7</answer>", "7"),
             ("<think>Maybe \\boxed{5}? No.</think> <answer>7</answer>", "7"),
             ("The answer is \u22123", "-3"), ("The answer is \u20133", "-3"), ("pages 5\u20137, so 7", "7"),
             ("#### 1,234", "1234")]
    wrong = [("The answer is \u22123", "3"), ("#### x+1", "1")]
    cases = right + wrong
    assert math_reward([c for c, _ in cases], answer=[a for _, a in cases]) == [1.0] * len(right) + [0.0] * len(wrong)
    assert extract_answer("#### Step 1\n#### 5") == "5" and extract_answer("#### Final Answer") is None


PROSE_TAIL = """
import time
from grpo_jax.rewards.math import math_reward
text = "<answer>So the total number of paperclips that Natalia eventually sold altogether during April and May " \\
       "together in the end comes out to 72 (clips)</answer>"
start = time.perf_counter()
print(math_reward([text], answer=["72"]), time.perf_counter() - start < 5)
"""


def test_prose_followed_by_a_symbol_is_scored_fast():
    """A prose answer of 20 words and then "(" made the prose check's regex backtrack exponentially (minutes, in
    C with the GIL held: no deadline could stop it, and every other thread stopped too). In a child process, so
    that a regression fails at the limit rather than hanging the suite."""
    child = subprocess.run([sys.executable, "-c", PROSE_TAIL], capture_output=True, text=True, timeout=120)
    assert child.stdout.split() == ["[0.0]", "True"], child.stderr[-2000:]


def test_extract_answer_custom_order():
    text = r"<answer>3</answer> \boxed{2} 9"
    assert extract_answer(text, order=("answer_tag", "boxed")) == "3"
    assert extract_answer(text, order=("last_number",)) == "9"
    assert extract_answer("<answer></answer> 4", order=("answer_tag", "last_number")) == "4"


def test_extract_answer_rejects_unknown_kinds_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"'latex'.*'gsm8k', 'boxed', 'answer_tag', 'last_number'"):
        extract_answer("1", order=("boxed", "latex"))
    with pytest.raises(TypeError, match="sequence of answer kinds"):
        extract_answer("1", order="boxed")
    with pytest.raises(ValueError, match="at least one"):
        extract_answer("1", order=())
    with pytest.raises(TypeError, match="`text` must be a str"):
        extract_answer(None)


def test_reference_answer_reads_gsm8k_math_and_plain_references():
    assert reference_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert reference_answer(r"So the answer is $\boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"
    assert reference_answer(r" \frac{1}{2} ") == r"\frac{1}{2}"
    assert reference_answer(72) == "72"
    assert reference_answer(None) is None


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "completion, reference",
    [
        ("#### 0.5", "1/2"),
        (r"The answer is \boxed{\frac{1}{2}}", "0.5"),
        ("<answer>1/2</answer>", r"\frac{1}{2}"),
        ("So 1,000 in total", "1000"),
        (r"\boxed{x+1}", "1+x"),
        (r"\boxed{\sqrt{4}}", "2"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
        ("#### 72", 72),
        ("Each box has 6, so 12 boxes hold 72 eggs.", "Natalia sold 48 clips... 48+24 = 72.\n#### 72"),
        (r"\boxed{2^{10}}", "1024"),
    ],
)
def test_math_reward_accepts_equivalent_answers(completion, reference):
    assert math_reward([completion], answer=[reference]) == [1.0]


@pytest.mark.parametrize(
    "completion, reference",
    [
        ("#### 73", "72"),
        ("#### -72", "72"),
        ("#### 0.33", "1/3"),
        (r"\boxed{x+2}", "x+1"),
        (r"\boxed{\sqrt{2}}", "2"),
        ("The answer is 72 but I said 71", "#### 72"),
    ],
)
def test_math_reward_rejects_different_answers(completion, reference):
    assert math_reward([completion], answer=[reference]) == [0.0]


@pytest.mark.parametrize(
    "completion, reference",
    [
        ("I do not know.", "72"),
        (r"\boxed{\frac{1}{", "1/2"),
        ("#### 72", "Natalia sold some clips."),
        ("<answer>7</answer>", ""),
        ("<answer>7</answer>", None),
    ],
)
def test_math_reward_scores_unparsable_or_missing_answers_zero(completion, reference):
    assert math_reward([completion], answer=[reference]) == [0.0]


BATCH = [
    ("#### 0.5", "1/2"),
    (r"\boxed{\frac{1}{2}}", "#### 0.5"),
    ("<answer>1,000</answer>", "1000"),
    (r"\boxed{1+x}", "x+1"),
    (r"\boxed{\sqrt{4}}", "2"),
    ("#### 73", "72"),
    ("nothing", "72"),
    (r"\boxed{9^{9^{9}}}", "72"),
]
EXPECTED = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_math_reward_batch_ignores_extra_fields():
    completions, answers = zip(*BATCH, strict=True)
    assert math_reward(list(completions), answer=list(answers), prompts=["p"] * 8, trainer_state=None) == EXPECTED


def test_math_reward_in_a_worker_thread_gives_the_same_results():
    completions, answers = zip(*BATCH, strict=True)
    main = math_reward(list(completions), answer=list(answers))
    worker = _in_thread(lambda: math_reward(list(completions), answer=list(answers)))
    assert main == worker == EXPECTED


def test_huge_numbers_are_refused_at_once_in_any_thread():
    completions = [r"\boxed{9^{9^{9}}}", r"\boxed{100000!}", r"\boxed{(x+1)^{100000}}", r"\boxed{2^{2023}}"]
    answers = ["72", "3", "1", r"2^{2023}"]
    start = time.perf_counter()
    assert _in_thread(lambda: math_reward(completions, answer=answers, timeout_seconds=None)) == [0, 0, 0, 1]
    assert time.perf_counter() - start < 5


def _slow_answer(tag):
    # math-verify needs seconds of pure-Python parsing for a 400-term polynomial (uncached: unique per test)
    return r"\boxed{" + "+".join(f"{tag}_{{{i}}}^{{{i % 7 + 1}}}" for i in range(400)) + "}"


def test_timeout_in_the_main_thread():
    assert threading.current_thread() is threading.main_thread()
    start = time.perf_counter()
    assert math_reward([_slow_answer("a"), "#### 5"], answer=["1", "5"], timeout_seconds=1) == [0.0, 1.0]
    assert time.perf_counter() - start < 10  # a 1 s limit per completion, on a loaded 2-core CI box


def test_timeout_in_a_worker_thread(caplog, monkeypatch):
    # A parse that takes 30 s of pure Python: how long math-verify takes on a given expression depends on the
    # machine (and its caches), the watchdog's behaviour must not.
    from grpo_jax.rewards import math as math_module

    real_parse = math_module._parse

    def slow_parse(text):
        if "slow" in text:
            end = time.perf_counter() + 30
            while time.perf_counter() < end:
                pass
        return real_parse(text)

    monkeypatch.setattr(math_module, "_parse", slow_parse)
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="grpo_jax.rewards.math"):
        result = _in_thread(lambda: math_reward([r"\boxed{slow}", "#### 5"], answer=["1", "5"], timeout_seconds=1))
    assert result == [0.0, 1.0]
    assert time.perf_counter() - start < 10
    assert any("completion 0 timed out" in r.getMessage() for r in caplog.records)


def test_deadline_interrupts_python_loops_and_never_fires_after_returning():
    def spin():
        while True:
            pass

    def run():
        with pytest.raises(_DeadlineExceeded):
            _call_with_deadline(spin, 0.2)
        assert _call_with_deadline(lambda: 7, 0.2) == 7
        time.sleep(0.5)  # past the second deadline: nothing must be raised here
        return "ok"

    assert _in_thread(run) == "ok"
    assert run() == "ok"


def test_a_swallowed_deadline_is_raised_again():
    """A deadline exception caught on its way (as a gc callback or a __del__ would) does not let the call run on:
    the watchdog raises again until the call has ended."""
    swallowed = []

    def swallow_the_first():
        end = time.perf_counter() + 30
        while time.perf_counter() < end:
            try:
                while time.perf_counter() < end:
                    pass
            except _DeadlineExceeded:
                if swallowed:
                    raise
                swallowed.append(time.perf_counter())

    def run():
        swallowed.clear()
        start = time.perf_counter()
        with pytest.raises(_DeadlineExceeded):
            _call_with_deadline(swallow_the_first, 0.3)
        assert len(swallowed) == 1 and swallowed[0] - start >= 0.3
        assert time.perf_counter() - start < 5
        time.sleep(0.3)  # nothing is raised after the call has ended
        return "ok"

    assert run() == "ok"
    assert _in_thread(run) == "ok"


UNDER_A_HOOK = """
import sys, time
from grpo_jax.rewards.math import _call_with_deadline, _DeadlineExceeded, math_reward
sys.{hook}(lambda *args: None)
def spin():
    while True:
        pass
try:
    _call_with_deadline(spin, 0.2)
except _DeadlineExceeded:
    print("timed out")
print(_call_with_deadline(lambda: 7, 5))
print(math_reward(["#### 7", "#### 8"], answer=["7", "7"]))
time.sleep(0.3)
print("done")
"""


@pytest.mark.parametrize("hook", ["settrace", "setprofile"])
def test_deadlines_work_under_a_tracer_or_profiler(hook):
    """pdb and coverage trace, cProfile profiles. Withdrawing a queued deadline exception (as this module once
    did after every call) made the next function call under such a hook re-run its first instruction forever
    on CPython 3.11; the child process would hang, and the 60 s limit fail the test."""
    child = subprocess.run([sys.executable, "-c", UNDER_A_HOOK.format(hook=hook)], capture_output=True, text=True,
                           timeout=60)
    assert child.stdout.splitlines() == ["timed out", "7", "[1.0, 0.0]", "done"], child.stderr[-2000:]


def test_math_reward_argument_errors():
    with pytest.raises(ValueError, match=r"`answer` has 1 references but there are 2 completions"):
        math_reward(["1", "2"], answer=["1"])
    with pytest.raises(TypeError, match="one reference per completion"):
        math_reward(["1"], answer="1")
    with pytest.raises(ValueError, match=r"unknown answer kind\(s\) 'box'"):
        math_reward(["1"], answer=["1"], order=("box",))
    with pytest.raises(ValueError, match="`timeout_seconds` must be an int >= 1 or None, got 0"):
        math_reward(["1"], answer=["1"], timeout_seconds=0)
    with pytest.raises(TypeError, match="completion 0 must be a str"):
        math_reward([1], answer=["1"])


def test_review_fixes_prose_answers_without_rewarding_hedges():
    from grpo_jax.rewards import math_reward

    right = [("<answer>The answer is 42.</answer>", "42"), ("#### **72**", "72"), ("#### 18 dollars", "18")]
    wrong = [("#### 3 or 4", "4"), ("<answer>3 or 4</answer>", "3"), ("#### x+1", "1"), (r"\boxed{\sqrt{2}}", "2"),
             ("<answer>x 2</answer>", "2")]
    cases = right + wrong
    assert math_reward([c for c, _ in cases], answer=[a for _, a in cases]) == [1.0] * 3 + [0.0] * 5
    with pytest.raises(TypeError, match="must be a list of str, got one str"):
        math_reward("#### 4", answer=["4"])
