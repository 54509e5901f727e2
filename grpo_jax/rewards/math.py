"""Math correctness reward: pull the final answer out of a completion and check it with math-verify.

    extract_answer(text, order=...)           -> the final answer as a string, or None
    math_reward(completions, answer=[...])    -> [N] floats, 1.0 where the answer is equivalent to the reference

Answer kinds ``extract_answer`` knows, tried in ``order`` (the first kind found wins; by default
``answer_tag``, ``gsm8k``, ``boxed``, ``last_number``):
    "gsm8k"       the text after the last ``####`` on its line (GSM8K's solution format); a line starting with
                  a word ("#### Final Answer") is a markdown heading and is skipped
    "boxed"       the content of the last ``\\boxed{...}`` whose braces balance (nested braces are fine)
    "answer_tag"  the content of the last ``<answer>...</answer>`` (DeepSeek-R1's format)
    "last_number" the last number in the text: 42, -3 (also with U+2212 or U+2013 as the minus), 0.5, .5,
                  1,234 (-> "1234"), 3/4
Answers are stripped of surrounding whitespace and of one trailing full stop ("#### 72." -> "72"); an empty
answer counts as not found.

Equivalence is math-verify's (``math_verify.parse`` then ``math_verify.verify(gold, prediction)``): 0.5 and 1/2
and \\frac{1}{2}, 1,000 and 1000, x+1 and 1+x, \\sqrt{4} and 2 all match. Both sides are parsed as if they were
the content of a ``\\boxed{}``, so bare LaTeX (``\\sqrt{2}``) and bare expressions (``x+1``) parse.

Timeouts: ``math_reward`` turns math-verify's own timeouts off (they use ``signal.alarm``, which works only in
the main thread, and raise once: an alarm that lands while a garbage-collector callback or a ``__del__`` runs
is swallowed there, and the parse then runs to its end). In every thread it bounds the check of each completion
itself, with a watchdog thread that raises an exception in the scoring thread after ``timeout_seconds`` and
again every ``REDELIVER_S`` until the check has ended (CPython's ``PyThreadState_SetAsyncExc``; like a signal
handler, it takes effect between bytecodes). It cannot stop a single huge integer computation running in C,
so predicted answers whose numbers would have more than ``MAX_DIGITS`` digits (``9^{9^{9}}``, ``100000!``)
are refused before math-verify evaluates them: they score 0.0 at once. Sympy
objects are never str()'d here: printing a huge one can hang as well.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from grpo_jax.latex import brace_group

logger = logging.getLogger(__name__)

ANSWER_KINDS = ("gsm8k", "boxed", "answer_tag", "last_number")
# An <answer> tag is always a deliberate declaration; "####" may be a markdown heading and \boxed{} may be
# used while reasoning, so the tag is read first
DEFAULT_ORDER = ("answer_tag", "gsm8k", "boxed", "last_number")

# "####" then the answer on its line; a line starting with a word ("#### Final Answer", "#### Step 1") is a
# markdown heading, not an answer ("#### x+1" is one)
_GSM8K = re.compile(r"####[ \t]*(?![ \t]|[A-Za-z]{2})([^\n]*)")
_BOXED = "\\boxed{"
# The last number: not glued to a preceding letter, digit or full stop ("x2" is a name, not 2); thousands
# groups of exactly three digits (1,234.5); 42, .5, -3, 3/4. A minus sign counts only when it is not a binary
# minus ("5-3" -> 5 and 3).
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
# U+2212 (minus sign) and U+2013 (en dash) are read as a minus too: read as 3, U+2212 then 3 scored a sign
# error as right
_MINUS = "-\u2212\u2013"
_NUMBER = re.compile(rf"(?<![\w.])(?:(?<![\w)\]}}])[{_MINUS}])?(?:{_INT}(?:\.\d+)?|\.\d+)(?:/{_INT}(?!\.\d))?")
_AS_ASCII = str.maketrans({"\u2212": "-", "\u2013": "-", ",": None})


def _number_text(match: str) -> str:
    """A number as _NUMBER found it, without thousands separators and with an ASCII minus."""
    return match.translate(_AS_ASCII)


def _clean(answer: str | None) -> str | None:
    if answer is None:
        return None
    answer = answer.strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    return answer or None


def _extract_gsm8k(text: str) -> str | None:
    matches = _GSM8K.findall(text)
    return matches[-1] if matches else None


def _boxed_content(text: str, start: int) -> str | None:
    """The content of the ``\\boxed{`` at ``start`` if its braces balance, else None. ``\\{``/``\\}`` are text."""
    return brace_group(text, start + len(_BOXED) - 1)


def _extract_boxed(text: str) -> str | None:
    start = text.rfind(_BOXED)
    while start >= 0:
        content = _boxed_content(text, start)
        if content is not None and content.strip():
            return content
        start = text.rfind(_BOXED, 0, start)
    return None


def _extract_answer_tag(text: str) -> str | None:
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    return None if start < 0 else text[start + len("<answer>") : end]


def _extract_last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return _number_text(matches[-1]) if matches else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": _extract_gsm8k,
    "boxed": _extract_boxed,
    "answer_tag": _extract_answer_tag,
    "last_number": _extract_last_number,
}


def _check_order(fn: str, order: Sequence[str]) -> tuple[str, ...]:
    if isinstance(order, str) or not isinstance(order, Sequence):
        raise TypeError(
            f"{fn}: `order` must be a sequence of answer kinds such as {DEFAULT_ORDER!r}, got {order!r}"
        )
    if not order:
        raise ValueError(f"{fn}: `order` must name at least one answer kind from {', '.join(ANSWER_KINDS)}")
    unknown = [kind for kind in order if kind not in _EXTRACTORS]
    if unknown:
        raise ValueError(
            f"{fn}: unknown answer kind(s) {', '.join(map(repr, unknown))} in `order`; "
            f"expected kinds from {', '.join(map(repr, ANSWER_KINDS))}"
        )
    return tuple(order)


def extract_answer(text: str, *, order: Sequence[str] = DEFAULT_ORDER) -> str | None:
    """The final answer in ``text``: the first of the kinds in ``order`` that is present.

    Args:
      text: str, a completion or a reference solution.
      order: sequence of kind names from ``ANSWER_KINDS`` ("gsm8k", "boxed", "answer_tag", "last_number"),
        tried in this order.
    Returns:
      str or None: the answer, stripped (and, for "last_number", without thousands separators), or None when
      no kind in ``order`` finds a non-empty answer.
    Raises:
      TypeError: ``text`` is not a str, or ``order`` is a single string.
      ValueError: ``order`` is empty or names an unknown kind.
    """
    order = _check_order("extract_answer", order)
    if not isinstance(text, str):
        raise TypeError(f"extract_answer: `text` must be a str, got {type(text).__name__}")
    for kind in order:
        answer = _clean(_EXTRACTORS[kind](text))
        if answer is not None:
            return answer
    return None


def reference_answer(reference: Any) -> str | None:
    """The answer in a reference: after ``####`` (GSM8K solution), else the last ``\\boxed{}`` (MATH solution),
    else the whole reference (a plain value such as ``72``, ``0.5`` or ``\\frac{1}{2}``). Numbers are str()'d;
    None (no reference) gives None."""
    if reference is None:
        return None
    text = str(reference)
    if "####" in text:
        return extract_answer(text, order=("gsm8k",))
    if _BOXED in text:
        return extract_answer(text, order=("boxed",))
    return _clean(text)


MAX_DIGITS = 10_000  # predicted answers whose numbers would have more digits are not evaluated (score 0.0)


class _DeadlineExceeded(BaseException):
    """Raised asynchronously in the scoring thread. BaseException, so that math-verify's and sympy's
    ``except Exception`` handlers let it through and one delivery ends the whole parse or verify."""


def _raise_in_thread(thread_id: int, exc: type[BaseException]) -> None:
    """Queue ``exc`` to be raised in the thread ``thread_id`` at its next bytecode boundary.

    Never called with None to withdraw a queued exception: on CPython 3.11 that leaves the interpreter's
    "pending work" flag set with nothing to deliver, so from then on every function entry and loop back-edge
    takes the slow path (slowing all Python code; docs/benchmarks.md), and under a tracer or profiler
    (``sys.settrace``: pdb, coverage; ``sys.setprofile``: cProfile) the next function called re-runs its
    first instruction forever."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc))


def _noop() -> None:
    """A Python call: its entry is a point where CPython raises a queued asynchronous exception."""


REDELIVER_S = 0.05  # after the deadline, the watchdog raises again at this interval until the call has ended


def _call_with_deadline(fn: Callable[[], Any], seconds: float | None) -> Any:
    """``fn()``, or raise _DeadlineExceeded if it runs longer than ``seconds`` (None: no limit).

    The watchdog raises in the caller's thread at the deadline and again every REDELIVER_S while the call
    lasts, so an exception swallowed on its way (by a gc callback, a ``__del__``, a bare ``except``) does not
    let the call run on. Nothing can be raised after this function has returned: the first statement of the
    ``finally`` stores ``done`` (a store does not run queued asynchronous exceptions), the watchdog queues an
    exception only under the lock and only while ``done`` is unset, and once the ``finally`` has taken the
    lock, an exception queued before and not raised yet (a re-delivery that landed while the first one
    unwound) is raised at the next function entry, ``_noop``'s, inside a ``try`` that catches it.
    """
    if seconds is None:
        return fn()
    thread_id = threading.get_ident()
    lock = threading.Lock()
    done = [False]
    cancelled = threading.Event()

    def watchdog() -> None:
        wait = seconds
        while not cancelled.wait(wait):
            with lock:
                if done[0]:
                    return
                _raise_in_thread(thread_id, _DeadlineExceeded)
            wait = REDELIVER_S

    timer = threading.Thread(target=watchdog, name="math_reward-deadline", daemon=True)
    timer.start()
    try:
        return fn()
    finally:
        done[0] = True
        try:
            with lock:  # a watchdog that saw ``done`` unset has finished queuing
                pass
            _noop()
        except _DeadlineExceeded:
            pass
        cancelled.set()  # lets the watchdog thread end now rather than at its next wake-up


class _DropDisabledTimeoutNotice(logging.Filter):
    """math-verify warns on every call made with its timeouts off (as math_reward always makes them): drop that."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "imeout is disabled" not in record.getMessage()


def _math_verify():
    try:
        import math_verify
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("math_reward needs math-verify: pip install math-verify") from e
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("math_verify")] + ["math_verify"]:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropDisabledTimeoutNotice) for f in log.filters):
            log.addFilter(_DropDisabledTimeoutNotice())
    return math_verify


def _digits(value: Any) -> Any:
    """|log10 |value||: about how many digits ``value`` (a numeric sympy expression) has, or its inverse has."""
    import sympy

    value = abs(value.evalf(15))
    return 0 if value == 0 else abs(sympy.log(value, 10).evalf(15))


def _too_large(expr: Any) -> bool:
    """True if evaluating ``expr`` would build a number of more than MAX_DIGITS digits (9^{9^{9}}, 100000!,
    (x+1)^{100000}). Such computations run in C without returning to the interpreter, so no timeout can stop
    them outside the main thread; they are refused instead. Sub-expressions are checked first, so each
    ``evalf`` here only sees numbers that passed."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return False
    try:
        for node in sympy.postorder_traversal(expr):
            if isinstance(node, sympy.Pow):
                base, exponent = node.args
                if not exponent.is_number or base in (0, 1, -1):
                    continue
                size = abs(exponent.evalf(15))
                if base.is_number:
                    size = size * _digits(base)
                if size > MAX_DIGITS:
                    return True
            elif isinstance(node, (sympy.factorial, sympy.factorial2)) and node.args[0].is_number:
                if abs(node.args[0].evalf(15)) * _digits(node.args[0]) > MAX_DIGITS:
                    return True
    except (TypeError, ValueError, ArithmeticError, RecursionError):
        return True
    return False


def _parse(text: str) -> list:
    """math-verify's parse of ``text`` as a boxed answer, with its own (signal) timeout off."""
    return _math_verify().parse("\\boxed{" + text + "}", parsing_timeout=None)


_SEPARATORS = re.compile(r"[\s.,:;!?$]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _candidates(predicted: str) -> list[str]:
    """The extracted answer, and -- when it is prose or decorated ("The answer is 42.", "**72**", "18 dollars")
    holding exactly one number -- that number. Text with several numbers ("3 or 4") gets no fallback, so
    hedging cannot collect the reward."""
    text = predicted.replace("**", "")
    numbers = _NUMBER.findall(text)
    if len(numbers) != 1 or numbers[0] == predicted.strip():
        return [predicted]
    # only prose around it: words of two or more letters and punctuation, no symbols or LaTeX that could
    # make the number part of an expression ("x+1", "\\sqrt{2}", "2^3" keep their full meaning)
    rest = _NUMBER.sub(" ", text, count=1)
    # split, then match word by word: the one pattern [sep]*(?:[A-Za-z]{2,}[sep]*)* backtracked exponentially
    # (a word splits into 2-letter pieces many ways) when it failed, e.g. on 20 words and then "(", and ran
    # for minutes in C holding the GIL, where no deadline can stop it
    prose = all(_WORD.fullmatch(word) for word in _SEPARATORS.split(rest) if word)
    return [predicted, _number_text(numbers[0])] if prose else [predicted]


def _equivalent(gold: list, predicted: str) -> bool:
    """math-verify's verdict; never str()s a sympy object (printing a huge one can hang too)."""
    for candidate in _candidates(predicted):
        prediction = _parse(candidate)
        if not prediction or any(_too_large(p) for p in prediction):
            continue
        if _math_verify().verify(gold, prediction, timeout_seconds=None):
            return True
    return False


def math_reward(
    completions: Sequence[str],
    *,
    answer: Sequence[Any],
    order: Sequence[str] = DEFAULT_ORDER,
    timeout_seconds: int | None = 5,
    **kwargs: Any,
) -> list[float]:
    """1.0 for each completion whose final answer is equivalent to its reference, else 0.0 (TRL reward signature).

    Args:
      completions: N str, the generated completions.
      answer: N references, one per completion (TRL passes the dataset's ``answer`` column): a GSM8K solution
        ending in ``#### 72``, a solution with a ``\\boxed{}``, or a plain value (``72``, ``"0.5"``,
        ``"\\frac{1}{2}"``, ``"x+1"``); see ``reference_answer``.
      order: answer kinds to try on each completion, as in ``extract_answer``.
      timeout_seconds: int >= 1 or None, the time allowed for checking one completion (parsing a reference
        the first time it is seen has the same allowance), in any thread (a watchdog; see the module
        docstring). Past it the completion scores 0.0 and a warning is logged.
        None: no limit, for trusted text only.
      **kwargs: other dataset columns and trainer arguments, ignored.
    Returns:
      list of N floats in {0.0, 1.0}. A completion with no answer, an answer or reference math-verify cannot
      parse, one that times out, and one whose numbers would have more than MAX_DIGITS digits score 0.0.
    Raises:
      TypeError / ValueError: ``answer`` is not a sequence of N references, ``order`` is invalid, a completion
        is not a str, or ``timeout_seconds`` is not an int >= 1 or None.
    """
    del kwargs
    if isinstance(completions, str):
        raise TypeError("math_reward: `completions` must be a list of str, got one str")
    order = _check_order("math_reward", order)
    if isinstance(answer, (str, bytes)) or not hasattr(answer, "__len__"):
        raise TypeError(
            f"math_reward: `answer` must be a list with one reference per completion, got {type(answer).__name__}"
        )
    if len(answer) != len(completions):
        raise ValueError(
            f"math_reward: `answer` has {len(answer)} references but there are {len(completions)} completions; "
            "they must match"
        )
    if timeout_seconds is not None and (
        isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int) or timeout_seconds < 1
    ):
        raise ValueError(f"math_reward: `timeout_seconds` must be an int >= 1 or None, got {timeout_seconds!r}")
    golds: dict[str, list] = {}
    rewards = []
    for i, (completion, reference) in enumerate(zip(completions, answer, strict=True)):
        if not isinstance(completion, str):
            raise TypeError(f"math_reward: completion {i} must be a str, got {type(completion).__name__}")
        predicted = extract_answer(completion, order=order)
        gold_text = reference_answer(reference)
        if predicted is None or gold_text is None:
            rewards.append(0.0)
            continue
        try:
            if gold_text not in golds:
                golds[gold_text] = _call_with_deadline(lambda text=gold_text: _parse(text), timeout_seconds)
            gold = golds[gold_text]
            ok = bool(gold) and _call_with_deadline(
                lambda gold=gold, predicted=predicted: _equivalent(gold, predicted), timeout_seconds
            )
        except _DeadlineExceeded:
            logger.warning(
                "math_reward: completion %d timed out after %ss checking %.100r against %.100r; scored 0.0",
                i, timeout_seconds, predicted, gold_text,
            )
            golds.setdefault(gold_text, [])
            ok = False
        rewards.append(1.0 if ok else 0.0)
    return rewards
